"""Reconcile windows: days re-read by time and landed where they differ from the lake.

What API v3's feed cannot name (documents uploaded through v1, permanent deletes, sites
without v3 or a token that may read it) is found by reading days again by time: a
``daily`` re-reads the ``reconcile_days`` UTC days before its own (``trailing_days``), the
``reconcile(start, end)`` flow any range. The days the feed names, however old, are read
the same way. Each such day is landed only if it differs from the lake
(``ingest_window(only_changes=True)``), so an unchanged day costs its share of a request
and writes nothing.

``plan_windows`` groups the days of one site into windows: runs of consecutive days that
need the same tables, at most ``max_days`` long, one task run each. ``land_changes`` runs
a parent's feeds and windows on its branch, then stores the feeds' cursors there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture

from tasks.change_feed import FeedPlan, commit_cursors_task, first_logged_day, plan_feed_task
from tasks.days import DayRange
from tasks.errors import CascadeError
from tasks.ingest import WINDOW_TABLES, reconcile_window_task
from tasks.mapping import bounded_submit
from tasks.profile import Lakehouse
from tasks.results import ChangesReport
from tasks.settings import NightscoutSettings

__all__ = ["ReconcileWindow", "WindowPlanner", "land_changes", "plan_daily_windows",
           "plan_windows", "trailing_days"]


@dataclass(frozen=True)
class ReconcileWindow:
    """UTC ``days`` of one site, re-read for ``tables``."""

    site_id: str
    days: DayRange
    tables: tuple[str, ...]

    def label(self) -> str:
        return f"{self.days} site={self.site_id} {'+'.join(self.tables)}"


def trailing_days(before: date, reconcile_days: int) -> set[date]:
    """The ``reconcile_days`` UTC days ending the day before ``before``."""
    if reconcile_days < 0:
        raise ValueError(f"reconcile_days must be 0 or more, got {reconcile_days}")
    return {before - timedelta(days=i) for i in range(1, reconcile_days + 1)}


def plan_windows(site_id: str, days: Mapping[str, Iterable[date]],
                 max_days: int = 30) -> list[ReconcileWindow]:
    """The site's days, per table, as windows: consecutive days needing the same tables."""
    if max_days < 1:
        raise ValueError(f"max_days must be at least 1, got {max_days}")
    wanted = {table: set(some) for table, some in days.items()}
    needs = {day: tuple(t for t in WINDOW_TABLES if day in wanted.get(t, ()))
             for day in sorted(set().union(*wanted.values()) if wanted else set())}
    windows: list[ReconcileWindow] = []
    for day, tables in needs.items():
        last = windows[-1] if windows else None
        if (last is not None and last.days.stop == day and last.tables == tables
                and len(last.days) < max_days):
            windows[-1] = ReconcileWindow(site_id, DayRange(last.days.first, day), tables)
        else:
            windows.append(ReconcileWindow(site_id, DayRange.one(day), tables))
    return windows


def plan_daily_windows(site_id: str, own_days: DayRange, feed_days: dict[str, frozenset[date]],
                       reconcile_days: int, first_day: date | None,
                       max_days: int = 30) -> list[ReconcileWindow]:
    """A ``daily``'s reconcile windows for one site: the ``reconcile_days`` UTC days before
    its own days (every table; none before ``first_day``, the site's first ingested day: a
    daily does not backfill) and the days the change feed named (their tables), less the
    days the daily ingests anyway."""
    trailing = {d for d in trailing_days(own_days.first, reconcile_days)
                if first_day is not None and d >= first_day}
    days = {t: (set(feed_days.get(t, ())) | trailing) - set(own_days) for t in WINDOW_TABLES}
    return plan_windows(site_id, {t: d for t, d in days.items() if d}, max_days)


# what a parent plans for one site from its feed (None without one) and its first day
WindowPlanner = Callable[[FeedPlan | None, date | None], list[ReconcileWindow]]


def land_changes(lakehouse: Lakehouse, sources: dict[str, NightscoutSettings], branch: str,
                 run_id: str, timezones: dict[str, str], windows_for: dict[str, WindowPlanner],
                 *, change_feed: bool, max_reject_ratio: float,
                 max_concurrency: int) -> ChangesReport:
    """Read each site's change feed (when ``change_feed``), re-read and land the windows
    ``windows_for[site](feed, first_day)`` plans (``first_day``: the site's first UTC day
    on the branch), then store the feeds' cursors on ``branch``.

    Raises:
        CascadeError: a window failed; the branch is kept, no cursor moved.
    """
    today = datetime.now(UTC).date()
    plans = {site: plan_feed_task(lakehouse, source, branch, today) if change_feed else None
             for site, source in sources.items()}
    catalog = lakehouse.branches.catalog(branch)
    windows = [w for site in sources
               for w in windows_for[site](plans[site], first_logged_day(catalog, site))]

    def submit(window: ReconcileWindow) -> PrefectFuture[Any]:
        return reconcile_window_task.submit(
            lakehouse, sources[window.site_id], branch, window.days, window.tables,
            timezones[window.site_id], run_id, max_reject_ratio)

    reports, failures = [], []
    for window, future in bounded_submit(submit, windows, max(1, max_concurrency)):
        future.wait()
        if future.state.is_completed():
            reports.append(future.result())
        else:
            failures.append(f"{window.label()}: {future.state.message}")
    if failures:
        raise CascadeError(
            f"reconcile: {len(failures)} of {len(windows)} windows failed; branch {branch} "
            "kept, no change cursor moved, nothing promoted (re-run: the same changes are "
            "read again): " + " | ".join(failures))
    for plan in plans.values():
        if plan is not None:
            commit_cursors_task(lakehouse, branch, plan, run_id)
    report = ChangesReport(
        feeds={site: plan.status for site, plan in plans.items() if plan is not None},
        changes_read=sum(p.n_changes for p in plans.values() if p is not None),
        windows=len(windows),
        table_days_landed=sum(c.days_landed for r in reports for c in r.tables.values()),
        rows_removed=sum(c.removed for r in reports for c in r.tables.values()),
        requests=sum(r.requests for r in reports)
        + sum(p.requests for p in plans.values() if p is not None))
    get_run_logger().info("%s on %s", report.line(), branch)
    return report
