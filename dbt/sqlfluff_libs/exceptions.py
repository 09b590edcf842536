"""sqlfluff's jinja templater: dbt's ``exceptions`` context (what the macros call).

sqlfluff's ``var()`` answers a placeholder for every variable, which a macro checking its
arguments would refuse; dbt enforces those checks when it builds, so here a refusal renders
nothing and the SQL around it is linted.
"""


def raise_compiler_error(message: str) -> str:
    return ""


def warn(message: str) -> str:
    return ""
