"""Property: whatever a Nightscout server sends, every record is accounted for.

Each generated document ends as exactly one of: a committed row, a recorded duplicate,
or a recorded reject (with its reason), or one the source marks deleted (``isValid: false``,
counted) — never silently dropped, never an unhandled exception. A document holding bytes
that are not UTF-8 is set aside with its reason and the rest are read. Bodies that are not a
JSON array of documents (truncated, HTML with status 200, non-UTF-8 bytes between documents,
a ``NaN`` token, ...) fail the window with ``NightscoutBadResponse``, and then nothing at all
is committed to the branch.

Documents are generated for entries, treatments and devicestatus with: missing fields,
wrong types (lists and objects where numbers belong, and the other way round), strings for
numbers, huge values, ``"NaN"``/``"Infinity"``, 1970 and far-future dates, times ahead of
the ingestion clock, duplicate ``_id``s with different content, unknown event types, and
member names and text that look like JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.branches import EmbeddedBranchCatalog
from tasks.contracts import CONTRACTS, check
from tasks.errors import ContractError, NightscoutBadResponse
from tasks.ingest import WINDOW_TABLES, ingest_window
from tasks.lakehouse import read_table
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext, shape
from tasks.tables import RAW_TABLES

START = datetime(2024, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
T0 = int(START.timestamp() * 1000)
DAY_MS = 86_400_000
FAST = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Doc = dict[str, object]

# ----------------------------------------------------------------------------- values

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10)
_tricky_text = st.sampled_from(['"k":null,', "a,}", '{"_uncast":{}}', "\\", '\\"', "null",
                                "é✓", "<b>", ""])
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), _text, _tricky_text,
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_text, inner, max_size=3), max_leaves=6)
# strings for numbers, huge values, NaN and infinities as text, wrong types
_numbers = st.one_of(
    st.integers(-5, 1500), st.floats(-10, 1e6, allow_nan=False),
    st.integers(-5, 1500).map(str), st.sampled_from(["NaN", "Infinity", "-Infinity", "HIGH",
                                                     "1e400", "12abc", " 42 "]),
    st.sampled_from([2**63, 2**64 + 7, 10**30, 1e308, -1e308]), _values,
)
_ids = st.one_of(st.sampled_from(["a", "b", "c"]), _text, st.integers(0, 9),
                 st.fixed_dictionaries({"$oid": st.sampled_from(["x", "y"])}))
_in_window_ms = st.integers(T0, T0 + DAY_MS - 1)
_epoch_ms = st.one_of(
    _in_window_ms,
    st.integers(0, 10**9),                          # 1970
    st.integers(4_070_908_800_000, 4_102_000_000_000),  # 2099
    _in_window_ms.map(str), st.floats(T0, T0 + DAY_MS - 1), _scalars,
)


def _iso(ms: int, offset_min: int) -> str:
    """``ms`` as ISO-8601 text written with a UTC offset of ``offset_min`` (``Z`` for 0)."""
    moment = datetime.fromtimestamp(ms / 1000, UTC).astimezone(
        timezone(timedelta(minutes=offset_min)))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_iso_times = st.one_of(
    st.builds(_iso, _in_window_ms, st.sampled_from([0, 0, 60, -300, 840, -720])),
    st.sampled_from(["1970-01-01T00:00:00Z", "2099-12-31T23:59:59.999Z", "2024-03-01",
                     "2024-02-30T10:00:00Z", "yesterday", "2024-03-01T12:00:00+25:00", ""]),
    _in_window_ms, _scalars,
)
_extra_fields = st.dictionaries(st.one_of(_text, _tricky_text), _values, max_size=2)
_is_valid = st.one_of(st.booleans(), st.sampled_from(["false", 0]), _scalars)

_ENTRY = st.fixed_dictionaries(
    {"date": _epoch_ms},
    optional={"_id": _ids, "dateString": _iso_times, "isValid": _is_valid,
              "type": st.one_of(st.sampled_from(["sgv", "mbg", "cal", "weird", "", "x" * 40]),
                                _scalars),
              "sgv": _numbers, "mbg": _numbers, "noise": _numbers, "utcOffset": _numbers,
              "device": st.one_of(st.sampled_from(["g6", "g7", ""]), _scalars),
              "direction": _values, "rssi": _numbers, "filtered": _numbers},
)
_TREATMENT = st.fixed_dictionaries(
    {"created_at": _iso_times},
    optional={"_id": _ids, "date": _epoch_ms, "isValid": _is_valid,
              "eventType": st.one_of(st.sampled_from(["Meal Bolus", "Temp Basal", "Note",
                                                      "Frobnicate", "", "E" * 80]), _scalars),
              "insulin": _numbers, "carbs": _numbers, "duration": _numbers,
              "rate": _numbers, "glucose": _numbers, "notes": _values, "enteredBy": _values},
)
_TIMESTAMPED = st.fixed_dictionaries({}, optional={"timestamp": _iso_times, "iob": _numbers})
_STATUS = st.fixed_dictionaries(
    {"created_at": _iso_times},
    optional={"_id": _ids, "isValid": _is_valid,
              "device": st.one_of(st.sampled_from(["loop://iPhone", ""]), _scalars),
              "mills": _epoch_ms,
              "uploader": st.one_of(st.fixed_dictionaries({"battery": _numbers}), _scalars),
              "uploaderBattery": _numbers,
              "pump": st.one_of(st.fixed_dictionaries({}, optional={"reservoir": _numbers,
                                                                   "clock": _iso_times}),
                                _scalars),
              "openaps": st.one_of(st.fixed_dictionaries({}, optional={"iob": _TIMESTAMPED}),
                                   st.fixed_dictionaries({"iob": st.lists(_TIMESTAMPED,
                                                                          max_size=2)}),
                                   _scalars)},
)
DOCS = {"entries": _ENTRY, "treatments": _TREATMENT, "devicestatus": _STATUS}


@st.composite
def _batch(draw: st.DrawFn, collection: str) -> list[Doc]:
    """Documents of one collection, some re-sent under an ``_id`` already used."""
    docs = draw(st.lists(st.builds(lambda d, x: {**d, **x}, DOCS[collection], _extra_fields),
                         max_size=20))
    for doc in draw(st.lists(st.sampled_from(docs), max_size=3)) if docs else []:
        twin = {**draw(DOCS[collection]), "_id": doc.get("_id", "twin")}
        docs.append(twin)  # the same _id, different content
    return docs


# ----------------------------------------------------------------------------- helpers


def _client(bodies: dict[str, bytes], *, page_size: int = 10_000) -> NightscoutClient:
    """A server holding ``bodies``: it answers a window's first page (the one bounded by
    ``$lt``) with them, and the page after it with none. Its documents have odd times, so
    no time filter could select them: it answers them all at once instead."""
    def answer(request: httpx.Request) -> httpx.Response:
        name = next(c for c in bodies if f"/{c}.json" in request.url.path)
        first = any(k.endswith("[$lt]") for k in request.url.params) or "profile" in name
        return httpx.Response(200, content=bodies[name] if first else b"[]")

    return NightscoutClient(NightscoutSettings("https://ns.example.test", "a"),
                            transport=httpx.MockTransport(answer),
                            retry=RetryPolicy(attempts=1), sleep=lambda s: None,
                            page_size=page_size)


def _ctx(ingested_at: datetime = datetime(2024, 3, 2, tzinfo=UTC)) -> ShapeContext:
    return ShapeContext("a", "UTC", START, END, "prop", ingested_at)


def _body(docs: Sequence[object]) -> bytes:
    return json.dumps(docs, allow_nan=False).encode()


def _snapshots(branches: EmbeddedBranchCatalog, ref: str) -> dict[str, int | None]:
    catalog = branches.catalog(ref)
    out: dict[str, int | None] = {}
    for namespace in ("raw", "audit"):
        for ident in catalog.list_tables(namespace):
            snapshot = catalog.load_table(ident).current_snapshot()
            out[".".join(ident)] = snapshot.snapshot_id if snapshot else None
    return out


# ----------------------------------------------------------------------------- per record

_INGESTED = st.sampled_from([datetime(2024, 3, 2, tzinfo=UTC), START - timedelta(days=2),
                             START + timedelta(hours=3)])


@pytest.mark.parametrize("collection", WINDOW_TABLES)
@settings(FAST, max_examples=30)
@given(data=st.data())
def test_every_record_is_committed_duplicated_or_rejected(collection: str,
                                                          data: st.DataObject) -> None:
    docs = data.draw(_batch(collection))
    ctx = _ctx(data.draw(_INGESTED))
    table = RAW_TABLES[collection]
    frame = _client({collection: _body(docs)}).fetch_window(collection, START, END).frame
    assert frame.height == len(docs)  # no document lost while parsing
    shaped = shape(collection, frame, ctx)
    checked = check(collection, shaped.rows, ctx)
    outcomes = (checked.valid.height + checked.rejects.height + shaped.duplicates.height
                + shaped.rejects.height + shaped.deleted.height)
    assert outcomes == len(docs)
    valid = checked.valid
    CONTRACTS[collection].validate(valid)  # what is accepted keeps the contract
    assert valid.get_column(table.id_column).n_unique() == valid.height
    times = valid.get_column(table.time_column)
    assert times.null_count() == 0 and all(START <= t < END for t in times.to_list())
    assert all(t <= ctx.ingested_at + timedelta(days=1) for t in times.to_list())
    set_aside = pl.concat([shaped.rejects, checked.rejects, shaped.duplicates.drop(
        "duplicate_of")])
    assert set_aside.get_column("reason").null_count() == 0
    assert (set_aside.get_column("reason").str.len_chars() > 0).all()
    for text in [*valid.get_column("extra").to_list(), *set_aside.get_column("payload")]:
        assert isinstance(json.loads(text), dict)  # kept as valid JSON objects


@settings(FAST, max_examples=25)
@given(st.lists(st.dictionaries(_text.map(lambda k: "x_" + k), st.one_of(_text, _tricky_text),
                                min_size=1, max_size=3), min_size=1, max_size=6))
def test_unmodelled_fields_survive_in_extra_exactly(fields: list[dict[str, str]]) -> None:
    docs = [{"_id": f"t{i}", "eventType": "Note", "created_at": _iso(T0 + i, 0), **extra}
            for i, extra in enumerate(fields)]
    frame = _client({"treatments": _body(docs)}).fetch_window("treatments", START, END).frame
    rows = shape("treatments", frame, _ctx()).rows.sort("treatment_id")
    assert [json.loads(text) for text in rows.get_column("extra")] == fields


def test_duplicate_ids_with_different_content_keep_the_first_and_record_the_rest() -> None:
    docs: list[Doc] = [{"_id": "x", "type": "sgv", "sgv": 100, "date": T0 + 1},
                       {"_id": "x", "type": "sgv", "sgv": 250, "date": T0 + 5},
                       {"_id": "x", "type": "mbg", "mbg": "90", "date": "oops"}]
    frame = _client({"entries": _body(docs)}).fetch_window("entries", START, END).frame
    shaped = shape("entries", frame, _ctx())
    assert shaped.rows.get_column("sgv_mg_dl").to_list() == [100]
    assert shaped.duplicates.get_column("reason").to_list() == ["same_id"]
    assert shaped.rejects.get_column("reason").str.starts_with("no usable time").all()


def test_unknown_event_types_are_kept_and_empty_ones_rejected() -> None:
    docs: list[Doc] = [{"_id": "t1", "eventType": "Frobnicate",
                        "created_at": "2024-03-01T01:00:00Z"},
                       {"_id": "t2", "eventType": "", "created_at": "2024-03-01T02:00:00Z"}]
    frame = _client({"treatments": _body(docs)}).fetch_window("treatments", START, END).frame
    checked = check("treatments", shape("treatments", frame, _ctx()).rows, _ctx())
    assert checked.valid.get_column("event_type").to_list() == ["Frobnicate"]
    assert "event_type" in checked.rejects.get_column("reason")[0]


def test_records_ahead_of_the_ingestion_clock_are_rejected_with_the_reason() -> None:
    docs: list[Doc] = [{"_id": "s1", "device": "d", "created_at": "2024-03-01T20:00:00Z"}]
    early = _ctx(START - timedelta(days=2))
    frame = _client({"devicestatus": _body(docs)}).fetch_window("devicestatus", START, END).frame
    checked = check("devicestatus", shape("devicestatus", frame, early).rows, early)
    assert checked.valid.height == 0
    assert "not more than a day after ingestion" in checked.rejects.get_column("reason")[0]


@settings(FAST, max_examples=60)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(body: bytes) -> None:
    try:
        frame = _client({"entries": body}).fetch_window("entries", START, END).frame
    except NightscoutBadResponse:
        return
    assert isinstance(frame, pl.DataFrame)


# ----------------------------------------------------------------------------- whole window


def _good(collection: str) -> list[Doc]:
    if collection == "entries":
        return [{"_id": f"e{i}", "type": "sgv", "sgv": 100 + i, "date": T0 + i * 300_000,
                 "device": "g6"} for i in range(30)]
    stamp = [(START + timedelta(minutes=7 * i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
             for i in range(10)]
    if collection == "treatments":
        return [{"_id": f"t{i}", "eventType": "Note", "created_at": s} for i, s in enumerate(stamp)]
    return [{"_id": f"s{i}", "device": "loop", "created_at": s, "pump": {"reservoir": 50}}
            for i, s in enumerate(stamp)]


@st.composite
def _bad_body(draw: st.DrawFn) -> bytes:
    """A body that is not a JSON array of documents, in one of the ways sources fail."""
    good = _body(_good("entries"))
    kind = draw(st.sampled_from(["truncated", "html", "non-utf8-outside", "nan",
                                 "non-objects", "object", "empty", "bytes"]))
    if kind == "truncated":
        return good[: draw(st.integers(1, len(good) - 1))]
    if kind == "html":
        return draw(st.sampled_from([b"<!DOCTYPE html><title>502 Bad Gateway</title>",
                                     b"<html><body>Please log in</body></html>", b"\n  <h1>"]))
    if kind == "non-utf8-outside":  # between documents: no document to set aside
        cut = good.index(b"}, {", draw(st.integers(0, len(good) // 2))) + 2
        return good[:cut] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + \
            good[cut:]
    if kind == "nan":
        return good.replace(b'"sgv": 101', b'"sgv": NaN')
    if kind == "non-objects":
        return draw(st.sampled_from([b"[1, 2]", b"[null]", b'[{"date": 1}, "x"]', b"[[]]"]))
    if kind == "object":
        return b'{"status": 500, "message": "MongoError"}'
    if kind == "empty":
        return b""
    body = draw(st.binary(min_size=1, max_size=60))
    return body if not body.lstrip().startswith(b"[") else b"x" + body


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedBranchCatalog:
    """A branch that already holds the window, from an earlier good ingest."""
    root = tmp_path_factory.mktemp("bad-window")
    branches = EmbeddedBranchCatalog(root / "catalog.db", root / "warehouse")
    branches.create_branch("run-bad")
    good = {c: _body(_good(c)) for c in WINDOW_TABLES}
    ingest_window(_client(good), branches.catalog("run-bad"), _ctx())
    return branches


@settings(FAST, max_examples=20)
@given(bad=_bad_body(), where=st.sampled_from(WINDOW_TABLES))
def test_a_window_with_a_bad_body_commits_nothing(seeded: EmbeddedBranchCatalog, bad: bytes,
                                                  where: str) -> None:
    bodies = {c: _body(_good(c)) for c in WINDOW_TABLES} | {where: bad}
    before, ref_before = _snapshots(seeded, "run-bad"), seeded.ref("run-bad").hash
    with pytest.raises(NightscoutBadResponse, match=r"[Nn]othing was written|non-objects|JSON"):
        ingest_window(_client(bodies), seeded.catalog("run-bad"), _ctx())
    assert _snapshots(seeded, "run-bad") == before
    assert seeded.ref("run-bad").hash == ref_before
    # three raw tables, three audit tables and the change record were there to damage
    assert len(before) == 7


@settings(FAST, max_examples=10)
@given(bad_byte=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]),
       at=st.integers(0, 29))
def test_a_document_with_bytes_that_are_not_utf8_is_set_aside_and_the_rest_read(
        bad_byte: bytes, at: int) -> None:
    docs = _good("entries")
    parts = [_body([d])[1:-1] for d in docs]
    parts[at] = parts[at].replace(b'"g6"', b'"g' + bad_byte + b'"')
    fetched = _client({"entries": b"[" + b", ".join(parts) + b"]"}).fetch_window(
        "entries", START, END)
    assert sorted(fetched.frame.get_column("_id")) == sorted(f"e{i}" for i in range(30)
                                                             if i != at)
    assert [s.record_id for s in fetched.set_aside] == [f"e{at}"]
    assert fetched.set_aside[0].reason.startswith("unreadable document: not valid UTF-8")


@settings(FAST, max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_what_lands_in_iceberg_is_what_the_report_counts(tmp_path_factory: pytest.TempPathFactory,
                                                         data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("lands")
    branches = EmbeddedBranchCatalog(root / "catalog.db", root / "warehouse")
    docs = {c: data.draw(_batch(c)) for c in WINDOW_TABLES}
    catalog = branches.catalog("main")
    try:
        report = ingest_window(_client({c: _body(d) for c, d in docs.items()}), catalog, _ctx(),
                               max_reject_ratio=data.draw(st.sampled_from([0.05, 1.0])))
    except ContractError:
        for name in WINDOW_TABLES:  # only the audit trail was written, no raw rows
            assert not catalog.table_exists(f"raw.{name}") or read_table(
                catalog, f"raw.{name}").height == 0
        return
    rejects = read_table(catalog, "audit.rejects") if catalog.table_exists(
        "audit.rejects") else pl.DataFrame({"table_name": []}, schema={"table_name": pl.String})
    for name in WINDOW_TABLES:
        counts, table = report.tables[name], RAW_TABLES[name]
        landed = (read_table(catalog, table.identifier) if catalog.table_exists(table.identifier)
                  else pl.DataFrame(schema=table.polars_schema))
        assert landed.height == counts.committed
        assert landed.get_column(table.id_column).n_unique() == landed.height
        assert rejects.filter(pl.col("table_name") == name).height == counts.rejected
        assert counts.committed + counts.duplicates + counts.rejected <= len(docs[name])
