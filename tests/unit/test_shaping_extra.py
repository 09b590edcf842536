"""``extra``: every unmodelled field as JSON text, keys sorted, nulls left out, exact."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.shaping import ShapeContext, shape

CTX = ShapeContext("a", "UTC", datetime(2014, 1, 1, tzinfo=UTC), datetime(2017, 1, 1, tzinfo=UTC),
                   "run1", datetime(2024, 1, 1, tzinfo=UTC))
T = 1_420_000_000_000  # 2014-12-31


def _extra(docs: list[dict[str, object]]) -> list[str]:
    """Each document's ``extra``, parsed from JSON as the client parses a page."""
    frame = pl.read_json(io.BytesIO(json.dumps(docs).encode()), infer_schema_length=None)
    rows = shape("entries", frame, CTX).rows.sort("entry_epoch_ms")
    return rows.get_column("extra").to_list()


def _entry(i: int, **fields: object) -> dict[str, object]:
    return {"_id": f"e{i}", "type": "sgv", "sgv": 100, "date": T + i, "device": "g6", **fields}


def _compact(fields: dict[str, object]) -> str:
    """The text the JSON encoder writes: sorted keys, no spaces, non-ASCII as is."""
    return json.dumps(dict(sorted(fields.items())), separators=(",", ":"), ensure_ascii=False)


# control characters, quotes and backslashes must be escaped; the rest written as is
_text = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
                  st.sampled_from(['"', "\\", "\n\t\x01", '{"k":null}', "é✓", ""]))
_KINDS = {"text": _text, "int": st.integers(-(2**62), 2**62), "bool": st.booleans()}


@settings(deadline=None, max_examples=60, derandomize=True, database=None)
@given(st.data())
def test_extra_is_the_compact_encoding_of_the_sent_fields(data: st.DataObject) -> None:
    kinds = data.draw(st.dictionaries(_text.map(lambda k: "x_" + k), st.sampled_from(list(_KINDS)),
                                      max_size=4))
    sent = [{name: data.draw(_KINDS[kind]) for name, kind in kinds.items()
             if data.draw(st.booleans())} for _ in range(data.draw(st.integers(1, 5)))]
    extra = _extra([_entry(i, **fields) for i, fields in enumerate(sent)])
    assert extra == [_compact(fields) for fields in sent]


def test_nested_fields_other_documents_have_are_left_out_at_every_level() -> None:
    extra = _extra([_entry(0, meta={"a": 1}, tags=[{"x": 1}]),
                    _entry(1, meta={"b": "two"}, tags=[{"y": "z"}, {"x": 2}])])
    assert extra == ['{"meta":{"a":1},"tags":[{"x":1}]}',
                     '{"meta":{"b":"two"},"tags":[{"y":"z"},{"x":2}]}']


def test_a_field_no_document_has_is_left_out() -> None:
    assert _extra([_entry(0, gone=None), _entry(1, gone=None)]) == ["{}", "{}"]


def test_uncast_numbers_come_last_after_the_sorted_fields() -> None:
    extra = _extra([_entry(0, zeta="z", alpha=1, sgv="HIGH", rssi="far"), _entry(1, zeta="y")])
    assert extra == ['{"alpha":1,"zeta":"z","_uncast":{"sgv":"HIGH","rssi":"far"}}',
                     '{"zeta":"y"}']


def test_text_needing_escapes_keeps_them_while_plain_text_is_written_as_is() -> None:
    extra = _extra([_entry(0, note='say "hi"\\\n', plain="ok"), _entry(1, plain="ok too")])
    assert extra == [r'{"note":"say \"hi\"\\\n","plain":"ok"}', '{"plain":"ok too"}']
    assert json.loads(extra[0])["note"] == 'say "hi"\\\n'


def test_floats_are_written_as_the_json_encoder_writes_them() -> None:
    extra = _extra([_entry(0, ratio=1.5), _entry(1, ratio=1e20)])
    assert [json.loads(e)["ratio"] for e in extra] == [1.5, 1e20]


def test_fields_few_documents_send_are_written_for_just_those_documents() -> None:
    sent: list[dict[str, object]] = [{"every": f"v{i}"} for i in range(40)]
    sent[3] |= {"alpha": 1, "zulu": "z"}
    sent[39] |= {"zulu": 'say "hi"'}
    docs = [_entry(i, **fields) for i, fields in enumerate(sent)]
    docs[17]["sgv"] = "HIGH"
    expected = [_compact(fields) for fields in sent]
    expected[17] = '{"every":"v17","_uncast":{"sgv":"HIGH"}}'
    assert _extra(docs) == expected


def test_a_field_no_document_always_sends_is_written_only_where_sent() -> None:
    extra = _extra([_entry(i, **({"rare": i} if i in (0, 5) else {})) for i in range(12)])
    assert extra == ['{"rare":0}', *['{}'] * 4, '{"rare":5}', *['{}'] * 6]


def test_text_needing_escapes_far_into_a_large_batch_is_still_escaped() -> None:
    n = 70_000  # past the first slice of values the escape scan looks at
    frame = pl.DataFrame({"_id": [f"e{i}" for i in range(n)], "type": "sgv", "sgv": 100,
                          "date": [T + i for i in range(n)], "device": "g6",
                          "note": ["plain"] * (n - 1) + ['a "quote"']})
    extra = shape("entries", frame, CTX).rows.get_column("extra")
    assert extra[0] == '{"note":"plain"}'
    assert json.loads(extra[-1]) == {"note": 'a "quote"'}
