"""De-duplication and placement: which row is kept, what each repeat points at, the order."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl

from tasks.shaping import ShapeContext, shape

CTX = ShapeContext("a", "UTC", datetime(2014, 1, 1, tzinfo=UTC), datetime(2017, 1, 1, tzinfo=UTC),
                   "run1", datetime(2024, 1, 1, tzinfo=UTC))
T = 1_420_000_000_000  # 2014-12-31


def _docs(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, infer_schema_length=None)


def _entry(_id: str, date: int, device: str | None = "g6", sgv: int = 100) -> dict[str, object]:
    return {"_id": _id, "type": "sgv", "sgv": sgv, "date": date, "device": device}


def _repeats(docs: pl.DataFrame) -> list[tuple[str, str, str]]:
    dupes = shape("entries", docs, CTX).duplicates
    return sorted(dupes.select("record_id", "duplicate_of", "reason").rows())


def test_rows_come_out_in_time_then_id_order_whatever_order_they_were_sent() -> None:
    docs = _docs([_entry("c", T + 2), _entry("b", T + 1, "x"), _entry("a", T + 1, "y"),
                  _entry("d", T)])
    rows = shape("entries", docs, CTX).rows
    assert rows.get_column("entry_id").to_list() == ["d", "a", "b", "c"]


def test_of_three_rows_with_one_device_and_time_the_smallest_id_is_kept() -> None:
    docs = _docs([_entry("c", T), _entry("a", T, "other"), _entry("b", T), _entry("a2", T)])
    assert shape("entries", docs, CTX).rows.get_column("entry_id").to_list() == ["a", "a2"]
    assert _repeats(docs) == [("b", "a2", "same_device_time"), ("c", "a2", "same_device_time")]


def test_rows_without_a_device_at_one_time_are_repeats_of_each_other() -> None:
    docs = _docs([_entry("b", T, None), _entry("a", T, None), _entry("c", T + 1, None)])
    assert shape("entries", docs, CTX).rows.get_column("entry_id").to_list() == ["a", "c"]
    assert _repeats(docs) == [("b", "a", "same_device_time")]


def test_the_first_document_of_an_id_is_kept_and_later_ones_point_at_it() -> None:
    docs = _docs([_entry("x", T + 5, sgv=1), _entry("a", T), _entry("x", T, sgv=3),
                  _entry("x", T + 9, sgv=2)])
    rows = shape("entries", docs, CTX).rows
    assert rows.select("entry_id", "sgv_mg_dl").rows() == [("a", 100), ("x", 1)]
    dupes = shape("entries", docs, CTX).duplicates
    assert dupes.select("record_id", "duplicate_of", "reason").rows() == [
        ("x", "x", "same_id"), ("x", "x", "same_id")]
    assert [json.loads(p)["sgv"] for p in dupes.get_column("payload")] == [3, 2]


def test_a_repeated_id_is_removed_before_device_and_time_are_compared() -> None:
    # "x" (second copy) shares a time with "a" but is already a same_id repeat of "x"
    docs = _docs([_entry("x", T + 1), _entry("x", T), _entry("a", T)])
    assert shape("entries", docs, CTX).rows.get_column("entry_id").to_list() == ["a", "x"]
    assert _repeats(docs) == [("x", "x", "same_id")]


def test_set_aside_payload_is_the_document_even_for_a_table_with_a_payload_column() -> None:
    docs = _docs([{"_id": "s1", "device": "loop", "created_at": "2020-01-01T00:00:00Z",
                   "pump": {"reservoir": 50}}])
    rejects = shape("devicestatus", docs, CTX).rejects
    assert "outside the requested window" in rejects.get_column("reason")[0]
    assert json.loads(rejects.get_column("payload")[0]) == docs.row(0, named=True)
