"""sqlfluff's jinja templater: dbt's ``flags`` (a render without a database, as dbt parse)."""

WHICH = "parse"
FULL_REFRESH = False
