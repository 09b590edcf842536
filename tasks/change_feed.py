"""Each site's API v3 change feed: the days it says changed, and its cursor in the lakehouse.

The cursor (``audit.change_cursor``: per site and collection, the newest ``srvModified``
landed) is written on the run's branch once the run has landed the days the feed named,
so it reaches main only with the promote: a run that fails anywhere before leaves main's
cursor where it was, and the next run reads the same changes again. Landing is idempotent
(a window re-read replaces its days), so reading a change twice costs a request, never a
duplicate.

A cursor starts at the server's clock, less a minute (``START_MARGIN_MS``, so a change
committed in the same instant is not missed), when a site is first backfilled, or on the
first run that finds none: changes made before were read by that backfill's windows.
Changes of days before the site's first ingested day are left alone (the lake does not
hold those days); profiles are re-read whole by every run, so their feed only moves their
cursor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import EqualTo, Reference
from pyiceberg.expressions.literals import literal
from pyiceberg.types import DateType

from tasks import timeouts
from tasks.errors import NightscoutFeedUnavailable
from tasks.lakehouse import read_table, replace_rows, site_window
from tasks.nightscout_v3 import FEED_COLLECTIONS, Feed, NightscoutV3Client
from tasks.profile import Lakehouse
from tasks.settings import NightscoutSettings
from tasks.tables import AUDIT_TABLES

__all__ = ["START_MARGIN_MS", "FeedPlan", "commit_cursors", "commit_cursors_task",
           "first_logged_day", "plan_feed", "plan_feed_task", "read_cursors", "start_cursors",
           "start_feed_task"]

logger = logging.getLogger("cascade.change_feed")

START_MARGIN_MS: Final = 60_000
_WINDOW_TABLES: Final = ("entries", "treatments", "devicestatus")  # collection = raw table


@dataclass(frozen=True)
class FeedPlan:
    """What a site's change feed says for one run.

    ``days`` maps a raw table to the UTC days its changes touch (to re-read and land);
    ``cursors`` is each collection's cursor once those days have landed; ``status`` is
    ``ok``, ``started`` (a new cursor, nothing to read yet) or why there is no feed.
    """

    site_id: str
    status: str
    cursors: dict[str, int]
    days: dict[str, frozenset[date]] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    unplaced: int = 0  # changes without a usable time, or unreadable: left to a reconcile

    @property
    def n_changes(self) -> int:
        return sum(self.changes.values())

    def line(self) -> str:
        """One log line: ``site=a change feed: ok, 3 changes (entries 1, treatments 2) ...``."""
        counts = ", ".join(f"{c} {n}" for c, n in self.changes.items() if n)
        days = sum(len(d) for d in self.days.values())
        return (f"site={self.site_id} change feed: {self.status}, {self.n_changes} changes"
                + (f" ({counts})" if counts else "") + f" on {days} table-days, "
                f"{self.requests} requests" + (f", {self.unplaced} without a usable time"
                                               if self.unplaced else ""))


def read_cursors(catalog: Catalog, site_id: str) -> dict[str, int]:
    """The site's cursor per collection on this branch (empty before the first one)."""
    layout = AUDIT_TABLES["change_cursor"]
    if not catalog.table_exists(layout.identifier):
        return {}
    rows = read_table(catalog, layout.identifier, site_window(layout, site_id))
    return {str(c): int(ms) for c, ms in rows.select("collection", "cursor_ms").iter_rows()}


def start_cursors(client: NightscoutV3Client, site_id: str,
                  have: dict[str, int] | None = None) -> FeedPlan:
    """Cursors from the server's clock (less ``START_MARGIN_MS``) for every collection that
    has none; the others are kept. Each new cursor is tried once, so a site whose feed
    cannot be read (no v3, no token, no read permission) gets no cursor, and says why."""
    have = dict(have or {})
    missing = [c for c in FEED_COLLECTIONS if c not in have]
    if not missing:
        return FeedPlan(site_id, "ok", have)
    try:
        start = client.server_time_ms() - START_MARGIN_MS
        for collection in missing:  # the changes of the last minute are read next run
            client.feed(collection, start)
    except NightscoutFeedUnavailable as exc:
        return FeedPlan(site_id, _why(exc), have, requests=client.requests_made)
    return FeedPlan(site_id, "started", {**have, **dict.fromkeys(missing, start)},
                    changes=dict.fromkeys(FEED_COLLECTIONS, 0), requests=client.requests_made)


def plan_feed(client: NightscoutV3Client, catalog: Catalog, site_id: str, *,
              first_day: date | None, last_day: date) -> FeedPlan:
    """Read the site's changes since its cursors on ``catalog`` (the run's branch) and
    name the days they touch, within ``[first_day, last_day]``.

    Without cursors the feed starts now (``start_cursors``). A site without a feed
    Cascade can read gets a plan with no days and the reason as its status.
    """
    cursors = read_cursors(catalog, site_id)
    if any(c not in cursors for c in FEED_COLLECTIONS):
        return start_cursors(client, site_id, cursors)
    feeds: list[Feed] = []
    try:
        for collection in FEED_COLLECTIONS:
            feeds.append(client.feed(collection, cursors[collection]))
    except NightscoutFeedUnavailable as exc:
        return FeedPlan(site_id, _why(exc), cursors, requests=client.requests_made)
    days: dict[str, frozenset[date]] = {}
    unplaced = 0
    for feed in feeds:
        if feed.collection not in _WINDOW_TABLES:
            continue
        touched = {t.date() for c in feed.changes for t in c.times}
        unplaced += sum(1 for c in feed.changes if not c.times) + feed.unreadable
        wanted = frozenset(d for d in touched
                           if d <= last_day and (first_day is None or d >= first_day))
        if wanted:
            days[feed.collection] = wanted
    return FeedPlan(site_id, "ok", {f.collection: f.cursor_ms for f in feeds}, days,
                    {f.collection: len(f.changes) for f in feeds}, client.requests_made,
                    unplaced)


def commit_cursors(catalog: Catalog, plan: FeedPlan, run_id: str,
                   now: datetime | None = None) -> None:
    """Write the plan's cursors on ``catalog`` (the run's branch), one row per collection.
    A site without a feed keeps what it had (nothing is written)."""
    if not plan.cursors:
        return
    layout = AUDIT_TABLES["change_cursor"]
    stamp = now or datetime.now(UTC)
    rows = pl.DataFrame(
        [(plan.site_id, c, ms, plan.changes.get(c, 0), plan.status, run_id, stamp)
         for c, ms in sorted(plan.cursors.items())],
        schema=layout.schema, orient="row")
    replace_rows(catalog, layout, rows, site_window(layout, plan.site_id))


def first_logged_day(catalog: Catalog, site_id: str) -> date | None:
    """The site's first UTC day in ``audit.ingest_log`` (None before its first ingest).

    Read from the data files' column bounds, not their rows: the log gains files with
    every run, and a daily should not read them all.
    """
    layout = AUDIT_TABLES["ingest_log"]
    if not catalog.table_exists(layout.identifier):
        return None
    table = catalog.load_table(layout.identifier)
    field_id = table.schema().find_field("window_date").field_id
    site = EqualTo(term=Reference("site_id"), value=literal(site_id))
    firsts, unbounded = [], []
    for planned in table.scan(row_filter=site).plan_files():
        lower = (planned.file.lower_bounds or {}).get(field_id)
        if lower is None:
            unbounded.append(planned.file.file_path)
            continue
        firsts.append(_EPOCH + timedelta(days=int(from_bytes(DateType(), lower))))
    if unbounded:  # a file written without column metrics: read its days
        rows = table.scan(row_filter=site, selected_fields=("window_date",)).to_arrow()
        firsts.extend(d for d in rows.column("window_date").to_pylist() if d is not None)
    return min(firsts, default=None)


_EPOCH: Final = date(1970, 1, 1)


def _why(exc: NightscoutFeedUnavailable) -> str:
    logger.warning("%s", exc)
    return f"no feed: {exc}"


# ----------------------------------------------------------------------- Prefect wrappers


@task(name="plan-change-feed", retries=2, retry_delay_seconds=[2, 10],
      task_run_name="change feed site={source.site_id}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.CHANGE_FEED)
def plan_feed_task(lakehouse: Lakehouse, source: NightscoutSettings, branch: str,
                   last_day: date) -> FeedPlan:
    """Read the site's API v3 changes since the cursor on ``branch``: the days to land."""
    catalog = lakehouse.branches.catalog(branch)
    with NightscoutV3Client(source) as client:
        plan = plan_feed(client, catalog, source.site_id,
                         first_day=first_logged_day(catalog, source.site_id), last_day=last_day)
    get_run_logger().info("%s", plan.line())
    return plan


@task(name="start-change-feed", retries=2, retry_delay_seconds=[2, 10],
      task_run_name="start change feed site={source.site_id}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.CHANGE_FEED)
def start_feed_task(lakehouse: Lakehouse, source: NightscoutSettings, branch: str) -> FeedPlan:
    """Cursors from the server's clock for a site that has none on ``branch`` (a backfill)."""
    catalog = lakehouse.branches.catalog(branch)
    with NightscoutV3Client(source) as client:
        plan = start_cursors(client, source.site_id, read_cursors(catalog, source.site_id))
    get_run_logger().info("%s", plan.line())
    return plan


@task(name="commit-change-cursor", task_run_name="change cursor site={plan.site_id}",
      cache_policy=NO_CACHE)
def commit_cursors_task(lakehouse: Lakehouse, branch: str, plan: FeedPlan, run_id: str) -> None:
    """Store the plan's cursors on ``branch``, once its days have landed there."""
    commit_cursors(lakehouse.branches.catalog(branch), plan, run_id)
