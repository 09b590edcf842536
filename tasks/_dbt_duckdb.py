"""dbt-duckdb internals Cascade relies on, in one place (dbt-duckdb >=1.10,<1.12).

dbt-duckdb keeps one DuckDB database handle per process (``DuckDBConnectionManager._ENV``,
guarded by ``_LOCK``) after an invocation ends, holding the build file open. Cascade runs
dbt in-process and then reads the build file itself, so it closes that handle.
tests/unit/test_private_apis.py pins the attributes used here.
"""

from __future__ import annotations

__all__ = ["release_duckdb"]


def release_duckdb() -> None:
    """Close dbt-duckdb's process-wide database handle so the build file can be reopened."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager as manager
    except ImportError:
        return
    with manager._LOCK:
        if manager._ENV is not None:
            manager._ENV.close()
            manager._ENV = None
