"""The API v3 client: JWT, history paging from a cursor, quirks, retries and redaction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tasks.bounded_http import BodyLimits
from tasks.errors import (
    NightscoutAuthError,
    NightscoutBadResponse,
    NightscoutError,
    NightscoutFeedUnavailable,
    NightscoutRedirected,
    NightscoutUnavailable,
)
from tasks.nightscout import RetryPolicy
from tasks.nightscout_v3 import NightscoutV3Client
from tasks.redaction import redact
from tasks.settings import NightscoutSettings
from tasks.simulator import SimulatorServer, default_site

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
TOKEN = "reader-3f2a9c"
DAY = date(2024, 5, 20)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([default_site("a", token=TOKEN)], now=NOW, history_days=30) as server:
        yield server


def _client(url: str, token: str | None = TOKEN, **kwargs: Any) -> NightscoutV3Client:
    settings = NightscoutSettings(url, "a", token=SecretStr(token) if token else None)
    return NightscoutV3Client(settings, retry=RetryPolicy(attempts=3), sleep=lambda s: None,
                              **kwargs)


def _mock(handler: Any, **kwargs: Any) -> NightscoutV3Client:
    return _client("https://ns.example.test", transport=httpx.MockTransport(handler), **kwargs)


def _jwt_answer() -> httpx.Response:
    return httpx.Response(200, json={"token": "header.claims.signature", "iat": 0,
                                     "exp": 4_102_444_800})


def test_the_feed_pages_past_the_limit_in_change_order(sim: SimulatorServer) -> None:
    docs = sim.documents("a", "entries", DAY)[:5]
    for doc in docs:
        sim.changes("a").soft_delete("entries", doc)
    with _client(sim.url, page_limit=2) as client:
        feed = client.feed("entries", NOW_MS - 60_000)
    assert [c.identifier for c in feed.changes] == [d["_id"] for d in docs]
    assert all(not c.is_valid for c in feed.changes)
    assert feed.cursor_ms == max(c.srv_modified_ms for c in feed.changes)
    assert feed.pages == 5  # a full page is read again from its newest change's millisecond
    assert feed.changes[0].times[0] == datetime.fromtimestamp(docs[0]["date"] / 1000, UTC)


def test_an_empty_feed_keeps_the_cursor(sim: SimulatorServer) -> None:
    with _client(sim.url) as client:
        feed = client.feed("treatments", NOW_MS)
    assert (feed.changes, feed.cursor_ms, feed.pages) == ((), NOW_MS, 1)


def test_changes_sharing_a_millisecond_across_pages_are_not_skipped() -> None:
    stamps = [1_717_000_000_001, 1_717_000_000_002, 1_717_000_000_002, 1_717_000_000_003,
              1_717_000_000_004, 1_717_000_000_005]
    docs: list[dict[str, Any]] = [{"identifier": f"d{i}", "srvModified": s, "date": s}
                                  for i, s in enumerate(stamps)]
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" in request.url.path:
            return _jwt_answer()
        after = int(request.url.path.rsplit("/", 1)[1])
        asked.append(after)
        limit = int(request.url.params["limit"])
        return httpx.Response(200, json={"status": 200, "result": [
            d for d in docs if d["srvModified"] > after][:limit]})

    with _mock(handler, page_limit=3) as client:
        feed = client.feed("entries", 1_717_000_000_000)
    assert [c.identifier for c in feed.changes] == ["d0", "d1", "d2", "d3", "d4", "d5"]
    assert asked == [1_717_000_000_000, 1_717_000_000_001, 1_717_000_000_002, 1_717_000_000_004]


def test_a_full_page_of_one_millisecond_stops_with_a_clear_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" in request.url.path:
            return _jwt_answer()
        return httpx.Response(200, json={"status": 200, "result": [
            {"identifier": f"d{i}", "srvModified": 1_717_000_000_005} for i in range(2)]})

    with _mock(handler, page_limit=2) as client, pytest.raises(
            NightscoutBadResponse, match="share srvModified 1717000000005"):
        client.feed("entries", 1_717_000_000_000)


def test_a_server_ignoring_the_cursor_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" in request.url.path:
            return _jwt_answer()
        return httpx.Response(200, json={"status": 200, "result": [
            {"identifier": "old", "srvModified": 1_600_000_000_000}]})

    with _mock(handler) as client, pytest.raises(NightscoutBadResponse, match="before the cursor"):
        client.feed("entries", 1_717_000_000_000)


def test_a_cursor_the_server_would_read_as_seconds_is_refused(sim: SimulatorServer) -> None:
    with _client(sim.url) as client, pytest.raises(ValueError, match="after 2000-01-01"):
        client.feed("entries", 0)


def test_the_jwt_is_reused_then_renewed_before_it_expires(sim: SimulatorServer) -> None:
    now = [NOW.timestamp()]
    sim.v3.jwt.clock = lambda: now[0]
    with _client(sim.url, clock=lambda: now[0]) as client:
        client.feed("entries", NOW_MS)
        client.feed("treatments", NOW_MS)
        now[0] += 8 * 3600 - 30  # within a minute of the 8 h expiry
        client.feed("devicestatus", NOW_MS)
    jwt_requests = [p for p, _, _ in sim.request_log if "/authorization/request/" in p]
    assert len(jwt_requests) == 2


def test_a_refused_jwt_is_renewed_once(sim: SimulatorServer) -> None:
    with _client(sim.url) as client:
        client.feed("entries", NOW_MS)
        sim.v3.jwt.key = b"the server restarted with a new key"
        client.feed("entries", NOW_MS)  # 401, a new JWT, then the answer
    statuses = [s for p, _, s in sim.request_log if "/history/" in p]
    assert statuses == [200, 401, 200]


def test_a_wrong_token_fails_fast_and_is_never_shown(sim: SimulatorServer) -> None:
    secret = "not-the-token-8d1e"
    with _client(sim.url, token=secret) as client, pytest.raises(NightscoutAuthError) as caught:
        client.feed("entries", NOW_MS)
    assert secret not in str(caught.value) and "request/***" in str(caught.value)
    assert len([p for p, _, _ in sim.request_log if "/authorization/" in p]) == 1


def test_sites_without_a_feed_say_so(sim: SimulatorServer) -> None:
    with _client(sim.url, token=None) as client, pytest.raises(
            NightscoutFeedUnavailable, match="needs an access token"):
        client.feed("entries", NOW_MS)
    sim.v3.denied.add("treatments")
    with _client(sim.url) as client, pytest.raises(NightscoutFeedUnavailable, match="403"):
        client.feed("treatments", NOW_MS)
    with (SimulatorServer([default_site("a", token=TOKEN)], now=NOW, history_days=5,
                          v3_enabled=False) as old, _client(old.url) as client,
          pytest.raises(NightscoutFeedUnavailable, match="no API v3")):
        client.server_time_ms()


def test_unavailable_answers_are_retried_then_reported(sim: SimulatorServer) -> None:
    waits: list[float] = []
    sim.inject(503, retry_after=7, times=1, path="/api/v3/entries/history")
    settings = NightscoutSettings(sim.url, "a", token=SecretStr(TOKEN))
    with NightscoutV3Client(settings, retry=RetryPolicy(attempts=3), sleep=waits.append) as client:
        assert client.feed("entries", NOW_MS).changes == ()
        assert waits == [7.0]
        sim.inject(502, times=5, path="/api/v3/entries/history")
        with pytest.raises(NightscoutUnavailable, match="after 3 attempts"):
            client.feed("entries", NOW_MS)


def test_no_message_or_request_log_carries_the_jwt(sim: SimulatorServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    sim.inject(503, times=1, path="/api/v2/authorization/request/")
    with _client(sim.url) as client:
        client.feed("entries", NOW_MS)
        jwt = client._bearer()
    logged = caplog.text
    assert TOKEN not in logged and jwt not in logged and "request/***" in logged


def test_the_server_clock_comes_from_the_version_endpoint(sim: SimulatorServer) -> None:
    with _client(sim.url, token=None) as client:
        assert client.server_time_ms() == NOW_MS  # no token needed


def test_a_change_is_placed_by_every_time_it_carries() -> None:
    date_ms = int(datetime(2024, 5, 1, 23, 0, tzinfo=UTC).timestamp() * 1000)
    doc = {"identifier": "t1", "srvModified": 1_717_000_000_001, "date": date_ms,
           "created_at": "2024-05-02T01:00:00.000Z", "eventType": "Meal Bolus"}

    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" in request.url.path:
            return _jwt_answer()
        return httpx.Response(200, content=json.dumps({"status": 200, "result": [doc]}))

    with _mock(handler) as client:
        (change,) = client.feed("treatments", 1_717_000_000_000).changes
    assert {t.date() for t in change.times} == {date(2024, 5, 1), date(2024, 5, 2)}
    assert change.is_valid


def test_an_answer_echoing_the_request_shows_neither_the_token_nor_the_jwt(
        sim: SimulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    sim.inject(echo_status=502, times=1, path="/api/v3/entries/history")
    sim.inject(echo_status=400, times=1, path="/api/v3/entries/history")
    with _client(sim.url) as client, pytest.raises(NightscoutError) as caught:
        client.feed("entries", NOW_MS)  # a 502 echoing the Bearer header, retried; then a 400
    jwt = client._bearer()
    shown = f"{caught.value} {caplog.text}"
    assert "400" in shown and "HTTP 502" in shown
    assert jwt not in shown and TOKEN not in shown
    assert redact(f"a {jwt} and {TOKEN}") == "a *** and ***"  # registered, wherever it goes


def test_a_jwt_answer_echoing_the_access_token_is_refused_without_it(
        sim: SimulatorServer) -> None:
    sim.inject(echo_status=200, times=1, path="/api/v2/authorization/request/")
    with _client(sim.url) as client, pytest.raises(NightscoutBadResponse) as caught:
        client.feed("entries", NOW_MS)
    assert "without a JWT" in str(caught.value) and TOKEN not in str(caught.value)


def test_a_change_that_cannot_be_read_is_set_aside_and_the_others_are_read() -> None:
    deep = (b'{"identifier":"deep","srvModified":1717000000002,"x":' + b"[" * 100
            + b"]" * 100 + b"}")
    body = (b'{"status":200,"result":[{"identifier":"d1","srvModified":1717000000001,'
            b'"date":1717000000001},' + deep + b',{"identifier":"d3",'
            b'"srvModified":1717000000003,"date":1717000000003}]}')

    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" in request.url.path:
            return _jwt_answer()
        return httpx.Response(200, content=body)

    with _mock(handler) as client:
        feed = client.feed("entries", 1_717_000_000_000)
    assert [c.identifier for c in feed.changes] == ["d1", "d3"]
    assert feed.unreadable == 1 and feed.cursor_ms == 1_717_000_000_003


def test_a_compressed_history_is_read_and_a_redirect_is_not_followed(
        sim: SimulatorServer) -> None:
    sim.changes("a").soft_delete("entries", sim.documents("a", "entries", DAY)[0])
    sim.inject(encoding="gzip", times=1, path="/api/v3/entries/history")
    with _client(sim.url) as client:
        assert len(client.feed("entries", NOW_MS - 60_000).changes) == 1
        sim.inject(redirect="https://elsewhere.example.test/", times=1,
                   path="/api/v3/entries/history")
        with pytest.raises(NightscoutRedirected, match=r"elsewhere\.example\.test"):
            client.feed("entries", NOW_MS - 60_000)


def test_a_trickled_answer_is_cut_at_the_deadline_and_retried(sim: SimulatorServer) -> None:
    sim.inject(trickle_s=0.05, trickle_headers=True, times=10, path="/api/v3/entries/history")
    with _client(sim.url, limits=BodyLimits(deadline_s=0.5)) as client, pytest.raises(
            NightscoutUnavailable, match="deadline"):
        client.feed("entries", NOW_MS)
    assert len([p for p, _, _ in sim.request_log if "/history/" in p]) == 3  # every attempt


def test_a_jwt_issued_again_in_the_same_second_still_opens_the_feed(
        sim: SimulatorServer) -> None:
    clock = NOW.timestamp
    with _client(sim.url, clock=clock) as first, _client(sim.url, clock=clock) as second:
        first.feed("entries", NOW_MS)
        second.feed("entries", NOW_MS)  # the same JWT, already registered for redaction
        assert first._bearer() == second._bearer()
    assert [s for p, _, s in sim.request_log if "/history/" in p] == [200, 200]


@pytest.mark.parametrize("body", [
    b'[{"identifier":"d1","srvModified":1717000000001}]',  # a v1 answer
    b'{"status":200,"result":[{"identifier":"d1"',  # truncated
    b'{"status":200,"data":{"result":[]}}',  # the array is not the answer's own member
    b'{"status":200,"result":[1,2]}',  # not documents
    b"<html>maintenance</html>",
])
def test_a_body_that_is_not_a_history_answer_is_refused(body: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" in request.url.path:
            return _jwt_answer()
        return httpx.Response(200, content=body)

    with _mock(handler) as client, pytest.raises(NightscoutBadResponse,
                                                 match="without a result array"):
        client.feed("entries", 1_717_000_000_000)
