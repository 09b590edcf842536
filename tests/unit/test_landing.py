"""Landing a re-read window: removed rows audited, and a reconcile writes only changed days."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from pyiceberg.catalog import Catalog

from tasks.branches import EmbeddedBranchCatalog
from tasks.ingest import ingest_profiles, ingest_window
from tasks.lakehouse import read_table
from tasks.landing import DELETION_REASONS, commit_deletions, day_runs
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 3
T0 = int(START.timestamp() * 1000)
DAY_MS = 86_400_000

Doc = dict[str, object]


def _entries() -> list[Doc]:
    """Ten readings on each of three days: ids d<day>-<n>."""
    return [{"_id": f"d{d}-{n}", "type": "sgv", "sgv": 100 + n, "device": "g6",
             "date": T0 + d * DAY_MS + n * 300_000} for d in range(DAYS) for n in range(10)]


def _by_date(entries: list[Doc], request: httpx.Request) -> list[Doc]:
    """The entries a Nightscout server answers: inside ``find[date]``'s bounds."""
    q = request.url.params
    low = int(q["find[date][$gte]"])
    if "find[date][$lt]" in q:
        return [e for e in entries if low <= int(str(e["date"])) < int(q["find[date][$lt]"])]
    return [e for e in entries if low <= int(str(e["date"])) <= int(q["find[date][$lte]"])]


def _client(entries: list[Doc], profiles: list[Doc] | None = None) -> NightscoutClient:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if "profile" in path:
            return httpx.Response(200, json=profiles or [])
        return httpx.Response(200, json=_by_date(entries, request) if "entries" in path else [])

    return NightscoutClient(NightscoutSettings("https://ns.example.test", "a"),
                            transport=httpx.MockTransport(handler),
                            retry=RetryPolicy(attempts=1), sleep=lambda s: None)


def _ctx(run: str, days: int = DAYS) -> ShapeContext:
    return ShapeContext("a", "UTC", START, START + timedelta(days=days), run,
                        datetime(2024, 3, 10, tzinfo=UTC))


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse").catalog("main")


def _snapshots(catalog: Catalog, *names: str) -> dict[str, int | None]:
    out = {}
    for name in names:
        snapshot = catalog.load_table(name).current_snapshot()
        out[name] = snapshot.snapshot_id if snapshot else None
    return out


def test_rows_gone_from_the_source_are_removed_and_audited_with_why(catalog: Catalog) -> None:
    docs = _entries()
    ingest_window(_client(docs), catalog, _ctx("run1"))
    later = [d for d in docs if d["_id"] != "d1-4"]  # deleted for good
    later[3] = {**later[3], "isValid": False}  # d0-3: soft-deleted
    later[5] = {**later[5], "sgv": 5000}  # d0-5: now breaks the contract
    report = ingest_window(_client(later), catalog, _ctx("run2"),
                           max_reject_ratio=0.5)
    assert report.tables["entries"].removed == 3
    raw = read_table(catalog, "raw.entries")
    assert not {"d1-4", "d0-3", "d0-5"} & set(raw.get_column("entry_id").to_list())
    audit = read_table(catalog, "audit.deletions").sort("record_id")
    assert audit.select("record_id", "reason", "ingest_run_id").rows() == [
        ("d0-3", DELETION_REASONS["source_deleted"], "run2"),
        ("d0-5", DELETION_REASONS["rejected"], "run2"),
        ("d1-4", DELETION_REASONS["gone"], "run2"),
    ]
    payload = json.loads(audit.get_column("payload")[2])
    assert (payload["sgv_mg_dl"], payload["ingest_run_id"]) == (104, "run1")
    assert audit.get_column("local_date").to_list() == [date(2024, 3, 1), date(2024, 3, 1),
                                                        date(2024, 3, 2)]
    recorded = read_table(catalog, "audit.changed_partitions").filter(
        pl.col("run_id") == "run2")  # every day of the window, the removals' days among them
    assert set(recorded.get_column("utc_date")) == {date(2024, 3, d) for d in (1, 2, 3)}


def test_recording_the_same_removal_twice_in_one_run_keeps_one_row(catalog: Catalog) -> None:
    docs = _entries()
    ingest_window(_client(docs), catalog, _ctx("run1"))
    ingest_window(_client(docs[1:]), catalog, _ctx("run2"))
    audit = read_table(catalog, "audit.deletions")
    commit_deletions(catalog, audit, "a", "run2")  # a retried attempt  # a retried attempt
    assert read_table(catalog, "audit.deletions").height == 1


def test_a_reconcile_writes_only_the_days_that_changed(catalog: Catalog) -> None:
    docs = _entries()
    ingest_window(_client(docs), catalog, _ctx("run1"))
    changed = [d if d["_id"] != "d1-2" else {**d, "sgv": 222} for d in docs]
    report = ingest_window(_client(changed), catalog, _ctx("run2"),
                           only_changes=True)
    assert report.tables["entries"].days_landed == 1
    raw = read_table(catalog, "raw.entries")
    by_run = raw.group_by(pl.col("entry_at").dt.date().alias("day")).agg(
        pl.col("ingest_run_id").unique()).sort("day")
    assert by_run.rows() == [(date(2024, 3, 1), ["run1"]), (date(2024, 3, 2), ["run2"]),
                             (date(2024, 3, 3), ["run1"])]
    assert raw.filter(pl.col("entry_id") == "d1-2").get_column("sgv_mg_dl").item() == 222
    log = read_table(catalog, "audit.ingest_log").filter(
        pl.col("table_name") == "entries").sort("window_date")
    assert log.get_column("ingest_run_id").to_list() == ["run1", "run2", "run1"]
    recorded = read_table(catalog, "audit.changed_partitions")
    assert recorded.filter(pl.col("run_id") == "run1").height == 3 * 3  # tables x days
    assert recorded.filter(pl.col("run_id") == "run2").select(
        "table_name", "utc_date", "source").rows() == [
        ("entries", date(2024, 3, 2), "reconcile")]  # the one day that changed


def test_a_reconcile_that_finds_nothing_new_writes_nothing(catalog: Catalog) -> None:
    docs = _entries()
    ingest_window(_client(docs), catalog, _ctx("run1"))
    tables = ("raw.entries", "audit.ingest_log")
    before = _snapshots(catalog, *tables)
    report = ingest_window(_client(docs), catalog, _ctx("run2"),
                           only_changes=True)
    assert report.tables["entries"].days_landed == 0
    assert _snapshots(catalog, *tables) == before
    recorded = read_table(catalog, "audit.changed_partitions")
    assert set(recorded.get_column("run_id")) == {"run1"}  # nothing to rebuild


def test_a_reconcile_lands_a_day_whose_only_change_is_a_new_reject(catalog: Catalog) -> None:
    docs = _entries()
    ingest_window(_client(docs), catalog, _ctx("run1"))
    extra = {"_id": "bad", "type": "sgv", "sgv": 9000, "device": "g6",
             "date": T0 + 2 * DAY_MS + 7}
    report = ingest_window(_client([*docs, extra]), catalog, _ctx("run2"),
                           only_changes=True, max_reject_ratio=0.5)
    assert report.tables["entries"].days_landed == 1
    rejects = read_table(catalog, "audit.rejects")
    assert rejects.select("record_id", "window_date").rows() == [("bad", date(2024, 3, 3))]


def test_a_removed_profile_is_audited(catalog: Catalog) -> None:
    def profile(oid: str, start: str) -> Doc:
        return {"_id": oid, "defaultProfile": "Default", "startDate": start,
                "store": {"Default": {"timezone": "UTC", "dia": 4}}}

    first = [profile("p1", "2024-01-01T00:00:00Z"), profile("p2", "2024-02-01T00:00:00Z")]
    ingest_profiles(_client([], first), catalog, _ctx("run1"))
    ingest_profiles(_client([], first[1:]), catalog, _ctx("run2"))
    audit = read_table(catalog, "audit.deletions")
    assert audit.select("table_name", "record_id", "reason").rows() == [
        ("profile", "p1", DELETION_REASONS["gone"])]


def test_days_group_into_runs() -> None:
    days = {date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 5)}
    assert day_runs(days) == [(date(2024, 1, 1), date(2024, 1, 3)),
                              (date(2024, 1, 5), date(2024, 1, 6))]
