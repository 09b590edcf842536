"""dbt-duckdb plugin: every connection dbt opens can read Iceberg (``iceberg_scan``).

The embedded build's sources and the models' prior rows are views over the branch's Iceberg
tables, so each DuckDB connection dbt-duckdb opens needs the iceberg extension; it comes
from the ``duckdb-extension-iceberg`` wheel, loaded from disk (nothing is downloaded).
``dbt/profiles.yml`` names this module under ``plugins``.
"""

from __future__ import annotations

from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

from tasks.query import load_iceberg_extension

__all__ = ["Plugin"]


class Plugin(BasePlugin):
    """Loads the iceberg (and avro) extension into each connection."""

    def configure_connection(self, conn: Any) -> None:
        load_iceberg_extension(conn)
