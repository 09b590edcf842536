"""Embedded flow runs: backfill and ingest_day against the simulator, on real Iceberg."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from flows.ingest_day import ingest_day
from flows.pipeline import backfill
from tasks.errors import CascadeError, NightscoutBadResponse
from tasks.lakehouse import read_table
from tasks.profile import embedded_lakehouse
from tasks.simulator import SimulatorServer, expected_records
from tests._iceberg import between
from tests.e2e.conftest import SITE

pytestmark = pytest.mark.e2e


def _raw(branch: str, table: str) -> pl.DataFrame:
    return read_table(embedded_lakehouse().branches.catalog(branch), f"raw.{table}")


def test_concurrent_backfill_of_30_days_loses_no_rows(site_env: SimulatorServer) -> None:
    start, end = date(2024, 2, 1), date(2024, 3, 1)
    result = backfill(start=start, end=end, chunk_days=3, max_concurrency=4,
                      promote_to_main=False)
    branch = result.branch
    for table in ("entries", "treatments", "devicestatus"):
        served = expected_records(SITE, start, end + timedelta(days=1), table)
        landed = _raw(branch, table)
        id_col = {"entries": "entry_id", "treatments": "treatment_id",
                  "devicestatus": "devicestatus_id"}[table]
        counts = result.ingest.tables[table]
        assert landed.height == counts.committed > 0
        assert landed.get_column(id_col).n_unique() == landed.height  # no duplicates
        assert counts.committed + counts.duplicates + counts.rejected == len(served)
        assert set(landed.get_column(id_col)) <= {d["_id"] for d in served}
    # one CGM reading per device and moment: same-device, same-time copies under other ids
    # (uploads repeated by a phone) went to audit.duplicates
    sgv = _raw(branch, "entries").filter(pl.col("entry_type") == "sgv")
    assert sgv.select("site_id", "device", "entry_at").is_duplicated().sum() == 0
    assert result.ingest.tables["entries"].duplicates > 0  # the simulator serves such copies
    log = read_table(embedded_lakehouse().branches.catalog(branch), "audit.ingest_log")
    assert log.filter(pl.col("table_name") == "entries").height == 30  # one row per UTC day


def test_backfill_leaves_main_untouched(site_env: SimulatorServer) -> None:
    branches = embedded_lakehouse().branches
    before = branches.ref("main").hash
    result = backfill(start=date(2024, 3, 1), end=date(2024, 3, 2), promote_to_main=False)
    assert branches.ref("main").hash == before
    assert "raw.entries" in [c.table for c in branches.diff(result.branch)]


def test_reingest_of_a_day_leaves_row_counts_unchanged(site_env: SimulatorServer) -> None:
    first = ingest_day(day=date(2024, 3, 5), branch="dev")
    counts = {t: _raw("dev", t).height for t in ("entries", "treatments", "devicestatus")}
    second = ingest_day(day=date(2024, 3, 5), branch="dev")
    again = {t: _raw("dev", t).height for t in ("entries", "treatments", "devicestatus")}
    assert counts == again and counts["entries"] == first.tables["entries"].committed
    assert second.committed == first.committed


def test_reingest_replaces_only_its_own_day(site_env: SimulatorServer) -> None:
    ingest_day(day=date(2024, 3, 5), branch="dev")
    ingest_day(day=date(2024, 3, 6), branch="dev")
    both = _raw("dev", "entries").height
    ingest_day(day=date(2024, 3, 6), branch="dev")
    assert _raw("dev", "entries").height == both
    days = _raw("dev", "entries").get_column("entry_at").dt.date().unique().sort().to_list()
    assert days == [date(2024, 3, 5), date(2024, 3, 6)]


def test_malformed_json_fails_clearly_and_writes_nothing(site_env: SimulatorServer) -> None:
    ingest_day(day=date(2024, 3, 5), branch="dev")
    before = _raw("dev", "entries").height
    site_env.inject(truncate=True, path="/api/v1/entries", times=10)
    with pytest.raises(NightscoutBadResponse, match="not valid JSON"):
        ingest_day(day=date(2024, 3, 6), branch="dev")
    site_env.clear_faults()
    entries = _raw("dev", "entries")
    assert entries.height == before
    assert entries.get_column("entry_at").dt.date().unique().to_list() == [date(2024, 3, 5)]


def test_html_error_page_fails_clearly(site_env: SimulatorServer) -> None:
    site_env.inject(200, body="<html><body>Application error</body></html>",
                    content_type="text/html", times=10)
    with pytest.raises(CascadeError, match="not a JSON array"):
        ingest_day(day=date(2024, 3, 7), branch="dev")
    site_env.clear_faults()


def test_transient_server_errors_are_retried(site_env: SimulatorServer) -> None:
    site_env.inject(503, path="/api/v1/entries", times=2)
    result = ingest_day(day=date(2024, 3, 8), branch="dev")
    assert result.tables["entries"].committed > 250


def test_wrong_secret_fails_fast(
    site_env: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSCOUT_API_SECRET", "not-the-secret")
    with pytest.raises(CascadeError, match="answered 401"):
        ingest_day(day=date(2024, 3, 8), branch="dev")


def test_window_rows_stay_inside_their_partition(site_env: SimulatorServer) -> None:
    ingest_day(day=date(2024, 3, 31), branch="dev")  # DST change day in Europe/London
    catalog = embedded_lakehouse().branches.catalog("dev")
    table = catalog.load_table("raw.entries")
    inside = between("entry_at", "2024-03-31T00:00:00+00:00", "2024-04-01T00:00:00+00:00")
    assert table.scan(row_filter=inside).to_arrow().num_rows == table.scan().to_arrow().num_rows
    local = _raw("dev", "entries").select(pl.col("local_at").dt.hour()).to_series()
    assert 1 not in set(local.to_list())  # 01:00–02:00 local does not exist that day
