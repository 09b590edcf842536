"""Shaping: typed columns, UTC and local time, dedup, extra fields kept, rejects recorded."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import polars as pl
import pytest

from tasks.contracts import check, enforce_reject_ratio
from tasks.errors import ContractError
from tasks.shaping import ShapeContext, profile_timezone, shape
from tasks.tables import raw_table
from tests.conftest import load_sample

CTX = ShapeContext("a", "America/Los_Angeles", datetime(2014, 1, 1, tzinfo=UTC),
                   datetime(2017, 1, 1, tzinfo=UTC), "run1", datetime(2024, 1, 1, tzinfo=UTC))


def _checked(table: str, docs: pl.DataFrame,
             ctx: ShapeContext = CTX) -> tuple[pl.DataFrame, pl.DataFrame]:
    shaped = shape(table, docs, ctx)
    c = check(table, shaped.rows, ctx)
    return c.valid, pl.concat([shaped.rejects, c.rejects])


def test_real_dexcom_sample_with_string_sgv_and_error_code() -> None:
    valid, rejects = _checked("entries", load_sample("cgm-remote-monitor_example.json"))
    assert valid.height == 30 and rejects.height == 0
    assert valid.schema == raw_table("entries").polars_schema
    errors = valid.filter(pl.col("is_error_code"))
    assert errors.get_column("sgv_mg_dl").unique().to_list() == [5]
    assert set(errors.get_column("direction").to_list()) == {"NOT COMPUTABLE"}


def test_real_openaps_entries_keep_unmodelled_fields_in_extra() -> None:
    valid, _ = _checked("entries", load_sample("cgm-remote-monitor_glucose-zoned-merge.json"))
    extra = json.loads(valid.sort("entry_at").get_column("extra")[0])
    assert extra["trend_arrow"] == "FLAT"
    assert extra["glucose"] == 87
    assert "sgv" not in extra


def test_utc_from_epoch_ms_and_local_time_from_site_timezone() -> None:
    valid, _ = _checked("entries", load_sample("cgm-remote-monitor_glucose-zoned-merge.json"))
    first = valid.sort("entry_at").row(0, named=True)
    assert first["entry_at"] == datetime(2016, 10, 23, 18, 18, 37, tzinfo=UTC)
    assert first["local_at"] == datetime(2016, 10, 23, 11, 18, 37)
    assert first["local_date"] == date(2016, 10, 23)
    assert first["utc_offset_min"] == -420


def test_real_calibration_record_shaped() -> None:
    valid, _ = _checked("entries", load_sample("cgm-remote-monitor_cal-zoned.json"))
    row = valid.row(0, named=True)
    assert row["entry_type"] == "cal" and row["slope"] == pytest.approx(841.6474113376482)
    assert row["entry_epoch_ms"] == 1477248820000


def test_real_treatments_with_numbers_as_strings() -> None:
    valid, _ = _checked("treatments", load_sample("cgm-remote-monitor_pump-history-formatted.json"))
    assert valid.height == 2
    assert set(valid.get_column("event_type")) == {"Temp Basal"}
    assert sorted(valid.get_column("duration_min").to_list()) == [30.0, 30.0]
    assert sorted(valid.get_column("absolute_u_per_h").to_list()) == [0.675, 1.425]


def test_real_devicestatus_nested_fields_extracted() -> None:
    valid, _ = _checked("devicestatus", load_sample("cgm-remote-monitor_openaps-status.json"))
    row = valid.row(0, named=True)
    assert row["pump_reservoir_u"] == pytest.approx(124.425)
    assert row["iob_u"] == pytest.approx(0.569)
    assert row["cob_g"] == 16
    assert row["uploader_battery_pct"] == 84
    assert json.loads(row["payload"])["openaps"]["suggested"]["eventualBG"] == 82


def test_real_profile_timezone_from_default_profile() -> None:
    shaped = shape("profile", load_sample("cgm-remote-monitor_ns-profile.json"), CTX)
    assert profile_timezone(shaped.rows) == "America/Los_Angeles"
    assert shaped.rows.get_column("dia_h").to_list() == [3.0]


def _docs(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, infer_schema_length=None)


T = 1_420_000_000_000  # 2014-12-31


def test_duplicate_ids_removed_and_recorded() -> None:
    docs = _docs([{"_id": "x", "type": "sgv", "sgv": 100, "date": T, "device": "g6"},
                  {"_id": "x", "type": "sgv", "sgv": 101, "date": T, "device": "g6"}])
    shaped = shape("entries", docs, CTX)
    assert shaped.rows.height == 1
    assert shaped.duplicates.get_column("reason").to_list() == ["same_id"]
    assert json.loads(shaped.duplicates.get_column("payload")[0])["sgv"] == 101


def test_same_device_and_time_removed_keeping_smallest_id() -> None:
    docs = _docs([{"_id": "b", "type": "sgv", "sgv": 100, "date": T, "device": "g6"},
                  {"_id": "a", "type": "sgv", "sgv": 100, "date": T, "device": "g6"},
                  {"_id": "c", "type": "sgv", "sgv": 100, "date": T, "device": "other"}])
    shaped = shape("entries", docs, CTX)
    assert sorted(shaped.rows.get_column("entry_id").to_list()) == ["a", "c"]
    dup = shaped.duplicates.row(0, named=True)
    assert (dup["record_id"], dup["duplicate_of"], dup["reason"]) == ("b", "a", "same_device_time")


def test_low_and_error_codes_kept_and_flagged() -> None:
    docs = _docs([{"_id": "1", "type": "sgv", "sgv": 39, "date": T, "device": "g6"},
                  {"_id": "2", "type": "sgv", "sgv": 12, "date": T + 300_000, "device": "g6"},
                  {"_id": "3", "type": "sgv", "sgv": 40, "date": T + 600_000, "device": "g6"}])
    valid, rejects = _checked("entries", docs)
    assert rejects.height == 0
    flags = valid.sort("entry_id").select("is_low", "is_error_code").rows()
    assert flags == [(True, False), (False, True), (False, False)]


def test_contract_breaches_go_to_rejects_with_reason() -> None:
    docs = _docs([{"_id": "ok", "type": "sgv", "sgv": 120, "date": T, "device": "g6"},
                  {"_id": "huge", "type": "sgv", "sgv": 90000, "date": T + 1, "device": "g6"},
                  {"_id": "text", "type": "sgv", "sgv": "high", "date": T + 2, "device": "g6"}])
    valid, rejects = _checked("entries", docs)
    assert valid.get_column("entry_id").to_list() == ["ok"]
    reasons = dict(rejects.select("record_id", "reason").rows())
    assert "less_than_or_equal_to(1000)" in reasons["huge"]
    assert "sgv entries carry a glucose value" in reasons["text"]
    payloads = dict(rejects.select("record_id", "payload").rows())
    assert json.loads(json.loads(payloads["text"])["extra"]) == {"_uncast": {"sgv": "high"}}
    assert rejects.get_column("ingest_run_id").to_list() == ["run1", "run1"]


def test_rows_without_time_or_outside_window_rejected_not_dropped() -> None:
    docs = _docs([{"_id": "none", "type": "sgv", "sgv": 120, "device": "g6"},
                  {"_id": "1970", "type": "sgv", "sgv": 120, "date": 5, "device": "g6"},
                  {"_id": "later", "type": "sgv", "sgv": 120, "date": 1_600_000_000_000,
                   "device": "g6"}])
    shaped = shape("entries", docs, CTX)
    assert shaped.rows.height == 0
    reasons = dict(shaped.rejects.select("record_id", "reason").rows())
    assert "no usable time" in reasons["none"] and "no usable time" in reasons["1970"]
    assert "outside the requested window" in reasons["later"]


def test_future_dated_rows_rejected() -> None:
    ctx = ShapeContext("a", "UTC", datetime(2014, 1, 1, tzinfo=UTC),
                       datetime(2030, 1, 1, tzinfo=UTC), "run1", datetime(2024, 1, 1, tzinfo=UTC))
    docs = _docs([{"_id": "f", "type": "sgv", "sgv": 120, "date": 1_800_000_000_000,
                   "device": "g"}])
    valid, rejects = _checked("entries", docs, ctx)
    assert valid.height == 0 and "after ingestion" in rejects.get_column("reason")[0]


def test_reject_ratio_over_limit_raises() -> None:
    enforce_reject_ratio("raw.entries", "2024-01-01", 100, 5, 0.05)
    with pytest.raises(ContractError, match="6 of 100"):
        enforce_reject_ratio("raw.entries", "2024-01-01", 100, 6, 0.05)


def test_unreadable_numbers_kept_under_uncast() -> None:
    docs = _docs([{"_id": "1", "type": "sgv", "sgv": 120, "date": T, "device": "g6",
                   "noise": [1, 2], "rssi": "strong", "filtered": "1.5"}])
    row = shape("entries", docs, CTX).rows.row(0, named=True)
    assert row["noise"] is None and row["rssi"] is None and row["filtered"] == 1.5
    assert json.loads(row["extra"]) == {"_uncast": {"noise": "[1,2]", "rssi": "strong"}}


def test_extra_is_empty_object_when_everything_is_modelled() -> None:
    docs = _docs([{"_id": "1", "type": "sgv", "sgv": 120, "date": T, "device": "g6"}])
    assert shape("entries", docs, CTX).rows.get_column("extra").to_list() == ["{}"]


def test_soft_deleted_documents_are_set_apart_with_their_id_and_time() -> None:
    docs = pl.DataFrame([
        {"_id": "live", "type": "sgv", "sgv": 120, "date": 1_420_070_400_000, "isValid": True},
        {"_id": "gone", "type": "sgv", "sgv": 121, "date": 1_420_070_700_000, "isValid": False},
        {"_id": "plain", "type": "sgv", "sgv": 122, "date": 1_420_071_000_000, "isValid": None},
    ])
    shaped = shape("entries", docs, CTX)
    assert shaped.rows.get_column("entry_id").to_list() == ["live", "plain"]
    assert shaped.deleted.rows() == [("gone", datetime(2015, 1, 1, 0, 5, tzinfo=UTC))]
    assert shaped.rejects.height == 0 and shaped.duplicates.height == 0


def test_a_soft_deleted_twin_does_not_displace_the_live_reading() -> None:
    at = 1_420_070_400_000
    docs = pl.DataFrame([
        {"_id": "a-deleted", "type": "sgv", "sgv": 120, "date": at, "device": "g6",
         "isValid": False},
        {"_id": "b-live", "type": "sgv", "sgv": 121, "date": at, "device": "g6"},
    ])
    shaped = shape("entries", docs, CTX)
    assert shaped.rows.get_column("entry_id").to_list() == ["b-live"]
    assert shaped.duplicates.height == 0
