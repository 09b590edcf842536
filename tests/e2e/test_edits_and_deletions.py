"""Edits and deletions reach the lake (issue 20), on the embedded profile.

After a backfill, a treatment from 60 days ago is edited and a reading from 30 days ago
soft-deleted through API v3, a late reading for 10 days ago is uploaded through v1 and a v1
document from 5 days ago is deleted for good. A ``daily`` killed after landing them on its
branch loses none: the next ``daily`` lands all four and records the (site, table, UTC day)
partitions they changed; its incremental build (no ``full_refresh``) changes the marts of
exactly those days, equal to a full rebuild's, and ``audit.deletions`` lists the removed
documents.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import polars as pl
import pytest
from prefect.settings import PREFECT_API_URL
from pyiceberg.expressions import EqualTo, Reference
from pyiceberg.expressions.literals import literal

from flows.build_branch import build_branch
from flows.pipeline import backfill, daily
from flows.reconcile import reconcile
from tasks.build_log import latest_build
from tasks.lakehouse import read_table
from tasks.landing import DELETION_REASONS
from tasks.profile import current_profile, embedded_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig

from .conftest import NOW

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECRET = "edits-secret-value"
TOKEN = "cascade-reader-5e1f0a"
SITE = SiteConfig(site_id="v3", seed=13, timezone="Europe/London", api_secret=SECRET,
                  token=TOKEN)
TODAY = NOW.date()
ZONE = ZoneInfo(SITE.timezone)
PER_DAY_MARTS = ("marts.mrt_daily_glycaemia", "marts.mrt_quality_coverage")
LINEAGE = ("ingest_run_id", "ingested_at")


@pytest.fixture(scope="module")
def source() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=90) as server:
        yield server


@pytest.fixture
def env(source: SimulatorServer, cascade_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> SimulatorServer:
    for name, value in {"NIGHTSCOUT_URL": source.url_for("v3"), "NIGHTSCOUT_API_SECRET": SECRET,
                        "NIGHTSCOUT_TOKEN": TOKEN, "NIGHTSCOUT_SITE_ID": "v3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CASCADE_TIMEZONE", raising=False)
    monkeypatch.delenv("NIGHTSCOUT_BLOCK", raising=False)
    return source


def _utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def _local_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(ZONE).date()


def _treatment_day(doc: dict[str, Any]) -> date:
    return datetime.fromisoformat(doc["created_at"]).astimezone(ZONE).date()


def plain_reading(sim: SimulatorServer, site_id: str, day: date, start: int) -> dict[str, Any]:
    """A glucose reading of ``day`` from position ``start`` on, alone at its time (removing
    one of two copies of a reading would change no mart)."""
    docs = sim.documents(site_id, "entries", day)
    times = [d["date"] for d in docs]
    return next(d for d in docs[start:] if d.get("type") == "sgv" and times.count(d["date"]) == 1
                and isinstance(d.get("sgv"), int) and d["sgv"] >= 40)


def change_the_source(sim: SimulatorServer, site_id: str) -> dict[str, Any]:
    """The four changes of the issue, over HTTP as uploaders make them; what changed."""
    http = httpx.Client(base_url=sim.url_for(site_id), timeout=30)
    jwt = http.get(f"/api/v2/authorization/request/{TOKEN}").json()["token"]
    v3 = {"Authorization": f"Bearer {jwt}"}
    v1 = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
    meals = [t for t in sim.documents(site_id, "treatments", TODAY - timedelta(days=60))
             if t.get("carbs") not in (None, "")]
    meal = meals[0]
    assert http.patch(f"/api/v3/treatments/{meal['_id']}", headers=v3,
                      json={"carbs": float(meal["carbs"]) + 17}).status_code == 200
    soft = plain_reading(sim, site_id, TODAY - timedelta(days=30), 40)
    assert http.delete(f"/api/v3/entries/{soft['_id']}", headers=v3).status_code == 200
    near = plain_reading(sim, site_id, TODAY - timedelta(days=10), 60)
    late = {"type": "sgv", "sgv": 131, "date": near["date"] + 150_000,
            "dateString": "", "device": "xDrip-late", "direction": "Flat"}
    uploaded = http.post("/api/v1/entries.json", headers=v1, json=[late])
    assert uploaded.status_code == 200
    gone = plain_reading(sim, site_id, TODAY - timedelta(days=5), 100)
    assert http.delete(f"/api/v1/entries/{gone['_id']}", headers=v1).status_code == 200
    http.close()
    return {"meal": meal, "soft": soft, "late": uploaded.json()[0], "gone": gone,
            "reading_days": {_local_day(d["date"]) for d in (soft, near, gone)},
            "meal_day": _treatment_day(meal),
            "partitions": {("entries", _utc_day(d["date"])) for d in (soft, late, gone)}
            | {("treatments", datetime.fromisoformat(meal["created_at"]).astimezone(UTC).date())}}


def daily_killed_mid_build(env: dict[str, str], fault: str) -> subprocess.CompletedProcess[str]:
    """``python -m flows daily`` in its own process (``env``), killed (SIGKILL) at ``fault``."""
    env = {**{k: v for k, v in os.environ.items() if k != "CASCADE_FAULT"}, **env,
           "CASCADE_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "flows", "daily",
                           str(TODAY - timedelta(days=1)), "--plain-dbt"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
                          check=False)


def _per_day_marts(catalog: Any) -> list[str]:
    """Every mart with one row per site and local day."""
    names = [".".join(t) for t in catalog.list_tables("marts")]
    return sorted(n for n in names
                  if "local_date" in catalog.load_table(n).schema().column_names)


def per_day(catalog: Any, name: str, site_id: str) -> pl.DataFrame:
    """A per-day table's rows of one site, without lineage columns."""
    frame = read_table(catalog, name, EqualTo(term=Reference("site_id"), value=literal(site_id)))
    return frame.drop([c for c in frame.columns if c in LINEAGE]).sort("local_date")


def changed_days(before: pl.DataFrame, after: pl.DataFrame) -> set[date]:
    """Local days whose rows differ (floats to 9 decimals: parallel sums vary in the last
    bits)."""
    def rounded(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.col(pl.Float32, pl.Float64).round(9))

    before, after = rounded(before), rounded(after)
    columns = before.columns
    differ = pl.concat([before.join(after, on=columns, how="anti", nulls_equal=True),
                        after.join(before, on=columns, how="anti", nulls_equal=True)])
    return set(differ.get_column("local_date").to_list())


def close(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    """Equal frames; floats within 1e-9 relative (parallel sums vary in the last bits)."""
    if a.columns != b.columns or a.height != b.height:
        return False
    for column in a.columns:
        x, y = a.get_column(column), b.get_column(column)
        if x.dtype.is_float():
            same = ((x - y).abs() <= 1e-9 * y.abs() + 1e-12) | (x.is_null() & y.is_null())
            if not same.all():
                return False
        elif not x.equals(y):
            return False
    return True


def edits_reach_the_marts(sim: SimulatorServer, site_id: str, child_env: dict[str, str],
                          fault: str) -> None:
    """The issue's check on the active profile: backfill, four changes, a daily killed at
    ``fault`` after landing them on its branch, a daily that promotes them; then raw, the
    deletion audit, the cursor and the marts (exactly those days changed, by an incremental
    build that rebuilt the partitions the changes were recorded under; equal to a full
    rebuild)."""
    branches = current_profile().lakehouse.branches
    site = EqualTo(term=Reference("site_id"), value=literal(site_id))
    backfill(start=TODAY - timedelta(days=70), end=TODAY, chunk_days=36, dbt_node_tasks=False)
    main = branches.catalog("main")
    cursors = read_table(main, "audit.change_cursor", site).sort("collection")
    assert cursors.get_column("collection").to_list() == ["devicestatus", "entries", "profile",
                                                          "treatments"]
    marts_before = {m: per_day(main, m, site_id) for m in _per_day_marts(main)}
    carbs_before = per_day(main, "silver.fct_carb_event", site_id)
    main_before = branches.ref("main").hash

    changed = change_the_source(sim, site_id)

    killed = daily_killed_mid_build(child_env, fault)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert branches.ref("main").hash == main_before  # nothing reached main
    assert read_table(branches.catalog("main"), "audit.change_cursor", site).sort(
        "collection").equals(cursors)

    result = daily(day=TODAY - timedelta(days=1), dbt_node_tasks=False)  # no full_refresh
    changes = result.ingest.changes
    assert changes is not None
    assert (changes.table_days_landed, changes.rows_removed) == (4, 2)
    main = branches.catalog("main")
    # the old days were recorded as changed, and the incremental build rebuilt them
    recorded = read_table(main, "audit.changed_partitions", site).filter(
        (pl.col("run_id") == result.ingest.run_id) & (pl.col("source") == "reconcile"))
    assert set(recorded.select("table_name", "utc_date").rows()) == changed["partitions"]
    assert recorded.get_column("build_seq").null_count() == 0  # consumed by the daily's build
    build = latest_build(main)
    assert build is not None and not build.full_refresh

    ids = set(read_table(main, "raw.entries", site).get_column("entry_id").to_list())
    assert changed["late"]["_id"] in ids
    assert not {changed["soft"]["_id"], changed["gone"]["_id"]} & ids
    treatments = read_table(main, "raw.treatments", site)
    meal = treatments.filter(pl.col("treatment_id") == changed["meal"]["_id"])
    assert meal.get_column("carbs_g").item() == float(changed["meal"]["carbs"]) + 17

    deletions = read_table(main, "audit.deletions", site)
    assert dict(deletions.select("record_id", "reason").rows()) == {
        changed["soft"]["_id"]: DELETION_REASONS["source_deleted"],
        changed["gone"]["_id"]: DELETION_REASONS["gone"]}
    assert deletions.get_column("ingest_run_id").unique().to_list() == [result.ingest.run_id]

    for name, before in marts_before.items():  # glycaemia and coverage: the readings' days
        days = changed_days(before, per_day(main, name, site_id))
        if name in PER_DAY_MARTS:
            assert days == changed["reading_days"], name
        else:  # any other per-day mart (treatments, say): no day but those changed
            assert days <= changed["reading_days"] | {changed["meal_day"]}, name
    assert changed_days(carbs_before, per_day(main, "silver.fct_carb_event", site_id)) == {
        changed["meal_day"]}
    advanced = read_table(main, "audit.change_cursor", site).sort("collection")
    assert (advanced.get_column("cursor_ms") >= cursors.get_column("cursor_ms")).all()
    assert int(advanced.get_column("cursor_ms").max()) > int(  # type: ignore[arg-type]
        cursors.get_column("cursor_ms").max())  # type: ignore[arg-type]

    # the marts equal a full rebuild of the same raw data
    rebuild = f"rebuild-{site_id}"
    branches.create_branch(rebuild, from_ref="main")
    try:
        build_branch(rebuild, node_tasks=False, full_refresh=True)
        rebuilt = branches.catalog(rebuild)
        for name in (*PER_DAY_MARTS, "marts.mrt_agp_hourly"):
            ours, theirs = (read_table(c, name, site) for c in (main, rebuilt))
            key = [c for c in ("local_date", "local_hour") if c in ours.columns]
            assert close(ours.drop(LINEAGE, strict=False).sort(key),
                         theirs.drop(LINEAGE, strict=False).sort(key)), name
    finally:
        branches.delete_branch(rebuild)


def test_edits_and_deletions_of_any_age_reach_the_marts(env: SimulatorServer,
                                                       cascade_home: Path) -> None:
    child = {"CASCADE_HOME": str(cascade_home), "CASCADE_PROFILE": "embedded",
             "NIGHTSCOUT_URL": env.url_for("v3"), "NIGHTSCOUT_API_SECRET": SECRET,
             "NIGHTSCOUT_TOKEN": TOKEN, "NIGHTSCOUT_SITE_ID": "v3",
             "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    edits_reach_the_marts(env, "v3", child, "build-mid-export")


def test_without_a_token_old_changes_wait_for_a_reconcile_of_their_range(
    env: SimulatorServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NIGHTSCOUT_TOKEN")  # an API secret alone does not open API v3
    start, end = TODAY - timedelta(days=48), TODAY - timedelta(days=40)
    backfill(start=start, end=end, dbt_node_tasks=False)
    assert not embedded_lakehouse().branches.catalog("main").table_exists("audit.change_cursor")
    gone = plain_reading(env, "v3", TODAY - timedelta(days=44), 20)
    edited = plain_reading(env, "v3", TODAY - timedelta(days=42), 20)
    env.changes("v3").delete_permanently("entries", gone)
    env.changes("v3").edit("entries", edited, {"sgv": 333}, via="v1")  # no srvModified

    result = daily(day=end + timedelta(days=2), dbt_node_tasks=False, reconcile_days=2)
    changes = result.ingest.changes
    assert changes is not None and changes.feeds["v3"].startswith("no feed:")
    main = embedded_lakehouse().branches.catalog("main")
    assert gone["_id"] in set(read_table(main, "raw.entries").get_column("entry_id"))

    reconciled = reconcile(start=start, end=end, dbt_node_tasks=False)
    landed = reconciled.ingest.changes
    assert landed is not None
    assert (landed.table_days_landed, landed.rows_removed) == (2, 1)
    main = embedded_lakehouse().branches.catalog("main")
    entries = read_table(main, "raw.entries")
    assert gone["_id"] not in set(entries.get_column("entry_id"))
    assert entries.filter(pl.col("entry_id") == edited["_id"]).get_column("sgv_mg_dl").item() \
        == 333
    deletions = read_table(main, "audit.deletions")
    assert deletions.select("record_id", "reason").rows() == [(gone["_id"],
                                                               DELETION_REASONS["gone"])]
