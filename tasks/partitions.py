"""Partitions of a run: site × day chunk, which of them a branch already holds, and totals.

A run (``backfill`` or ``daily``) covers one or more Nightscout sites on **one branch**;
each site's day range is cut into chunks, and each (site, chunk) is a partition: one task
run (or one deployment run when fanned out), one commit per raw table.

A partition is *finished on a branch* when the branch's ``audit.ingest_log`` has a row
for every one of its days that main does not have: the log is the last thing a window
writes, so such a row proves the window's raw rows landed on this branch after it was
forked. Re-running a failed backfill on its kept branch (a Prefect retry of the run, or
``branch=`` given explicitly) therefore redoes only what did not finish; on a fresh branch
nothing is finished and everything is ingested.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThan, Reference
from pyiceberg.expressions.literals import literal

from tasks.days import DayRange
from tasks.ingest import TableCounts
from tasks.lakehouse import read_table
from tasks.tables import INGEST_LOG_TABLE

__all__ = [
    "Partition",
    "finished",
    "ingest_totals",
    "plan_partitions",
]

_COUNTS = ("n_fetched", "n_duplicates", "n_rejected", "n_committed", "n_deleted")


@dataclass(frozen=True)
class Partition:
    """Some UTC days of one site."""

    site_id: str
    days: DayRange

    def label(self) -> str:
        return f"{self.days} site={self.site_id}"


def plan_partitions(ranges: dict[str, DayRange], chunk_days: int) -> list[Partition]:
    """Each site's day range cut into chunks, interleaved across sites so a bounded
    fan-out spreads its load over every site's Nightscout."""
    per_site = [[Partition(site, chunk) for chunk in days.chunks(chunk_days)]
                for site, days in ranges.items()]
    out: list[Partition] = []
    for i in range(max((len(p) for p in per_site), default=0)):
        out.extend(p[i] for p in per_site if i < len(p))
    return out


def _log(catalog: Catalog, partitions: list[Partition]) -> pl.DataFrame:
    """The ingest-log rows of the partitions' sites between their first and last day."""
    sites = {p.site_id for p in partitions}
    if not sites or not catalog.table_exists(INGEST_LOG_TABLE):
        return pl.DataFrame(schema={"site_id": pl.String(), "window_date": pl.Date(),
                                    "ingest_run_id": pl.String(), "table_name": pl.String(),
                                    **dict.fromkeys(_COUNTS, pl.Int64())})
    start, end = min(p.days.first for p in partitions), max(p.days.stop for p in partitions)
    where = And(In(term=Reference("site_id"), values={literal(s) for s in sites}),
                And(GreaterThanOrEqual(term=Reference("window_date"),
                                       value=literal(start.isoformat())),
                    LessThan(term=Reference("window_date"), value=literal(end.isoformat()))))
    return read_table(catalog, INGEST_LOG_TABLE, where)


def finished(branch: Catalog, main: Catalog, partitions: list[Partition]) -> set[Partition]:
    """The partitions whose every day the branch logged after it forked from ``main``."""
    if not partitions:
        return set()
    keys = ["site_id", "window_date", "ingest_run_id"]
    ours = _log(branch, partitions).select(keys).unique()
    theirs = _log(main, partitions).select(keys).unique()
    fresh = ours.join(theirs, on=keys, how="anti").select("site_id", "window_date").unique()
    logged = set(zip(fresh.get_column("site_id").to_list(),
                     fresh.get_column("window_date").to_list(), strict=True))
    return {p for p in partitions if all((p.site_id, d) in logged for d in p.days)}


def ingest_totals(branch: Catalog, partitions: list[Partition]) -> dict[str, TableCounts]:
    """Fetched, duplicate, rejected and committed rows per raw table over ``partitions``,
    from the branch's ingest log (whichever run wrote each day)."""
    if not partitions:
        return {}
    wanted = pl.DataFrame([(p.site_id, d) for p in partitions for d in p.days],
                          schema={"site_id": pl.String(), "window_date": pl.Date()},
                          orient="row")
    log = _log(branch, partitions).join(wanted, on=["site_id", "window_date"], how="semi")
    if "n_deleted" not in log.columns:  # a log written before the column existed
        log = log.with_columns(pl.lit(0, pl.Int64).alias("n_deleted"))
    sums = log.group_by("table_name").agg(pl.col(c).sum() for c in _COUNTS).sort("table_name")
    return {row["table_name"]: TableCounts(**{c.removeprefix("n_"): int(row[c]) for c in _COUNTS})
            for row in sums.iter_rows(named=True)}
