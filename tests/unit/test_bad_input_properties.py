"""Property: whatever a Nightscout server sends, every record is accounted for.

Each generated document ends as exactly one of: a committed row, a recorded duplicate,
or a recorded reject — never silently dropped, never an unhandled exception. Bodies that
are not a JSON array of documents fail with ``NightscoutBadResponse``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.contracts import check
from tasks.errors import NightscoutBadResponse
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext, shape

START = datetime(2024, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
T0 = int(START.timestamp() * 1000)

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=False), st.text(max_size=12),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
_times = st.one_of(st.integers(T0, T0 + 86_399_999), st.integers(0, 2**42),
                   st.just(T0).map(str), st.floats(T0, T0 + 86_399_999), _scalars)
_entry = st.fixed_dictionaries(
    {"date": _times},
    optional={"_id": st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=8)),
              "type": st.sampled_from(["sgv", "mbg", "cal", "weird", ""]),
              "sgv": st.one_of(st.integers(-5, 5000), st.sampled_from(["39", "120", "HIGH"]),
                               _scalars),
              "device": st.sampled_from(["g6", "g7", ""]), "direction": _values,
              "noise": _values, "extra_field": _values},
)


def _client(body: bytes) -> NightscoutClient:
    return NightscoutClient(
        NightscoutSettings("https://ns.example.test"),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body)),
        retry=RetryPolicy(attempts=1), sleep=lambda s: None, page_size=10_000)


def _ctx() -> ShapeContext:
    return ShapeContext("a", "UTC", START, END, "prop", datetime(2024, 3, 2, tzinfo=UTC))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, max_size=25))
def test_every_entry_is_committed_duplicated_or_rejected(docs: list[dict[str, object]]) -> None:
    body = json.dumps(docs, allow_nan=True).encode()
    try:
        frame = _client(body).fetch_window("entries", START, END)
    except NightscoutBadResponse:
        return  # a clear error, nothing written
    shaped = shape("entries", frame, _ctx())
    checked = check("entries", shaped.rows, _ctx())
    accounted = (checked.valid.height + checked.rejects.height + shaped.duplicates.height
                 + shaped.rejects.height)
    assert accounted == frame.height
    assert checked.valid.get_column("entry_id").n_unique() == checked.valid.height
    inside = checked.valid.get_column("entry_at")
    assert inside.is_null().sum() == 0
    assert all(START <= t < END for t in inside.to_list())


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(body: bytes) -> None:
    try:
        frame = _client(body).fetch_window("entries", START, END)
    except NightscoutBadResponse:
        return
    assert isinstance(frame, pl.DataFrame)
