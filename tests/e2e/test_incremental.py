"""Recurring runs rebuild only what changed, and end where a full rebuild ends.

One lakehouse goes through a realistic sequence, once per module: a backfill, then
nightly ``daily`` runs across the spring DST change (Europe/London, 2024-03-31) with each
evening's last readings uploaded only after the run (they land with the next night's run),
an old day re-ingested, and a reading removed at the source from an old day (recorded
as a change, as the API v3 change feed does). The tests check that every model then
equals a full rebuild of the same raw data, that the marts equal one backfill of the same
days in a fresh lakehouse, that what was published equals a full publish, and that each
run rebuilt only its own days.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pyiceberg.expressions import And

from flows.build_branch import build_branch
from flows.pipeline import backfill, daily
from flows.promote import promote
from flows.publish import publish
from flows.validate import validate
from tasks.build_log import BuildRecord, TouchedRange, builds_after
from tasks.changes import change_rows, record_changes
from tasks.lakehouse import read_table, replace_rows
from tasks.profile import current_profile, embedded_lakehouse
from tasks.publish import read_mart
from tasks.simulator import SimulatorServer, SiteConfig
from tasks.tables import AUDIT_TABLES, RAW_TABLES, raw_layout
from tests._iceberg import between, eq
from tests.e2e.model_compare import assert_same_tables, tables_of

pytestmark = pytest.mark.e2e

SECRET = "incremental-secret"
SITE = SiteConfig(site_id="inc", seed=23, timezone="Europe/London", api_secret=SECRET)
FIRST, LAST = date(2024, 3, 24), date(2024, 4, 2)
DST_DAY = date(2024, 3, 31)
LATE_DAY = date(2024, 3, 30)  # its evening is uploaded after the night's run
REINGESTED = date(2024, 3, 26)
EDITED = date(2024, 3, 25)  # a reading of it removed at the source, through a change row
FINAL_NOW = datetime(2024, 4, 2, 5, 0, tzinfo=UTC)


@dataclass
class Sequence:
    """The lakehouse after the sequence, and what happened along it."""

    home: Path
    late_day_readings: tuple[int, int]  # LATE_DAY's readings after its run, and at the end
    builds: list[BuildRecord]  # every build main holds, in order
    removed_reading: str


def _environment(home: Path, url: str) -> dict[str, str]:
    return {"CASCADE_HOME": str(home), "NIGHTSCOUT_URL": url,
            "NIGHTSCOUT_API_SECRET": SECRET, "NIGHTSCOUT_SITE_ID": SITE.site_id}


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=FINAL_NOW, history_days=40) as server:
        yield server


def _readings(day: date) -> int:
    daily_mart = read_table(embedded_lakehouse().branches.catalog("main"),
                            "marts.mrt_daily_glycaemia", eq("local_date", day.isoformat()))
    return int(daily_mart.get_column("n_readings").sum())


def _remove_a_reading(day: date) -> str:
    """On a branch: drop one of ``day``'s readings from raw, as the change feed lands a
    deletion (raw, the ingest log's count and a change row), then build, validate, promote."""
    branches = embedded_lakehouse().branches
    branches.create_branch("feed-edit", "main")
    catalog = branches.catalog("feed-edit")
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    where = And(eq("site_id", SITE.site_id),
                between("entry_at", start.isoformat(), end.isoformat()))
    rows = read_table(catalog, "raw.entries", where).sort("entry_at")
    removed = str(rows.item(len(rows) // 2, "entry_id"))
    replace_rows(catalog, raw_layout(RAW_TABLES["entries"]),
                 rows.filter(pl.col("entry_id") != removed), where)
    log_layout = AUDIT_TABLES["ingest_log"]
    log_where = And(eq("site_id", SITE.site_id),
                    And(eq("table_name", "entries"), eq("window_date", day.isoformat())))
    log = read_table(catalog, "audit.ingest_log", log_where)
    replace_rows(catalog, log_layout, log.with_columns(pl.col("n_committed") - 1), log_where)
    record_changes(catalog, change_rows(SITE.site_id, ["entries"], [day], "change_feed",
                                        "test-feed"))
    build_branch("feed-edit", node_tasks=False)
    checked = validate("feed-edit")
    promote("feed-edit", expected_main_hash=checked.main_hash)
    publish("main", charts=False)
    return removed


@pytest.fixture(scope="module")
def sequence(simulator: SimulatorServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Sequence]:
    home = tmp_path_factory.mktemp("incremental") / "cascade"
    with pytest.MonkeyPatch.context() as env:
        for key, value in _environment(home, simulator.url_for(SITE.site_id)).items():
            env.setenv(key, value)
        env.delenv("CASCADE_TIMEZONE", raising=False)
        env.delenv("NIGHTSCOUT_TOKEN", raising=False)
        simulator.now = FINAL_NOW
        backfill(start=FIRST, end=date(2024, 3, 29), chunk_days=3, dbt_node_tasks=False)
        simulator.now = datetime(2024, 3, 30, 21, 0, tzinfo=UTC)  # 22:00 local, GMT
        daily(day=LATE_DAY, dbt_node_tasks=False)
        after_run = _readings(LATE_DAY)
        simulator.now = datetime(2024, 4, 1, 4, 0, tzinfo=UTC)
        daily(day=DST_DAY, dbt_node_tasks=False)
        simulator.now = FINAL_NOW
        daily(day=date(2024, 4, 1), dbt_node_tasks=False)
        backfill(start=REINGESTED, end=REINGESTED, dbt_node_tasks=False)
        removed = _remove_a_reading(EDITED)
        builds = builds_after(embedded_lakehouse().branches.catalog("main"), 0)
        yield Sequence(home, (after_run, _readings(LATE_DAY)), builds, removed)


@pytest.fixture
def at_sequence(sequence: Sequence, simulator: SimulatorServer,
                monkeypatch: pytest.MonkeyPatch) -> Sequence:
    for key, value in _environment(sequence.home, simulator.url_for(SITE.site_id)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CASCADE_TIMEZONE", raising=False)
    simulator.now = FINAL_NOW
    return sequence


def test_late_readings_rebuild_their_day(at_sequence: Sequence) -> None:
    after_run, at_end = at_sequence.late_day_readings
    assert 0 < after_run < at_end


def test_every_run_after_the_first_rebuilds_only_its_own_days(at_sequence: Sequence) -> None:
    first, *later = at_sequence.builds
    assert first.full_refresh and first.reason
    assert later and not any(b.full_refresh for b in later)
    for build in later:
        rebuilt = build.rebuilt("marts.mrt_daily_glycaemia")
        assert rebuilt.ranges is not None and rebuilt.sites() == {SITE.site_id}
        days = sum(((r.last_date - r.first_date).days + 1) for r in rebuilt.ranges
                   if r.first_date is not None and r.last_date is not None)
        assert 1 <= days <= 5, (build.build_seq, rebuilt)
    # the edited day, and the next one: its first reading's gap to the previous changed
    edited = later[-1].rebuilt("marts.mrt_daily_glycaemia").ranges or ()
    assert [(r.first_date, r.last_date) for r in edited] == [
        (EDITED, EDITED + timedelta(days=1))]


def test_incremental_builds_equal_a_full_rebuild(at_sequence: Sequence) -> None:
    branches = embedded_lakehouse().branches
    branches.create_branch("full-rebuild", "main")
    report = build_branch("full-rebuild", node_tasks=False, full_refresh=True)
    assert report.full_refresh and report.status == "success"
    assert_same_tables(tables_of(branches.catalog("main")),
                       tables_of(branches.catalog("full-rebuild")))
    branches.delete_branch("full-rebuild")


def test_the_removed_reading_is_gone_from_every_model(at_sequence: Sequence) -> None:
    catalog = embedded_lakehouse().branches.catalog("main")
    for table, column in (("staging.stg_entries", "entry_id"),
                          ("silver.fct_cgm_reading", "reading_id"),
                          ("silver.int_cgm_gaps_measured", "reading_id")):
        found = read_table(catalog, table, eq(column, at_sequence.removed_reading))
        assert found.height == 0, table


def test_daily_runs_across_dst_equal_one_backfill_of_the_same_days(
        at_sequence: Sequence, simulator: SimulatorServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ours = tables_of(embedded_lakehouse().branches.catalog("main"), ("marts",))
    monkeypatch.setenv("CASCADE_HOME", str(tmp_path / "one-backfill"))
    backfill(start=FIRST, end=LAST, chunk_days=4, dbt_node_tasks=False)
    # the one backfill reads the edited day as the source now serves it: with the reading
    # the feed removed; take it out of the comparison of that day
    theirs = tables_of(embedded_lakehouse().branches.catalog("main"), ("marts",))
    for name in ("marts.mrt_daily_glycaemia", "marts.mrt_quality_coverage"):
        ours[name] = ours[name].filter(pl.col("local_date") != EDITED)
        theirs[name] = theirs[name].filter(pl.col("local_date") != EDITED)
    for name in ("marts.mrt_agp_hourly", "marts.mrt_agp_hourly_14d", "marts.mrt_period_summary"):
        del ours[name], theirs[name]  # every reading of a period: the removed one included
    assert_same_tables(ours, theirs)
    dst = theirs["marts.mrt_quality_coverage"].filter(pl.col("local_date") == DST_DAY)
    assert dst.item(0, "n_expected") == 276  # 23 hours of 5-minute readings


def test_what_was_published_equals_a_full_publish(at_sequence: Sequence) -> None:
    connector = current_profile().marts_connector()
    names = ("mrt_daily_glycaemia", "mrt_quality_coverage", "mrt_agp_hourly",
             "mrt_agp_hourly_14d")
    with connector:
        published = {n: read_mart(connector, n) for n in names}
        log = read_mart(connector, "cascade_publish_log")
    assert set(log.filter(pl.col("mode") == "partitions").get_column("mart")) >= {
        "mrt_daily_glycaemia", "mrt_quality_coverage"}
    publish("main", charts=False, full=True)
    with connector:
        for name in names:
            full = read_mart(connector, name)
            columns = sorted(full.columns)
            assert_frame_equal(published[name].select(columns).sort(columns),
                               full.select(columns).sort(columns), check_exact=False,
                               rel_tol=1e-9)


def test_a_build_with_nothing_pending_rebuilds_nothing(at_sequence: Sequence) -> None:
    branches = embedded_lakehouse().branches
    branches.create_branch("idle", "main")
    report = build_branch("idle", node_tasks=False)
    assert not report.full_refresh and report.changes == 0
    assert report.touched_sites == []
    assert all(n == 0 for name, n in report.exported.items() if name.startswith("marts."))
    branches.delete_branch("idle")


def test_a_timezone_change_rebuilds_every_day_of_the_site(
        at_sequence: Sequence, monkeypatch: pytest.MonkeyPatch) -> None:
    branches = embedded_lakehouse().branches
    branches.create_branch("moved", "main")
    monkeypatch.setenv("CASCADE_TIMEZONE", "America/New_York")  # no data changed
    report = build_branch("moved", node_tasks=False)
    assert not report.full_refresh and report.touched_sites == [SITE.site_id]
    branches.create_branch("moved-full", "moved")
    build_branch("moved-full", node_tasks=False, full_refresh=True)
    assert_same_tables(tables_of(branches.catalog("moved")),
                       tables_of(branches.catalog("moved-full")))
    zones = read_table(branches.catalog("moved"), "silver.fct_cgm_reading").get_column(
        "timezone_name").unique().to_list()
    assert zones == ["America/New_York"]
    for name in ("moved", "moved-full"):
        branches.delete_branch(name)


def test_a_sensor_interval_change_rebuilds_every_day_of_the_site(
        at_sequence: Sequence) -> None:
    # three days become one reading a minute (a Libre after a Dexcom): the site's median
    # gap, and with it every day's expected readings, drops from 5 minutes to 1
    branches = embedded_lakehouse().branches
    branches.create_branch("libre", "main")
    catalog = branches.catalog("libre")
    layout, log_layout = raw_layout(RAW_TABLES["entries"]), AUDIT_TABLES["ingest_log"]
    days = [date(2024, 3, 27) + timedelta(days=i) for i in range(3)]
    for day in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        where = And(eq("site_id", SITE.site_id),
                    between("entry_at", start.isoformat(),
                            (start + timedelta(days=1)).isoformat()))
        rows = read_table(catalog, "raw.entries", where)
        sgv = rows.filter(pl.col("entry_type") == "sgv")
        extra = pl.concat([sgv.with_columns(
            (pl.col("entry_id") + f"-{k}").alias("entry_id"),
            (pl.col("entry_at") + timedelta(minutes=k)).alias("entry_at"),
            (pl.col("entry_epoch_ms") + k * 60_000).alias("entry_epoch_ms")) for k in (1, 2, 3, 4)])
        replace_rows(catalog, layout, pl.concat([rows, extra]), where)
        log_where = And(eq("site_id", SITE.site_id), And(
            eq("table_name", "entries"), eq("window_date", day.isoformat())))
        log = read_table(catalog, "audit.ingest_log", log_where)
        replace_rows(catalog, log_layout,
                     log.with_columns(pl.col("n_committed") + extra.height), log_where)
    record_changes(catalog, change_rows(SITE.site_id, ["entries"], list(days), "test",
                                        "test-libre"))
    report = build_branch("libre", node_tasks=False)
    assert not report.full_refresh
    record = builds_after(catalog, 0)[-1]
    assert record.rebuilt("marts.mrt_quality_coverage").ranges == (
        TouchedRange(SITE.site_id, True),)  # the whole site, for n_expected
    assert record.rebuilt("silver.fct_cgm_reading").sites() == {SITE.site_id}
    expected = read_table(catalog, "marts.mrt_quality_coverage").get_column("n_expected")
    assert set(expected.to_list()) <= {1380, 1440, 1500}  # one a minute, DST days included
    validate("libre")
    branches.create_branch("libre-full", "libre")
    build_branch("libre-full", node_tasks=False, full_refresh=True)
    assert_same_tables(tables_of(branches.catalog("libre")),
                       tables_of(branches.catalog("libre-full")))
    for name in ("libre", "libre-full"):
        branches.delete_branch(name)


def _retuned(store: str, factor: float) -> str:
    """A profile store (JSON text) whose every basal rate is ``factor`` times its own."""
    profiles = json.loads(store)
    for profile in profiles.values():
        for entry in profile.get("basal") or []:
            entry["value"] = float(entry["value"]) * factor
    return json.dumps(profiles)


def test_a_new_profile_version_rebuilds_basal_from_its_start_only(
        at_sequence: Sequence) -> None:
    # a retuned profile from 29 March 13:00 local, uploaded with the night's readings of
    # 1 April: the basal days from the 29th to the last are rebuilt, the glucose marts
    # only around the 1st
    branches = embedded_lakehouse().branches
    branches.create_branch("retuned", "main")
    catalog = branches.catalog("retuned")
    layout = raw_layout(RAW_TABLES["profile"])
    site = eq("site_id", SITE.site_id)
    profiles = read_table(catalog, "raw.profile", site)
    latest = profiles.sort("valid_from_at").tail(1)
    starts = datetime(2024, 3, 29, 12, 0, tzinfo=UTC)
    retuned = latest.with_columns(
        pl.lit("retuned-profile").alias("profile_id"),
        pl.lit(starts).cast(profiles.schema["valid_from_at"]).alias("valid_from_at"),
        pl.col("store").map_elements(lambda s: _retuned(s, 1.5), return_dtype=pl.String()))
    replace_rows(catalog, layout, pl.concat([profiles, retuned]), site)
    record_changes(catalog, change_rows(SITE.site_id, ["entries"], [date(2024, 4, 1)], "test",
                                        "test-retuned"))
    report = build_branch("retuned", node_tasks=False)
    assert not report.full_refresh
    record = builds_after(catalog, 0)[-1]
    basal = record.rebuilt("silver.int_basal_delivered_computed").ranges or ()
    assert [(r.whole_site, r.first_date) for r in basal] == [(False, starts.date())]
    assert record.rebuilt("marts.mrt_daily_treatments") == record.rebuilt(
        "silver.int_basal_delivered_computed")
    glucose = record.rebuilt("marts.mrt_daily_glycaemia").ranges or ()
    assert glucose and min(r.first_date or FIRST for r in glucose) > starts.date()

    def scheduled(ref: str) -> dict[date, float]:
        rows = read_table(branches.catalog(ref), "marts.mrt_daily_treatments", site)
        return dict(zip(rows.get_column("local_date").to_list(),
                        rows.get_column("scheduled_basal_u").to_list(), strict=True))

    before, after = scheduled("main"), scheduled("retuned")
    assert after[date(2024, 3, 28)] == before[date(2024, 3, 28)]
    assert after[date(2024, 3, 30)] == pytest.approx(1.5 * before[date(2024, 3, 30)])
    branches.create_branch("retuned-full", "retuned")
    build_branch("retuned-full", node_tasks=False, full_refresh=True)
    assert_same_tables(tables_of(branches.catalog("retuned")),
                       tables_of(branches.catalog("retuned-full")))
    for name in ("retuned", "retuned-full"):
        branches.delete_branch(name)
