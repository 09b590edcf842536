"""What a re-read window changes in the lake: the days that differ, and the rows it removes.

Ingesting a window replaces the site's rows of its days. Before it does, this module
compares what the lake holds for those days with what was just fetched and shaped:

* ``changed_days``: the UTC days whose rows (every column but the lineage) or whose
  ingest-log counts differ. A reconcile lands only those days, so re-reading fourteen
  days of a site that changed on two touches two days, and the incremental build after it
  rebuilds only the local days those two overlap.
* ``removed_rows``: the lake's rows of the landed days whose id is no longer among the
  window's rows, with why: the source marks them deleted (``isValid: false``), they are
  now set aside as a reject or a duplicate, or the source no longer has them at all (a
  permanent delete, or a time moved out of the window). They go to ``audit.deletions``
  with the removed row itself as payload, the run that removed them and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from typing import Final

import polars as pl
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, Or, Reference
from pyiceberg.expressions.literals import literal

from tasks.lakehouse import replace_rows, site_window
from tasks.shaping import ShapeContext
from tasks.tables import AUDIT_TABLES, DELETIONS_SCHEMA, RawTable, TableLayout

__all__ = [
    "DELETION_REASONS",
    "Removal",
    "changed_days",
    "commit_deletions",
    "day_runs",
    "days_where",
    "lake_rows",
    "removed_rows",
]

_UTC_TYPE = pl.Datetime("us", "UTC")
_LINEAGE: Final = ("ingest_run_id", "ingested_at")
_LOG_COUNTS: Final = ("n_fetched", "n_duplicates", "n_rejected", "n_committed", "n_deleted")

DELETION_REASONS: Final = {
    "source_deleted": "deleted at the source (isValid false)",
    "rejected": "now rejected: see audit.rejects",
    "duplicate": "now a duplicate: see audit.duplicates",
    "gone": "no longer at the source (deleted for good, or moved out of its day)",
}


@dataclass(frozen=True)
class Removal:
    """What the window's fetch says about ids that may have left the lake."""

    source_deleted: pl.Series  # ids the source marks isValid false
    rejected: pl.Series
    duplicate: pl.Series


def lake_rows(catalog: Catalog, layout: TableLayout, site_id: str,
              start: datetime | date | None, end: datetime | date | None,
              columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """The site's rows of ``[start, end)`` (all of them without bounds) as the lake holds
    them (empty when none), with every column of the layout or only ``columns``."""
    names = list(columns or layout.schema.names())
    schema = pl.Schema({n: layout.schema[n] for n in names})
    if not catalog.table_exists(layout.identifier):
        return pl.DataFrame(schema=schema)
    scan = catalog.load_table(layout.identifier).scan(
        row_filter=site_window(layout, site_id, start, end), selected_fields=tuple(names))
    frame = pl.from_arrow(scan.to_arrow())
    assert isinstance(frame, pl.DataFrame)
    return frame.select(names).cast(schema)


def _utc_day(column: str) -> pl.Expr:
    return pl.col(column).dt.date()


def changed_days(table: RawTable, before: pl.DataFrame, after: pl.DataFrame,
                 before_log: pl.DataFrame, after_log: pl.DataFrame) -> set[date]:
    """UTC days whose rows or ingest-log counts differ between the lake and the fetch.

    Rows are compared on every column but the lineage (``ingest_run_id``,
    ``ingested_at``); a day the log has never seen counts as changed.
    """
    columns = [c for c in table.polars_schema.names() if c not in _LINEAGE]
    gone = before.join(after, on=columns, how="anti", nulls_equal=True)
    new = after.join(before, on=columns, how="anti", nulls_equal=True)
    days = set(gone.get_column(table.time_column).dt.date().to_list())
    days |= set(new.get_column(table.time_column).dt.date().to_list())
    counts = ["window_date", *_LOG_COUNTS]
    theirs = before_log.select(counts).with_columns(pl.col("n_deleted").fill_null(0))
    ours = after_log.select(counts)
    days |= set(ours.join(theirs, on=counts, how="anti", nulls_equal=True)
                .get_column("window_date").to_list())
    return days


def removed_rows(table: RawTable, before: pl.DataFrame, after: pl.DataFrame, why: Removal,
                 days: set[date], ctx: ShapeContext) -> pl.DataFrame:
    """The lake's rows of ``days`` whose id the window no longer lands, as
    ``audit.deletions`` rows."""
    rid = pl.col(table.id_column)
    landed_days = before.filter(_utc_day(table.time_column).is_in(sorted(days)))
    gone = landed_days.filter(~rid.is_in(after.get_column(table.id_column).implode()))
    if gone.height == 0:
        return pl.DataFrame(schema=DELETIONS_SCHEMA)
    reason = (pl.when(rid.is_in(why.source_deleted.implode()))
              .then(pl.lit(DELETION_REASONS["source_deleted"]))
              .when(rid.is_in(why.rejected.implode())).then(pl.lit(DELETION_REASONS["rejected"]))
              .when(rid.is_in(why.duplicate.implode()))
              .then(pl.lit(DELETION_REASONS["duplicate"]))
              .otherwise(pl.lit(DELETION_REASONS["gone"])))
    local = (pl.col("local_date") if "local_date" in gone.columns
             else pl.col(table.time_column).dt.date())
    out = gone.select(
        pl.lit(table.name).alias("table_name"),
        pl.col("site_id"),
        rid.alias("record_id"),
        pl.col(table.time_column).alias("event_at"),
        local.alias("local_date"),
        reason.alias("reason"),
        pl.struct(gone.columns).struct.json_encode().alias("payload"),
        _utc_day(table.time_column).alias("window_date"),
        pl.lit(ctx.run_id).alias("ingest_run_id"),
        pl.lit(ctx.ingested_at).cast(_UTC_TYPE).alias("removed_at"),
    )
    return out.cast(DELETIONS_SCHEMA)


def commit_deletions(catalog: Catalog, rows: pl.DataFrame, site_id: str, run_id: str) -> None:
    """Record removed rows in ``audit.deletions``, once per (table, id, run): a retried
    window replaces what its earlier attempt recorded instead of adding it again."""
    if rows.height == 0:
        return
    layout = AUDIT_TABLES["deletions"]
    per_table: list[BooleanExpression] = [
        And(EqualTo(term=Reference("table_name"), value=literal(name)),
            In(term=Reference("record_id"),
               values={literal(i) for i in group.get_column("record_id").to_list()}))
        for (name,), group in rows.group_by("table_name")]
    by_run = EqualTo(term=Reference("ingest_run_id"), value=literal(run_id))
    where = And(And(site_window(layout, site_id), by_run), _any(per_table))
    replace_rows(catalog, layout, rows, where)


def day_runs(days: set[date]) -> list[tuple[date, date]]:
    """``days`` as runs of consecutive days, each ``[first, last + 1)``, in order."""
    runs: list[tuple[date, date]] = []
    for day in sorted(days):
        if runs and runs[-1][1] == day:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))
    return runs


def days_where(layout: TableLayout, site_id: str, days: set[date], *, as_time: bool,
               **equals: str) -> BooleanExpression:
    """The site's rows on ``days`` (and ``column=value`` pairs): a time column bounded by
    UTC midnights when ``as_time``, else a date column."""
    def bound(day: date) -> datetime | date:
        return datetime(day.year, day.month, day.day, tzinfo=UTC) if as_time else day

    parts = [site_window(layout, site_id, bound(lo), bound(hi), **equals)
             for lo, hi in day_runs(days)]
    if not parts:
        raise ValueError("days_where needs at least one day")
    return _any(parts)


def _any(parts: list[BooleanExpression]) -> BooleanExpression:
    return reduce(lambda a, b: Or(a, b), parts)
