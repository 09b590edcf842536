"""Reconcile windows: days re-read by time and landed where they differ from the lake.

What API v3's feed cannot name (documents uploaded through v1, permanent deletes, sites
without v3 or a token that may read it) is found by reading days again by time: a
``daily`` re-reads the ``reconcile_days`` UTC days before its own (``trailing_days``), the
``reconcile(start, end)`` flow any range. The days the feed names, however old, are read
the same way. Each such day is landed only if it differs from the lake
(``ingest_window(only_changes=True)``), so an unchanged day costs its share of a request
and writes nothing.

``plan_windows`` groups the days of one site into windows: runs of consecutive days that
need the same tables, at most ``max_days`` long, one task run each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from tasks.ingest import WINDOW_TABLES

__all__ = ["ReconcileWindow", "days_between", "plan_daily_windows", "plan_windows",
           "trailing_days"]


@dataclass(frozen=True)
class ReconcileWindow:
    """UTC days ``[start, end)`` of one site, re-read for ``tables``."""

    site_id: str
    start: date
    end: date
    tables: tuple[str, ...]

    def label(self) -> str:
        last = self.end - timedelta(days=1)
        return f"{self.start}..{last} site={self.site_id} {'+'.join(self.tables)}"


def days_between(first: date, last: date) -> set[date]:
    """Every day of the inclusive range ``[first, last]``."""
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


def trailing_days(before: date, reconcile_days: int) -> set[date]:
    """The ``reconcile_days`` UTC days ending the day before ``before``."""
    if reconcile_days < 0:
        raise ValueError(f"reconcile_days must be 0 or more, got {reconcile_days}")
    return {before - timedelta(days=i) for i in range(1, reconcile_days + 1)}


def plan_windows(site_id: str, days: dict[str, set[date] | frozenset[date]],
                 max_days: int = 30) -> list[ReconcileWindow]:
    """The site's days, per table, as windows: consecutive days needing the same tables."""
    if max_days < 1:
        raise ValueError(f"max_days must be at least 1, got {max_days}")
    needs: dict[date, tuple[str, ...]] = {}
    for day in sorted(set().union(*days.values()) if days else set()):
        needs[day] = tuple(t for t in WINDOW_TABLES if day in days.get(t, ()))
    windows: list[ReconcileWindow] = []
    for day, tables in needs.items():
        last = windows[-1] if windows else None
        if (last is not None and last.end == day and last.tables == tables
                and (last.end - last.start).days < max_days):
            windows[-1] = ReconcileWindow(site_id, last.start, day + timedelta(days=1), tables)
        else:
            windows.append(ReconcileWindow(site_id, day, day + timedelta(days=1), tables))
    return windows


def plan_daily_windows(site_id: str, own_days: set[date], feed_days: dict[str, frozenset[date]],
                       reconcile_days: int, max_days: int = 30) -> list[ReconcileWindow]:
    """A ``daily``'s reconcile windows for one site: the ``reconcile_days`` UTC days before
    its own days (every table) and the days the change feed named (their tables), less the
    days the daily ingests anyway."""
    trailing = trailing_days(min(own_days), reconcile_days) if own_days else set()
    days = {t: (set(feed_days.get(t, ())) | trailing) - own_days for t in WINDOW_TABLES}
    return plan_windows(site_id, {t: d for t, d in days.items() if d}, max_days)
