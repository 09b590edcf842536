"""ingest_window on a real embedded lakehouse, with the source faked at the HTTP layer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest

from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import ContractError
from tasks.ingest import ingest_window
from tasks.lakehouse import ensure_table, read_table, replace_rows, site_window
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext
from tasks.tables import TableLayout

START = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 3, 2, tzinfo=UTC)
T0 = int(START.timestamp() * 1000)


def _by_date(entries: list[dict[str, object]], request: httpx.Request) -> list[dict[str, object]]:
    """The entries a Nightscout server answers: inside ``find[date]``'s bounds."""
    q = request.url.params
    low = int(q["find[date][$gte]"])
    if "find[date][$lt]" in q:
        return [e for e in entries if low <= int(str(e["date"])) < int(q["find[date][$lt]"])]
    return [e for e in entries if low <= int(str(e["date"])) <= int(q["find[date][$lte]"])]


def _client(entries: list[dict[str, object]]) -> NightscoutClient:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = _by_date(entries, request) if "entries" in request.url.path else []
        return httpx.Response(200, json=answer)

    return NightscoutClient(NightscoutSettings("https://ns.example.test", "a"),
                            transport=httpx.MockTransport(handler),
                            retry=RetryPolicy(attempts=1), sleep=lambda s: None)


def _ctx() -> ShapeContext:
    return ShapeContext("a", "UTC", START, END, "run-x", datetime(2024, 3, 3, tzinfo=UTC))


def _entries(n_good: int, n_bad: int) -> list[dict[str, object]]:
    good = [{"_id": f"g{i}", "type": "sgv", "sgv": 100 + i % 50, "date": T0 + i * 300_000,
             "device": "g6"} for i in range(n_good)]
    bad = [{"_id": f"b{i}", "type": "sgv", "sgv": 5000, "date": T0 + i * 300_000 + 1,
            "device": "g6"} for i in range(n_bad)]
    return good + bad


@pytest.fixture
def branches(tmp_path: Path) -> EmbeddedBranchCatalog:
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")


def test_rejects_recorded_with_reason_and_run_id(branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    report = ingest_window(_client(_entries(100, 2)), catalog, _ctx())
    assert report.tables["entries"].committed == 100
    rejects = read_table(catalog, "audit.rejects")
    assert rejects.height == 2
    assert set(rejects.get_column("ingest_run_id")) == {"run-x"}
    assert all("less_than_or_equal_to(1000)" in r for r in rejects.get_column("reason"))
    assert '"sgv_mg_dl":5000' in rejects.get_column("payload")[0]


def test_reject_ratio_over_limit_fails_and_commits_no_rows(
    branches: EmbeddedBranchCatalog,
) -> None:
    catalog = branches.catalog("main")
    with pytest.raises(ContractError, match=r"10 of 100 rows \(10.0%\)"):
        ingest_window(_client(_entries(90, 10)), catalog, _ctx(), max_reject_ratio=0.05)
    assert not catalog.table_exists("raw.entries")
    assert read_table(catalog, "audit.rejects").height == 10  # kept for inspection


def test_reingest_replaces_rejects_of_the_window(branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    ingest_window(_client(_entries(100, 3)), catalog, _ctx())
    ingest_window(_client(_entries(100, 1)), catalog, _ctx())
    assert read_table(catalog, "audit.rejects").height == 1
    assert read_table(catalog, "raw.entries").height == 100


def test_ingest_log_has_one_row_per_table_and_day(branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    ingest_window(_client(_entries(10, 1)), catalog, _ctx(), max_reject_ratio=0.5)
    log = read_table(catalog, "audit.ingest_log").filter(pl.col("table_name") == "entries")
    row = log.row(0, named=True)
    assert (log.height, row["n_fetched"], row["n_rejected"], row["n_committed"]) == (1, 11, 1, 10)


def test_audit_rows_of_a_day_are_replaced_whatever_window_wrote_them(
    branches: EmbeddedBranchCatalog,
) -> None:
    # a 2-day window, then its second day again alone (a nightly run re-reading yesterday):
    # the day's rejects are replaced, not kept twice under the first window's start
    catalog = branches.catalog("main")
    two_days = ShapeContext("a", "UTC", START, datetime(2024, 3, 3, tzinfo=UTC), "run-x",
                            datetime(2024, 3, 4, tzinfo=UTC))
    second = [{"_id": "bad-2", "type": "sgv", "sgv": 5000, "date": T0 + 86_400_000 + 60_000,
               "device": "g6"}]
    ingest_window(_client(_entries(100, 1) + second), catalog, two_days, max_reject_ratio=1.0)
    again = ShapeContext("a", "UTC", END, datetime(2024, 3, 3, tzinfo=UTC), "run-y",
                         datetime(2024, 3, 4, tzinfo=UTC))
    ingest_window(_client(second), catalog, again, max_reject_ratio=1.0)
    rejects = read_table(catalog, "audit.rejects").sort("record_id")
    assert rejects.select("record_id", "window_date", "ingest_run_id").rows() == [
        ("b0", START.date(), "run-x"), ("bad-2", END.date(), "run-y")]


def test_schema_evolves_additively(branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    v1 = TableLayout("raw.t", pl.Schema({"site_id": pl.String(), "a": pl.Int64()}), None, "")
    replace_rows(catalog, v1, pl.DataFrame({"site_id": ["a"], "a": [1]}), site_window(v1, "a"))
    v2 = TableLayout("raw.t", pl.Schema({"site_id": pl.String(), "a": pl.Int64(),
                                         "b": pl.String()}), None, "")
    ensure_table(catalog, v2)
    replace_rows(catalog, v2, pl.DataFrame({"site_id": ["b"], "a": [2], "b": ["x"]}),
                 site_window(v2, "b"))
    frame = read_table(catalog, "raw.t").sort("a")
    assert frame.columns == ["site_id", "a", "b"]
    assert frame.rows() == [("a", 1, None), ("b", 2, "x")]


def test_treatment_with_local_offset_lands_in_its_utc_window(
    branches: EmbeddedBranchCatalog,
) -> None:
    # text sorts on 2024-03-01 but the UTC time is 2024-03-02 05:30: belongs to the next day
    late = {"_id": "t1", "eventType": "Note", "created_at": "2024-03-01T23:30:00-06:00"}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        q = request.url.params
        if "treatments" not in request.url.path:
            return httpx.Response(200, json=[])
        high = q.get("find[created_at][$lt]") or q["find[created_at][$lte]"]
        inside = q["find[created_at][$gte]"] <= late["created_at"] <= high
        return httpx.Response(200, json=[late] if inside else [])

    client = NightscoutClient(NightscoutSettings("https://ns.example.test", "a"),
                              transport=httpx.MockTransport(handler),
                              retry=RetryPolicy(attempts=1), sleep=lambda s: None)
    catalog = branches.catalog("main")
    day_one = ingest_window(client, catalog, _ctx())
    nxt = ShapeContext("a", "UTC", END, datetime(2024, 3, 3, tzinfo=UTC), "run-x",
                       datetime(2024, 3, 3, tzinfo=UTC))
    day_two = ingest_window(client, catalog, nxt)
    assert day_one.tables["treatments"].committed == 0
    assert day_one.tables["treatments"].rejected == 0  # not lost, not rejected: next window's
    assert day_two.tables["treatments"].committed == 1
    assert read_table(catalog, "raw.treatments").get_column("treatment_id").to_list() == ["t1"]


def test_documents_deleted_at_the_source_are_counted_not_landed(
    branches: EmbeddedBranchCatalog,
) -> None:
    docs = _entries(5, 0)
    docs[1]["isValid"] = False  # Nightscout's soft delete, still returned by v1 find
    docs[2]["isValid"] = 0  # only false is a deletion, on the server too
    docs[3]["isValid"] = "true"
    catalog = branches.catalog("main")
    report = ingest_window(_client(docs), catalog, _ctx())
    counts = report.tables["entries"]
    assert (counts.fetched, counts.committed, counts.deleted) == (5, 4, 1)
    assert "g1" not in read_table(catalog, "raw.entries").get_column("entry_id").to_list()
    log = read_table(catalog, "audit.ingest_log").filter(pl.col("table_name") == "entries")
    assert log.select("n_fetched", "n_committed", "n_deleted").row(0) == (5, 4, 1)
    assert not catalog.table_exists("audit.rejects") or read_table(
        catalog, "audit.rejects").height == 0


def test_reingest_removes_a_document_deleted_at_the_source_since(
    branches: EmbeddedBranchCatalog,
) -> None:
    catalog = branches.catalog("main")
    docs = _entries(5, 0)
    ingest_window(_client(docs), catalog, _ctx())  # landed while still live
    docs[3]["isValid"] = False
    ingest_window(_client(docs), catalog, _ctx())
    ids = read_table(catalog, "raw.entries").get_column("entry_id").to_list()
    assert sorted(ids) == ["g0", "g1", "g2", "g4"]
