"""What runs changed on a branch: ``audit.changed_partitions``, the incremental build's input.

Whoever adds, replaces or removes raw rows records the (site, raw table, UTC day) it
changed, on the same branch, before the build: ingestion one row per day of every window
it lands, the change feed one row per day an edit or deletion reaches. A row with
``build_seq`` null is *pending*; ``build_branch`` rebuilds the local days its UTC day
overlaps (see dbt/models/build) and then stamps its own ``build_seq`` on the rows it
consumed, so the table is both the queue and the record of what each build consumed.
A ``utc_date`` of null asks for every day of the site.

The table is partitioned by ``build_seq`` (after ``site_id``), so reading the pending rows
opens only the manifests that hold some: the cost follows the pending rows, not the
history.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final

import polars as pl
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysFalse, EqualTo, IsNull, Reference
from pyiceberg.expressions.literals import literal

from tasks.lakehouse import read_table, replace_rows
from tasks.tables import CHANGES, CHANGES_SCHEMA

__all__ = [
    "change_rows",
    "consumed_changes",
    "pending_changes",
    "record_changes",
    "stamp_changes",
]

_RECORDED: Final = [c for c in CHANGES_SCHEMA.names() if c != "build_seq"]
_PENDING: Final = IsNull(term=Reference("build_seq"))


def change_rows(site_id: str, table_names: list[str], days: list[date | None], source: str,
                run_id: str, recorded_at: datetime | None = None) -> pl.DataFrame:
    """Pending change rows: every (table, day) pair for one site."""
    at = recorded_at or datetime.now(UTC)
    rows = [(site_id, name, day, source, run_id, at, None)
            for name in table_names for day in days]
    return pl.DataFrame(rows, schema=CHANGES_SCHEMA, orient="row")


def record_changes(catalog: Catalog, changes: pl.DataFrame) -> None:
    """Append pending change rows (``build_seq`` left null) to the branch of ``catalog``.

    ``changes`` needs site_id, table_name, utc_date, source, run_id and recorded_at.
    Recording the same change twice is harmless: the build reads them as a set.
    """
    missing = [c for c in _RECORDED if c not in changes.columns]
    if missing:
        raise ValueError(f"change rows need the columns {', '.join(missing)}")
    if changes.height == 0:
        return
    rows = changes.select(_RECORDED).with_columns(pl.lit(None, pl.Int64()).alias("build_seq"))
    replace_rows(catalog, CHANGES, rows, AlwaysFalse())


def pending_changes(catalog: Catalog) -> pl.DataFrame:
    """The change rows no build has consumed yet."""
    if not catalog.table_exists(CHANGES.identifier):
        return pl.DataFrame(schema=CHANGES_SCHEMA)
    return read_table(catalog, CHANGES.identifier, _PENDING).cast(CHANGES_SCHEMA)


def consumed_changes(catalog: Catalog, build_seq: int) -> pl.DataFrame:
    """The change rows build ``build_seq`` consumed."""
    if not catalog.table_exists(CHANGES.identifier):
        return pl.DataFrame(schema=CHANGES_SCHEMA)
    rows = read_table(catalog, CHANGES.identifier,
                      EqualTo(term=Reference("build_seq"), value=literal(build_seq)))
    return rows.cast(CHANGES_SCHEMA)


def stamp_changes(catalog: Catalog, pending: pl.DataFrame, build_seq: int) -> int:
    """Mark the pending rows consumed by build ``build_seq``, in one commit; how many.

    ``pending`` is what ``pending_changes`` returned when the build was planned; the caller
    checks that the table has not moved since.
    """
    if pending.height == 0:
        return 0
    stamped = pending.with_columns(pl.lit(build_seq, pl.Int64()).alias("build_seq"))
    replace_rows(catalog, CHANGES, stamped, _PENDING)
    return pending.height
