"""Source faults against the real simulator over loopback: bounded retries, clear failures,
and no gap and no duplicate in what lands in Iceberg (compared with the simulator's data)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import NightscoutBadResponse, NightscoutUnavailable
from tasks.ingest import WINDOW_TABLES, ingest_window
from tasks.lakehouse import read_table
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext
from tasks.simulator import SimulatorServer, SiteConfig, expected_records
from tasks.tables import RAW_TABLES

NOW = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
SITE = SiteConfig("a", seed=3)
START = datetime(2024, 4, 5, tzinfo=UTC)
END = START + timedelta(days=1)

TRANSIENT: dict[str, dict[str, Any]] = {
    "500": {"status": 500},
    "503": {"status": 503},
    "429 with Retry-After": {"status": 429, "retry_after": 0.05},
    "timeout": {"delay_s": 1.5},
    "reset mid-body": {"reset": True},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=20) as server:
        yield server


@pytest.fixture
def branches(tmp_path: Path, sim: SimulatorServer) -> EmbeddedBranchCatalog:
    sim.clear_faults()
    catalog = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    catalog.create_branch("run-faults")
    return catalog


def _client(sim: SimulatorServer, waits: list[float], *, attempts: int = 4,
            page_size: int = 5000) -> NightscoutClient:
    return NightscoutClient(NightscoutSettings(sim.url_for("a"), "a"), page_size=page_size,
                            timeout_s=1.0, retry=RetryPolicy(attempts, base_s=0.01, max_s=1.0),
                            sleep=waits.append)


def _ctx(start: datetime = START, end: datetime = END) -> ShapeContext:
    return ShapeContext("a", "UTC", start, end, "faults", NOW)


def _source(table: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The simulator's own documents of ``table`` placed in ``[start, end)``."""
    docs = expected_records(SITE, start.date() - timedelta(days=1), end.date() + timedelta(days=1),
                            table)
    def at(d: dict[str, Any]) -> datetime:
        if table == "entries":
            return datetime.fromtimestamp(d["date"] / 1000, UTC)
        return datetime.fromisoformat(d["created_at"])
    return [d for d in docs if start <= at(d) < end]


def _assert_lands_exactly(branches: EmbeddedBranchCatalog, start: datetime = START,
                          end: datetime = END) -> int:
    """Every source document of the window is in raw once, or recorded as a duplicate or
    reject: no gap, no duplicate. Returns the number of documents compared."""
    catalog = branches.catalog("run-faults")
    audit = pl.concat([read_table(catalog, "audit.rejects"),
                       read_table(catalog, "audit.duplicates").drop("duplicate_of")])
    compared = 0
    for name in WINDOW_TABLES:
        table = RAW_TABLES[name]
        landed = read_table(catalog, table.identifier).get_column(table.id_column)
        set_aside = audit.filter(pl.col("table_name") == name).get_column("record_id")
        source = _source(name, start, end)
        assert landed.n_unique() == landed.len(), f"{name}: a row landed twice"
        assert landed.len() + set_aside.len() == len(source), f"{name}: gap or extra"
        assert set(landed) | set(set_aside) == {d["_id"] for d in source}
        assert landed.len() > 0.9 * len(source)
        compared += len(source)
    return compared


def test_clean_window_lands_exactly_the_simulators_documents(
    sim: SimulatorServer, branches: EmbeddedBranchCatalog,
) -> None:
    report = ingest_window(_client(sim, []), branches.catalog("run-faults"), _ctx())
    assert _assert_lands_exactly(branches) > 500
    assert report.tables["entries"].committed > 250


@pytest.mark.parametrize(("fault", "where"), [
    (name, "entries" if i % 2 else "devicestatus") for i, name in enumerate(sorted(TRANSIENT))])
def test_transient_fault_is_retried_and_nothing_is_lost(
    sim: SimulatorServer, branches: EmbeddedBranchCatalog, fault: str, where: str,
) -> None:
    waits: list[float] = []
    sim.inject(**TRANSIENT[fault], times=2, path=f"/a/api/v1/{where}")
    client = _client(sim, waits)
    ingest_window(client, branches.catalog("run-faults"), _ctx())
    assert len(waits) == 2  # two failures, two waits, then success
    if "retry_after" in TRANSIENT[fault]:
        assert waits == [0.05, 0.05]  # the server's Retry-After, not our backoff
    _assert_lands_exactly(branches)


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_persistent_fault_fails_clearly_after_bounded_attempts_and_commits_nothing(
    sim: SimulatorServer, branches: EmbeddedBranchCatalog, fault: str,
) -> None:
    catalog = branches.catalog("run-faults")
    ingest_window(_client(sim, []), catalog, _ctx())  # the window is already there
    before = branches.ref("run-faults").hash
    waits: list[float] = []
    sim.inject(**TRANSIENT[fault], times=3, path="/a/api/v1/devicestatus")
    with pytest.raises(NightscoutUnavailable,
                       match=r"after 3 attempts: check the site is up, then re-run; nothing was "
                             r"written"):
        ingest_window(_client(sim, waits, attempts=3), catalog, _ctx())
    assert len(waits) == 2  # three attempts, two waits between them, then a clear failure
    assert branches.ref("run-faults").hash == before  # raw and audit untouched
    _assert_lands_exactly(branches)


def test_truncated_body_is_not_retried_and_commits_nothing(
    sim: SimulatorServer, branches: EmbeddedBranchCatalog,
) -> None:
    before = branches.ref("run-faults").hash
    sim.inject(truncate=True, path="/a/api/v1/treatments")
    with pytest.raises(NightscoutBadResponse, match="nothing was written"):
        ingest_window(_client(sim, []), branches.catalog("run-faults"), _ctx())
    assert branches.ref("run-faults").hash == before


def test_a_day_with_more_than_count_records_pages_without_gap_or_duplicate(
    sim: SimulatorServer, branches: EmbeddedBranchCatalog,
) -> None:
    sim.request_log.clear()
    ingest_window(_client(sim, [], page_size=37), branches.catalog("run-faults"), _ctx())
    assert sum("entries" in p for p, _, _ in sim.request_log) >= 8
    _assert_lands_exactly(branches)


def test_a_server_that_ignores_count_still_lands_each_record_once(
    branches: EmbeddedBranchCatalog,
) -> None:
    docs = _source("entries", START, END)

    def too_many(request: httpx.Request) -> httpx.Response:  # honours the time filter only
        q = request.url.params
        if "entries" not in request.url.path:
            return httpx.Response(200, json=[])
        low = int(q["find[date][$gte]"])
        rows = [d for d in docs if d["date"] >= low and (
            d["date"] < int(q["find[date][$lt]"]) if "find[date][$lt]" in q
            else d["date"] <= int(q["find[date][$lte]"]))]
        return httpx.Response(200, json=rows)

    client = NightscoutClient(NightscoutSettings("https://ns.example.test", "a"), page_size=50,
                              transport=httpx.MockTransport(too_many), sleep=lambda s: None)
    catalog = branches.catalog("run-faults")
    report = ingest_window(client, catalog, _ctx(), tables=("entries",))
    landed = read_table(catalog, "raw.entries").get_column("entry_id")
    counts = report.tables["entries"]
    assert landed.n_unique() == landed.len() == counts.committed
    assert counts.committed + counts.duplicates + counts.rejected == len(docs)


def test_clock_skewed_treatments_land_once_in_their_utc_window(
    branches: EmbeddedBranchCatalog,
) -> None:
    # uploaders writing local offsets from -12 h to +14 h, around both window edges
    offsets = [-720, -300, 0, 60, 330, 840]
    moments = [START + timedelta(hours=h) for h in (-13, -1, 0.5, 12, 23.5, 24.5, 37)]
    docs = []
    for i, (moment, offset) in enumerate((m, o) for m in moments for o in offsets):
        moment += timedelta(minutes=i)  # distinct times: same type and time is a duplicate
        local = moment.astimezone(timezone(timedelta(minutes=offset)))
        docs.append({"_id": f"t{i:03d}", "eventType": "Note", "notes": str(offset),
                     "created_at": local.isoformat(timespec="milliseconds")})

    def by_text(request: httpx.Request) -> httpx.Response:  # Nightscout compares strings
        q = request.url.params
        if "treatments" not in request.url.path:
            return httpx.Response(200, json=[])
        low = q["find[created_at][$gte]"]
        if "find[created_at][$lt]" in q:
            high = q["find[created_at][$lt]"]
            return httpx.Response(200, json=[d for d in docs if low <= d["created_at"] < high])
        high = q["find[created_at][$lte]"]
        return httpx.Response(200, json=[d for d in docs if low <= d["created_at"] <= high])

    client = NightscoutClient(NightscoutSettings("https://ns.example.test", "a"),
                              transport=httpx.MockTransport(by_text), sleep=lambda s: None)
    catalog = branches.catalog("run-faults")
    for day in range(-1, 2):
        start = START + timedelta(days=day)
        ingest_window(client, catalog, _ctx(start, start + timedelta(days=1)),
                      tables=("treatments",))
    landed = read_table(catalog, "raw.treatments")
    inside = [d["_id"] for d in docs
              if START - timedelta(days=1) <= datetime.fromisoformat(d["created_at"])
              < START + timedelta(days=2)]
    assert len(inside) == 42
    assert sorted(landed.get_column("treatment_id")) == sorted(inside)  # each exactly once
    assert read_table(catalog, "audit.rejects").height == 0  # a neighbour's is not a reject
    days = landed.select(pl.col("treatment_at").dt.date().alias("d"), "created_at_raw")
    for row in days.iter_rows(named=True):
        assert row["d"] == datetime.fromisoformat(row["created_at_raw"]).astimezone(UTC).date()
