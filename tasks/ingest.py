"""Ingest one window of one Nightscout site onto a branch: fetch → shape → check → commit.

Everything for the window is fetched, shaped and checked before anything is committed.
When a day's reject ratio is over the limit, only the audit trail (rejects and the
ingest log) is written, so the rows can be inspected, and ``ContractError`` is raised.
The window's days are first recorded as changed (``audit.changed_partitions``, so the
next build rebuilds them even if a commit below fails half-way), then the raw rows are
committed per table, then the audit rows; the ingest log is written last, so a window
whose log is missing or disagrees with raw never passes validation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from typing import Final

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, Or, Reference
from pyiceberg.expressions.literals import literal

from tasks import timeouts
from tasks.changes import change_rows, record_changes
from tasks.contracts import check, enforce_reject_ratio
from tasks.days import DayRange
from tasks.errors import CascadeError, ContractError, ServiceUnavailable, unreachable
from tasks.faults import fault_point
from tasks.lakehouse import read_table, replace_rows, site_window
from tasks.landing import (
    Removal,
    changed_days,
    commit_deletions,
    days_where,
    lake_rows,
    removed_rows,
)
from tasks.nightscout import COLLECTIONS, NightscoutClient
from tasks.profile import Lakehouse
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext, profile_timezone, shape, unreadable_rejects
from tasks.tables import (
    AUDIT_TABLES,
    INGEST_LOG_SCHEMA,
    RAW_TABLES,
    RawTable,
    TableLayout,
    raw_layout,
)

PROFILE_TABLE: Final = RAW_TABLES["profile"].identifier

__all__ = [
    "WINDOW_TABLES",
    "TableCounts",
    "WindowReport",
    "ingest_profiles",
    "ingest_window",
    "record_site_settings",
    "resolve_timezone",
    "site_timezone",
]

logger = logging.getLogger("cascade.ingest")

WINDOW_TABLES: Final = ("entries", "treatments", "devicestatus")


@dataclass(frozen=True)
class TableCounts:
    """What happened to one table's records in a window: each fetched record was
    committed, set aside as a duplicate or a reject, or is deleted at the source."""

    fetched: int
    duplicates: int
    rejected: int
    committed: int
    deleted: int = 0
    removed: int = 0  # rows the lake held that this window took out (audit.deletions)
    days_landed: int = 0  # UTC days written (a reconcile writes only the changed ones)


@dataclass
class WindowReport:
    """What one window's ingestion did, per table."""

    site_id: str
    start: datetime
    end: datetime
    run_id: str
    tables: dict[str, TableCounts] = field(default_factory=dict)
    requests: int = 0  # HTTP requests made to the source for this window

    @property
    def committed(self) -> int:
        return sum(c.committed for c in self.tables.values())

    def line(self) -> str:
        """One log line: ``2024-03-01..2024-03-02 site=a entries: fetched 288, ...``."""
        parts = [
            f"{name}: fetched {c.fetched}, duplicates {c.duplicates}, rejected {c.rejected}, "
            f"committed {c.committed}" + (f", deleted at source {c.deleted}" if c.deleted else "")
            + (f", removed from the lake {c.removed}" if c.removed else "")
            for name, c in self.tables.items()
        ]
        return f"{self.start.date()}..{self.end.date()} site={self.site_id} " + "; ".join(parts)


@dataclass(frozen=True)
class _Prepared:
    table: RawTable
    rows: pl.DataFrame
    duplicates: pl.DataFrame
    rejects: pl.DataFrame
    deleted: pl.DataFrame  # soft-deleted at the source: record id and time
    log: pl.DataFrame


def ingest_window(
    client: NightscoutClient,
    catalog: Catalog,
    ctx: ShapeContext,
    max_reject_ratio: float = 0.05,
    tables: tuple[str, ...] = WINDOW_TABLES,
    *,
    only_changes: bool = False,
) -> WindowReport:
    """Ingest ``[ctx.window_start, ctx.window_end)`` of every table in ``tables``.

    Rows the lake held for the window and no longer gets (deleted at the source, now
    rejected, gone) are recorded in ``audit.deletions`` as they are replaced. With
    ``only_changes`` (a reconcile), only the UTC days whose rows or counts differ from the
    lake are written; a window that matches the lake writes nothing.

    Raises:
        NightscoutError: the source failed; nothing was written for this window.
        ContractError: a day's reject ratio exceeded ``max_reject_ratio``; only the
            audit trail was written.
    """
    prepared = [_prepare(RAW_TABLES[name], client, ctx) for name in tables]
    breaches = _breaches(prepared, max_reject_ratio)
    if breaches:
        _commit_audit(catalog, prepared, ctx)
        raise ContractError(" | ".join(breaches))
    landings = [_landing(catalog, p, ctx, only_changes) for p in prepared]  # before writing
    report = WindowReport(ctx.site_id, ctx.window_start, ctx.window_end, ctx.run_id)
    record_changes(catalog, _changed(prepared, landings, ctx, only_changes))  # before raw
    for p, land in zip(prepared, landings, strict=True):
        if land.days:
            commit_deletions(catalog, land.removed, ctx.site_id, ctx.run_id)
            replace_rows(catalog, land.layout, land.rows, land.where(ctx))
            fault_point("ingest-mid-commit")
        report.tables[p.table.name] = TableCounts(
            fetched=p.rows.height + p.duplicates.height + p.rejects.height + p.deleted.height,
            duplicates=p.duplicates.height, rejected=p.rejects.height, committed=p.rows.height,
            deleted=p.deleted.height, removed=land.removed.height, days_landed=len(land.days),
        )
    if any(land.days for land in landings):
        _commit_audit(catalog, prepared, ctx, landings)
    return report


def _changed(prepared: list[_Prepared], landings: list[_Landing], ctx: ShapeContext,
             only_changes: bool) -> pl.DataFrame:
    """The (site, raw table, UTC day) partitions the window is about to change, for the
    incremental build: per table, the days it lands (a reconcile: only those that differ
    from the lake). A row leaving the lake (a deletion, a time moved out of its day) is
    among its day's rows, so its day is one of them."""
    source = "reconcile" if only_changes else "ingest"
    frames = [change_rows(ctx.site_id, [p.table.name], list[date | None](sorted(land.days)),
                          source, ctx.run_id, ctx.ingested_at)
              for p, land in zip(prepared, landings, strict=True) if land.days]
    return pl.concat(frames) if frames else change_rows(ctx.site_id, [], [], source, ctx.run_id)


def _before(catalog: Catalog, layout: TableLayout, p: _Prepared, ctx: ShapeContext, *,
            whole_rows: bool) -> pl.DataFrame:
    """The lake's rows of the window: all of them to compare (a reconcile), else only those
    whose id the window no longer has (read by id and time first, which is cheap)."""
    args = (catalog, layout, ctx.site_id, ctx.window_start, ctx.window_end)
    if whole_rows:
        return lake_rows(*args)
    ids = lake_rows(*args, columns=(p.table.id_column,)).get_column(p.table.id_column)
    gone = ids.filter(~ids.is_in(p.rows.get_column(p.table.id_column).implode()))
    if gone.len() == 0:
        return pl.DataFrame(schema=layout.schema)
    return lake_rows(*args).filter(pl.col(p.table.id_column).is_in(gone.implode()))


@dataclass(frozen=True)
class _Landing:
    """What one table of a window writes: its rows of ``days``, replacing the lake's,
    and the lake rows that leave with them. ``whole`` replaces the window as one range."""

    layout: TableLayout
    days: frozenset[date]
    rows: pl.DataFrame
    removed: pl.DataFrame
    whole: bool

    def where(self, ctx: ShapeContext) -> BooleanExpression:
        if self.whole:
            return site_window(self.layout, ctx.site_id, ctx.window_start, ctx.window_end)
        return days_where(self.layout, ctx.site_id, set(self.days), as_time=True)


def _landing(catalog: Catalog, p: _Prepared, ctx: ShapeContext, only_changes: bool) -> _Landing:
    layout = raw_layout(p.table)
    window = set(_days(ctx).get_column("window_date").to_list())
    before = _before(catalog, layout, p, ctx, whole_rows=only_changes)
    days = window
    if only_changes:
        log = lake_rows(catalog, AUDIT_TABLES["ingest_log"], ctx.site_id,
                        ctx.window_start.date(), _last_day(ctx) + timedelta(days=1),
                        ).filter(pl.col("table_name") == p.table.name)
        days = window & changed_days(p.table, before, p.rows, log, p.log)
    why = Removal(p.deleted.get_column("record_id"), p.rejects.get_column("record_id"),
                  p.duplicates.get_column("record_id"))
    removed = removed_rows(p.table, before, p.rows, why, days, ctx)
    rows = p.rows if days == window else p.rows.filter(
        pl.col(p.table.time_column).dt.date().is_in(sorted(days)))
    return _Landing(layout, frozenset(days), rows, removed, whole=days == window)


def _prepare(table: RawTable, client: NightscoutClient, ctx: ShapeContext) -> _Prepared:
    margin = timedelta(0) if COLLECTIONS[table.endpoint].numeric_time else _OFFSET_MARGIN
    fetched = client.fetch_window(table.endpoint, ctx.window_start - margin,
                                  ctx.window_end + margin)
    shaped = shape(table.name, fetched.frame, ctx)
    checked = check(table.name, shaped.rows, ctx)
    rejects = _on_their_day(pl.concat([_outside_margin(shaped.rejects, ctx, margin),
                                       checked.rejects,
                                       unreadable_rejects(fetched.set_aside, table.name, ctx)]),
                            ctx)
    duplicates = _on_their_day(shaped.duplicates, ctx)
    log = _daily_log(table, checked.valid, duplicates, rejects, shaped.deleted, ctx)
    return _Prepared(table, checked.valid, duplicates, rejects, shaped.deleted, log)


# Treatments and device status are filtered on ``created_at`` as *text*; an uploader's
# local offset (at most ±14 h) moves a record's text away from its UTC time, so those
# collections are fetched with this margin and placed by their parsed UTC time.
_OFFSET_MARGIN: Final = timedelta(hours=14)


def _outside_margin(rejects: pl.DataFrame, ctx: ShapeContext, margin: timedelta) -> pl.DataFrame:
    """Drop rows fetched only through the margin: they belong to a neighbouring window.

    The fetch bounds are text ``margin`` beyond the window, and a record's text is up to
    ``margin`` away from its UTC time, so a neighbour's record can sit up to twice the
    margin outside the window (``...T11:30-12:00`` is 23:30 UTC): the neighbouring window
    fetches and commits it, so it is neither committed nor rejected here.
    """
    if margin == timedelta(0) or rejects.height == 0:
        return rejects
    at = pl.col("event_at")
    start = pl.lit(ctx.window_start - 2 * margin).cast(pl.Datetime("us", "UTC"))
    end = pl.lit(ctx.window_end + 2 * margin).cast(pl.Datetime("us", "UTC"))
    neighbour = at.is_not_null() & (at >= start) & (at < end)
    return rejects.filter(~neighbour)


def _last_day(ctx: ShapeContext) -> date:
    """The last UTC day the window ``[start, end)`` touches."""
    return (ctx.window_end - timedelta(microseconds=1)).date()


def _days(ctx: ShapeContext) -> pl.DataFrame:
    first, last = ctx.window_start.date(), _last_day(ctx)
    return pl.DataFrame({"window_date": pl.date_range(first, last, "1d", eager=True)})


def _window_day(time_column: str, ctx: ShapeContext) -> pl.Expr:
    """The UTC day of the window a row is counted on: its own, kept inside the window
    (rows without a time on the window's first day)."""
    day = pl.col(time_column).dt.date().fill_null(ctx.window_start.date())
    return day.clip(ctx.window_start.date(), _last_day(ctx))


def _on_their_day(set_aside: pl.DataFrame, ctx: ShapeContext) -> pl.DataFrame:
    """Rejects and duplicates dated by their own UTC day (as the ingest log counts them),
    so re-ingesting a day replaces its audit rows whatever windows wrote them."""
    return set_aside.with_columns(_window_day("event_at", ctx).alias("window_date"))


def _per_day(frame: pl.DataFrame, time_column: str, ctx: ShapeContext, name: str) -> pl.DataFrame:
    if frame.height == 0:
        return pl.DataFrame(schema={"window_date": pl.Date(), name: pl.UInt32()})
    return frame.group_by(_window_day(time_column, ctx).alias("window_date")).agg(
        pl.len().alias(name))


_LOG_COUNTS: Final = ("n_committed", "n_duplicates", "n_rejected", "n_deleted")


def _daily_log(table: RawTable, valid: pl.DataFrame, dupes: pl.DataFrame,
               rejects: pl.DataFrame, deleted: pl.DataFrame, ctx: ShapeContext) -> pl.DataFrame:
    """One ingest-log row per UTC day of the window, so any chunking reconciles."""
    counts = _days(ctx)
    for frame, col, name in ((valid, table.time_column, "n_committed"),
                             (dupes, "event_at", "n_duplicates"),
                             (rejects, "event_at", "n_rejected"),
                             (deleted, "event_at", "n_deleted")):
        counts = counts.join(_per_day(frame, col, ctx, name), on="window_date", how="left")
    counts = counts.with_columns(pl.col(*_LOG_COUNTS).fill_null(0).cast(pl.Int64))
    return counts.select(
        pl.lit(table.name).alias("table_name"),
        pl.lit(ctx.site_id).alias("site_id"),
        pl.col("window_date"),
        pl.sum_horizontal(*_LOG_COUNTS).alias("n_fetched"),
        pl.col("n_duplicates"), pl.col("n_rejected"), pl.col("n_committed"), pl.col("n_deleted"),
        pl.lit(ctx.run_id).alias("ingest_run_id"),
        pl.lit(ctx.ingested_at).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
    ).cast(INGEST_LOG_SCHEMA)


def _breaches(prepared: list[_Prepared], max_ratio: float) -> list[str]:
    out = []
    for p in prepared:
        for row in p.log.iter_rows(named=True):  # one row per day: a handful per window
            try:
                enforce_reject_ratio(f"raw.{p.table.name}", str(row["window_date"]),
                                     row["n_fetched"] - row["n_deleted"], row["n_rejected"],
                                     max_ratio)
            except ContractError as exc:
                out.append(str(exc))
    return out


def _commit_audit(catalog: Catalog, prepared: list[_Prepared], ctx: ShapeContext,
                  landings: list[_Landing] | None = None) -> None:
    """Replace the audit rows (rejects, duplicates, then the log) of the landed days of
    these tables: the whole window, or a reconcile's changed days."""
    start = ctx.window_start.date()
    end = _last_day(ctx) + timedelta(days=1)
    whole = landings is None or all(land.whole for land in landings)
    for key, attr in (("rejects", "rejects"), ("duplicates", "duplicates"),
                      ("ingest_log", "log")):
        layout = AUDIT_TABLES[key]
        where: BooleanExpression
        if whole:
            rows = pl.concat([getattr(p, attr) for p in prepared])
            names = {literal(p.table.name) for p in prepared}
            where = And(site_window(layout, ctx.site_id, start, end),
                        In(term=Reference("table_name"), values=names))
        else:
            assert landings is not None
            landed = [(p, land) for p, land in zip(prepared, landings, strict=True) if land.days]
            rows = pl.concat([getattr(p, attr).filter(
                pl.col("window_date").is_in(sorted(land.days))) for p, land in landed])
            where = reduce(lambda a, b: Or(a, b), [
                days_where(layout, ctx.site_id, set(land.days), as_time=False,
                           table_name=p.table.name) for p, land in landed])
        replace_rows(catalog, layout, rows, where)


def ingest_profiles(client: NightscoutClient, catalog: Catalog, ctx: ShapeContext) -> pl.DataFrame:
    """Replace the site's profile documents (a site keeps a handful) and return them."""
    table = RAW_TABLES["profile"]
    fetched = client.fetch_profiles()
    shaped = shape(table.name, fetched.frame, ctx)
    checked = check(table.name, shaped.rows, ctx)
    layout = raw_layout(table)
    before = lake_rows(catalog, layout, ctx.site_id, None, None)
    why = Removal(shaped.deleted.get_column("record_id"), checked.rejects.get_column("record_id"),
                  shaped.duplicates.get_column("record_id"))
    days = set(before.get_column(table.time_column).dt.date().drop_nulls().to_list())
    commit_deletions(catalog, removed_rows(table, before, checked.valid, why, days, ctx),
                     ctx.site_id, ctx.run_id)
    replace_rows(catalog, layout, checked.valid, site_window(layout, ctx.site_id))
    audit = AUDIT_TABLES["rejects"]
    rejects = pl.concat([shaped.rejects, checked.rejects,
                         unreadable_rejects(fetched.set_aside, table.name, ctx)])
    replace_rows(catalog, audit, rejects, site_window(audit, ctx.site_id, table_name="profile"))
    return checked.valid


def record_site_settings(catalog: Catalog, source: NightscoutSettings, run_id: str,
                         now: datetime | None = None) -> bool:
    """Keep the timezone the site's settings name on ``catalog`` (``audit.site_settings``),
    where the build reads it; a site's row is written when it is new or its zone changed.
    Returns whether it wrote."""
    layout = AUDIT_TABLES["site_settings"]
    where = site_window(layout, source.site_id)
    if catalog.table_exists(layout.identifier):
        have = read_table(catalog, layout.identifier, where)
        if have.height == 1 and have.item(0, "timezone") == source.timezone:
            return False
    rows = pl.DataFrame([(source.site_id, source.timezone, run_id, now or datetime.now(UTC))],
                        schema=layout.schema, orient="row")
    replace_rows(catalog, layout, rows, where)
    return True


def resolve_timezone(override: str | None, profiles: pl.DataFrame) -> str:
    """The site's timezone: the override, else the latest profile's, else UTC (logged)."""
    if override:
        return override
    found = profile_timezone(profiles)
    if found:
        return found
    logger.warning("no timezone in the site's profile and CASCADE_TIMEZONE unset: using UTC")
    return "UTC"


def site_timezone(main: Catalog, source: NightscoutSettings) -> str:
    """The site's configured timezone (``CASCADE_TIMEZONE`` or its block's), else the one
    ``main``'s profile table knows for the site; UTC until a profile says more."""
    return source.timezone or _profile_timezone_on(main, source.site_id) or "UTC"


def _profile_timezone_on(catalog: Catalog, site_id: str) -> str | None:
    """The site's timezone as a ref's profile table knows it (None before the first run)."""
    if not catalog.table_exists(PROFILE_TABLE):
        return None
    site = EqualTo(term=Reference("site_id"), value=literal(site_id))
    return profile_timezone(read_table(catalog, PROFILE_TABLE, site))


# ----------------------------------------------------------------------- Prefect wrappers

@contextmanager
def _lakehouse_reachable(lakehouse: Lakehouse, what: str) -> Iterator[None]:
    """Turn a lakehouse service that does not answer into ``ServiceUnavailable``."""
    try:
        yield
    except CascadeError:
        raise
    except Exception as exc:
        cause = unreachable(exc)
        if cause is None:
            raise
        raise ServiceUnavailable(
            f"{what}: the {lakehouse.describe()} did not answer "
            f"({type(cause).__name__}): check the services (`python3 scripts/cascade.py stack "
            "status`), then re-run the same parameters; ingestion replaces what it writes, so "
            "nothing is duplicated"
        ) from None


def _context(source: NightscoutSettings, timezone: str, start: datetime, end: datetime,
             run_id: str) -> ShapeContext:
    return ShapeContext(source.site_id, timezone, start, end, run_id, datetime.now(UTC))


def window_context(source: NightscoutSettings, timezone: str, days: DayRange,
                   run_id: str) -> ShapeContext:
    """The shaping context of a window: the days' half-open UTC bounds."""
    return _context(source, timezone, *days.utc_bounds(), run_id)


@task(name="ingest-profile", retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=lambda task, run, state: _retryable(state),
      task_run_name="profile site={source.site_id}", cache_policy=NO_CACHE)
def ingest_profile_task(lakehouse: Lakehouse, source: NightscoutSettings, branch: str,
                        run_id: str) -> str:
    """Replace the site's profiles on ``branch``; return the site's timezone."""
    now = datetime.now(UTC)
    with _lakehouse_reachable(lakehouse, f"profiles site={source.site_id}"):
        catalog = lakehouse.branches.catalog(branch)
        with NightscoutClient(source) as client:
            profiles = ingest_profiles(client, catalog,
                                       _context(source, "UTC", now, now, run_id))
        record_site_settings(catalog, source, run_id, now)
    timezone = resolve_timezone(source.timezone, profiles)
    get_run_logger().info("site=%s: %d profile(s), timezone %s", source.site_id,
                          profiles.height, timezone)
    return timezone


@task(name="ingest-window", retries=2, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=lambda task, run, state: _retryable(state),
      task_run_name="ingest {days} site={source.site_id}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.INGEST_WINDOW)
def ingest_window_task(lakehouse: Lakehouse, source: NightscoutSettings, branch: str,
                       days: DayRange, timezone: str, run_id: str,
                       max_reject_ratio: float = 0.05) -> WindowReport:
    """Fetch, shape, check and commit one window (UTC ``days``) of one site onto ``branch``."""
    what = f"{days} site={source.site_id}"
    with _lakehouse_reachable(lakehouse, what):
        catalog = lakehouse.branches.catalog(branch)
        with NightscoutClient(source) as client:
            report = ingest_window(client, catalog,
                                   window_context(source, timezone, days, run_id),
                                   max_reject_ratio)
            report.requests = client.requests_made
    get_run_logger().info("%s → %s", report.line(), branch)
    return report


@task(name="reconcile-window", retries=2, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=lambda task, run, state: _retryable(state),
      task_run_name="reconcile {days} site={source.site_id}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.INGEST_WINDOW)
def reconcile_window_task(lakehouse: Lakehouse, source: NightscoutSettings, branch: str,
                          days: DayRange, tables: tuple[str, ...], timezone: str, run_id: str,
                          max_reject_ratio: float = 0.05) -> WindowReport:
    """Re-read UTC ``days`` of one site by time and land, on ``branch``, only the days that
    differ from it (a change feed's or the reconcile window's days)."""
    with _lakehouse_reachable(lakehouse, f"reconcile {days} site={source.site_id}"):
        catalog = lakehouse.branches.catalog(branch)
        with NightscoutClient(source) as client:
            report = ingest_window(client, catalog,
                                   window_context(source, timezone, days, run_id),
                                   max_reject_ratio, tables, only_changes=True)
            report.requests = client.requests_made
    landed = sum(c.days_landed for c in report.tables.values())
    get_run_logger().info("reconcile %s: %d table-days differ and landed → %s", report.line(),
                          landed, branch)
    return report


def _retryable(state: object) -> bool:
    """Retry only what nothing below retried: a lakehouse service that did not answer.

    One retry layer per failure: the Nightscout client retries the source itself (with
    backoff, honouring Retry-After) and raises ``NightscoutUnavailable`` only when that
    budget is spent, so the task does not multiply it; commit races are retried where they
    happen, in ``tasks.lakehouse``.
    """
    try:
        state.result()  # type: ignore[attr-defined]
    except ServiceUnavailable:  # a window is safe to redo
        return True
    except Exception:
        return False
    return False
