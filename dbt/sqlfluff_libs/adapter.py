"""sqlfluff's jinja templater: dbt's ``adapter.dispatch`` without dbt.

A dispatched macro renders as its DuckDB implementation (``duckdb__<name>``, else
``default__<name>``) from dbt/macros, so sqlfluff lints the SQL the embedded profile runs.
"""

from collections.abc import Callable
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context, Undefined

_ORDER = ("duckdb__", "default__")


def dispatch(macro_name: str, macro_namespace: str | None = None) -> Callable[..., Any]:
    @pass_context
    def call(context: Context, *args: Any, **kwargs: Any) -> Any:
        for prefix in _ORDER:
            macro = context.resolve(prefix + macro_name)
            if not isinstance(macro, Undefined):
                return macro(*args, **kwargs)
        raise LookupError(f"no {' or '.join(p + macro_name for p in _ORDER)} in dbt/macros")

    return call
