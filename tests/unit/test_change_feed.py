"""The change feed as days to land, its cursor in the lakehouse, and reconcile windows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog

from tasks.branches import EmbeddedBranchCatalog
from tasks.change_feed import (
    START_MARGIN_MS,
    commit_cursors,
    first_logged_day,
    plan_feed,
    read_cursors,
    start_cursors,
)
from tasks.days import DayRange
from tasks.lakehouse import replace_rows, site_window
from tasks.nightscout_v3 import NightscoutV3Client
from tasks.reconcile import ReconcileWindow, plan_daily_windows, plan_windows, trailing_days
from tasks.settings import NightscoutSettings
from tasks.simulator import SimulatorServer, default_site
from tasks.tables import AUDIT_TABLES, INGEST_LOG_SCHEMA

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
TOKEN = "reader-3f2a9c"
TODAY = NOW.date()


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([default_site("a", token=TOKEN)], now=NOW, history_days=90) as server:
        yield server


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse").catalog("main")


def _client(sim: SimulatorServer, token: str | None = TOKEN) -> NightscoutV3Client:
    return NightscoutV3Client(NightscoutSettings(
        sim.url, "a", token=SecretStr(token) if token else None))


def test_a_first_run_starts_every_cursor_at_the_server_clock(sim: SimulatorServer,
                                                             catalog: Catalog) -> None:
    with _client(sim) as client:
        plan = plan_feed(client, catalog, "a", first_day=None, last_day=TODAY)
    assert plan.status == "started" and plan.days == {}
    assert set(plan.cursors.values()) == {NOW_MS - START_MARGIN_MS}
    assert set(plan.cursors) == {"entries", "treatments", "devicestatus", "profile"}


def test_the_feed_names_the_days_its_changes_touch(sim: SimulatorServer, catalog: Catalog) -> None:
    with _client(sim) as client:
        commit_cursors(catalog, start_cursors(client, "a"), "backfill")
    old_treatment = sim.documents("a", "treatments", TODAY - timedelta(days=60))[0]
    old_reading = sim.documents("a", "entries", TODAY - timedelta(days=30))[10]
    sim.changes("a").edit("treatments", old_treatment, {"carbs": 61}, via="v3")
    sim.changes("a").soft_delete("entries", old_reading)
    sim.changes("a").add("entries", {**old_reading, "_id": "late-v1", "sgv": 90,
                                     "date": old_reading["date"] + 60_000}, via="v1")
    with _client(sim) as client:
        plan = plan_feed(client, catalog, "a", first_day=None, last_day=TODAY)
    assert plan.status == "ok"
    assert plan.days == {"treatments": frozenset({TODAY - timedelta(days=60)}),
                         "entries": frozenset({TODAY - timedelta(days=30)})}
    assert plan.changes == {"entries": 1, "treatments": 1, "devicestatus": 0, "profile": 0}
    assert plan.cursors["entries"] > NOW_MS - START_MARGIN_MS
    assert plan.cursors["devicestatus"] == NOW_MS - START_MARGIN_MS  # nothing new: kept


def test_until_its_cursor_is_committed_a_run_reads_the_same_changes(
    sim: SimulatorServer, catalog: Catalog,
) -> None:
    with _client(sim) as client:
        commit_cursors(catalog, start_cursors(client, "a"), "backfill")
    reading = sim.documents("a", "entries", TODAY - timedelta(days=3))[0]
    sim.changes("a").soft_delete("entries", reading)
    with _client(sim) as client:
        failed = plan_feed(client, catalog, "a", first_day=None, last_day=TODAY)
        again = plan_feed(client, catalog, "a", first_day=None, last_day=TODAY)
        commit_cursors(catalog, again, "run2")
        after = plan_feed(client, catalog, "a", first_day=None, last_day=TODAY)
    assert failed.days == again.days == {"entries": frozenset({TODAY - timedelta(days=3)})}
    assert after.days == {} and after.n_changes == 0
    assert read_cursors(catalog, "a")["entries"] == again.cursors["entries"]


def test_days_before_the_lake_begins_are_left_alone(sim: SimulatorServer,
                                                    catalog: Catalog) -> None:
    with _client(sim) as client:
        commit_cursors(catalog, start_cursors(client, "a"), "backfill")
    reading = sim.documents("a", "entries", TODAY - timedelta(days=80))[0]
    sim.changes("a").soft_delete("entries", reading)
    with _client(sim) as client:
        plan = plan_feed(client, catalog, "a", first_day=TODAY - timedelta(days=30),
                         last_day=TODAY)
    assert plan.days == {} and plan.changes["entries"] == 1


def test_a_site_without_a_feed_keeps_no_cursor_and_says_why(sim: SimulatorServer,
                                                            catalog: Catalog) -> None:
    with _client(sim, token=None) as client:
        plan = plan_feed(client, catalog, "a", first_day=None, last_day=TODAY)
    assert plan.status.startswith("no feed:") and "access token" in plan.status
    commit_cursors(catalog, plan, "run1")
    assert read_cursors(catalog, "a") == {}


def test_reconcile_windows_group_consecutive_days_needing_the_same_tables() -> None:
    d = date(2024, 5, 1)
    trailing = {d + timedelta(days=i) for i in range(5)}
    days = {"entries": trailing | {date(2024, 3, 2)}, "treatments": set(trailing),
            "devicestatus": set(trailing)}
    windows = plan_windows("a", days, max_days=3)
    assert windows == [
        ReconcileWindow("a", DayRange.one(date(2024, 3, 2)), ("entries",)),
        ReconcileWindow("a", DayRange(d, d + timedelta(days=2)),
                        ("entries", "treatments", "devicestatus")),
        ReconcileWindow("a", DayRange(d + timedelta(days=3), d + timedelta(days=4)),
                        ("entries", "treatments", "devicestatus")),
    ]
    assert trailing_days(date(2024, 5, 10), 2) == {date(2024, 5, 9), date(2024, 5, 8)}


def test_a_daily_reconciles_the_days_before_its_own_and_the_feed_days() -> None:
    own = DayRange(date(2024, 5, 30), date(2024, 6, 1))
    feed = {"treatments": frozenset({date(2024, 4, 1), date(2024, 5, 31)})}
    windows = plan_daily_windows("a", own, feed, reconcile_days=3, first_day=date(2024, 1, 1))
    assert windows == [
        ReconcileWindow("a", DayRange.one(date(2024, 4, 1)), ("treatments",)),
        ReconcileWindow("a", DayRange(date(2024, 5, 27), date(2024, 5, 29)),
                        ("entries", "treatments", "devicestatus")),
    ]
    assert plan_daily_windows("a", own, {}, reconcile_days=0, first_day=date(2024, 1, 1)) == []
    late_start = plan_daily_windows("a", own, {}, reconcile_days=3, first_day=date(2024, 5, 29))
    assert [w.days for w in late_start] == [DayRange.one(date(2024, 5, 29))]
    assert plan_daily_windows("a", own, {}, reconcile_days=3, first_day=None) == []


def test_the_first_logged_day_comes_from_the_log_files_bounds(catalog: Catalog) -> None:
    layout = AUDIT_TABLES["ingest_log"]
    assert first_logged_day(catalog, "a") is None
    for site, day in (("a", date(2024, 3, 5)), ("a", date(2024, 2, 1)), ("b", date(2023, 1, 1))):
        row = pl.DataFrame([("entries", site, day, 1, 0, 0, 1, 0, "r", NOW)],
                           schema=INGEST_LOG_SCHEMA, orient="row")
        replace_rows(catalog, layout, row, site_window(layout, site, day, day + timedelta(days=1)))
    assert first_logged_day(catalog, "a") == date(2024, 2, 1)
    assert first_logged_day(catalog, "b") == date(2023, 1, 1)
