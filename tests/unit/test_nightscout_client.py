"""Nightscout client: paging past the count limit, auth, retries and clear failures."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import httpx
import polars as pl
import pytest
from pydantic import SecretStr

from tasks.errors import (
    NightscoutAuthError,
    NightscoutBadResponse,
    NightscoutNotFound,
    NightscoutUnavailable,
)
from tasks.nightscout import NightscoutClient, RetryPolicy, sanitize_url
from tasks.settings import NightscoutSettings

START = datetime(2024, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
T0 = int(START.timestamp() * 1000)


def _empty() -> httpx.Response:
    return httpx.Response(200, json=[])


def _entries(times_ms: list[int]) -> list[dict[str, object]]:
    return [{"_id": f"id{i:04d}", "type": "sgv", "sgv": 100, "date": t, "device": "g6"}
            for i, t in enumerate(times_ms)]


def _fake_entries(
    docs: list[dict[str, object]], seen: list[httpx.Request]
) -> Callable[..., httpx.Response]:
    """A transport answering like Nightscout: filter on date, newest first, count limit."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        q = request.url.params
        rows = [d for d in docs if int(d["date"]) >= int(q["find[date][$gte]"])]  # type: ignore[call-overload]
        if "find[date][$lt]" in q:
            rows = [d for d in rows if int(d["date"]) < int(q["find[date][$lt]"])]  # type: ignore[call-overload]
        if "find[date][$lte]" in q:
            rows = [d for d in rows if int(d["date"]) <= int(q["find[date][$lte]"])]  # type: ignore[call-overload]
        rows.sort(key=lambda d: int(d["date"]), reverse=True)  # type: ignore[call-overload]
        return httpx.Response(200, json=rows[: int(q.get("count", "10"))])

    return handler


def _client(handler: Callable[..., httpx.Response], *, page_size: int = 5, attempts: int = 3,
            secret: str | None = None, token: str | None = None) -> NightscoutClient:
    settings = NightscoutSettings(
        url="https://ns.example.test",
        api_secret=SecretStr(secret) if secret else None,
        token=SecretStr(token) if token else None,
    )
    return NightscoutClient(settings, page_size=page_size, transport=httpx.MockTransport(handler),
                            retry=RetryPolicy(attempts=attempts, base_s=0.01, max_s=0.02),
                            sleep=lambda s: None)


def test_fetch_pages_past_count_limit() -> None:
    docs = _entries([T0 + i * 300_000 for i in range(23)])
    seen: list[httpx.Request] = []
    frame = _client(_fake_entries(docs, seen)).fetch_window("entries", START, END).frame
    assert frame.height == 23
    assert frame.get_column("_id").n_unique() == 23
    assert len(seen) >= 5


def test_fetch_keeps_records_sharing_the_page_boundary_time() -> None:
    # 3 records at the same millisecond straddle the first page's boundary
    times = [T0 + 1000, T0 + 2000, T0 + 2000, T0 + 2000, T0 + 3000, T0 + 4000, T0 + 5000]
    docs = _entries(times)
    frame = _client(_fake_entries(docs, []), page_size=5).fetch_window("entries", START, END).frame
    assert sorted(frame.get_column("_id").to_list()) == sorted(str(d["_id"]) for d in docs)


def test_fetch_widens_page_when_one_timestamp_fills_it() -> None:
    docs = _entries([T0 + 7000] * 12 + [T0 + 1000])
    frame = _client(_fake_entries(docs, []), page_size=4).fetch_window("entries", START, END).frame
    assert frame.height == 13


def test_fetch_window_excludes_records_outside_window() -> None:
    docs = _entries([T0 - 1, T0, T0 + 86_400_000 - 1, T0 + 86_400_000])
    frame = _client(_fake_entries(docs, [])).fetch_window("entries", START, END).frame
    assert sorted(frame.get_column("date").to_list()) == [T0, T0 + 86_400_000 - 1]


def test_api_secret_sent_as_sha1_hex_header() -> None:
    seen: list[httpx.Request] = []
    _client(_fake_entries([], seen), secret="correct horse battery").fetch_window(
        "entries", START, END)
    expected = hashlib.sha1(b"correct horse battery").hexdigest()
    assert seen[0].headers["api-secret"] == expected
    assert "correct horse battery" not in str(seen[0].url)


def test_token_sent_as_query_parameter_and_redacted_in_logs() -> None:
    seen: list[httpx.Request] = []
    _client(_fake_entries([], seen), token="reader-abc123").fetch_window("entries", START, END)
    assert seen[0].url.params["token"] == "reader-abc123"
    assert "reader-abc123" not in sanitize_url(seen[0].url)


def test_retries_5xx_and_429_then_succeeds() -> None:
    answers = iter([httpx.Response(503), httpx.Response(429, headers={"Retry-After": "0"}),
                    httpx.Response(200, json=_entries([T0 + 5]))])
    frame = _client(lambda r: next(answers, _empty())).fetch_window("entries", START, END).frame
    assert frame.height == 1


def test_retries_timeouts_then_succeeds() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=_entries([T0 + 5]))

    assert _client(flaky).fetch_window("entries", START, END).frame.height == 1
    assert calls["n"] == 3  # the timeout, the page, and the page after it (nothing new)


def test_gives_up_after_bounded_attempts_with_clear_error() -> None:
    calls = {"n": 0}

    def down(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(502)

    with pytest.raises(NightscoutUnavailable, match="after 3 attempts"):
        _client(down, attempts=3).fetch_window("entries", START, END)
    assert calls["n"] == 3


def test_401_fails_fast_naming_the_credentials() -> None:
    calls = {"n": 0}

    def denied(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(401, json={"status": 401, "message": "Unauthorized"})

    with pytest.raises(NightscoutAuthError, match="API secret or token"):
        _client(denied, secret="wrong").fetch_window("entries", START, END)
    assert calls["n"] == 1


def test_404_fails_fast_naming_the_url() -> None:
    with pytest.raises(NightscoutNotFound, match="NIGHTSCOUT_URL"):
        _client(lambda r: httpx.Response(404)).fetch_window("entries", START, END)


def test_html_page_with_200_is_a_clear_error() -> None:
    page = httpx.Response(200, text="<html>maintenance</html>",
                          headers={"content-type": "text/html"})
    with pytest.raises(NightscoutBadResponse, match="not a JSON array"):
        _client(lambda r: page).fetch_window("entries", START, END)


def test_truncated_json_is_a_clear_error() -> None:
    body = json.dumps(_entries([T0 + 1, T0 + 2]))[:-20]
    with pytest.raises(NightscoutBadResponse, match="not valid JSON"):
        _client(lambda r: httpx.Response(200, text=body)).fetch_window("entries", START, END)


def test_treatments_page_by_created_at_strings() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"_id": "t1", "eventType": "Note",
                                          "created_at": "2024-03-01T10:00:00.000Z"}])

    frame = _client(handler).fetch_window("treatments", START, END).frame
    assert frame.height == 1
    params = seen[0].url.params
    assert params["find[created_at][$gte]"] == "2024-03-01T00:00:00.000Z"
    assert params["find[created_at][$lt]"] == "2024-03-02T00:00:00.000Z"


def test_mixed_value_types_parse_in_one_batch() -> None:
    docs = [{"_id": "a", "type": "sgv", "sgv": "123", "date": T0 + 1},
            {"_id": "b", "type": "sgv", "sgv": 124, "date": T0 + 2}]
    frame = _client(_fake_entries(docs, [])).fetch_window("entries", START, END).frame
    assert frame.get_column("sgv").cast(pl.Int64).sort().to_list() == [123, 124]


def test_retry_after_http_date_is_honoured() -> None:
    from email.utils import format_datetime

    waits: list[float] = []
    # an HTTP date is whole seconds, and the wait is measured from whenever the retry happens:
    # a date well ahead keeps the expected wait clear of a slow machine
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    answers = iter([httpx.Response(429, headers={"Retry-After": when}),
                    httpx.Response(200, json=_entries([T0 + 5]))])
    client = _client(lambda r: next(answers, _empty()))
    client.retry = RetryPolicy(attempts=3, base_s=0.01, max_s=60)
    client.sleep = waits.append
    assert client.fetch_window("entries", START, END).frame.height == 1
    assert 20.0 < waits[0] <= 40.0  # the date's wait, not the 0.01 s back-off


def test_full_page_of_documents_without_a_time_is_refused() -> None:
    def no_dates(request: httpx.Request) -> httpx.Response:  # ignores find[date] entirely
        return httpx.Response(200, json=[{"_id": f"x{i}", "sgv": 100} for i in range(5)])

    with pytest.raises(NightscoutBadResponse, match=r"ignores the time filter.*date missing"):
        _client(no_dates).fetch_window("entries", START, END)


def test_a_page_that_never_moves_past_one_time_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tasks.nightscout._MAX_PAGE", 64)
    seen: list[httpx.Request] = []

    def stuck(request: httpx.Request) -> httpx.Response:  # more than asked, all at one time
        seen.append(request)
        count = int(request.url.params["count"])
        return httpx.Response(200, json=_entries([T0 + 5] * (count + 1)))

    with pytest.raises(NightscoutBadResponse, match="page does not move"):
        _client(stuck).fetch_window("entries", START, END)
    assert [int(r.url.params["count"]) for r in seen] == [5, 5, 10, 20, 40, 80]


def test_full_pages_of_treatments_inside_the_window_as_instants_are_paged() -> None:
    # local offsets: outside the bounds as text, inside as instants; a server comparing
    # dates returns them, and they must not read as a server ignoring the filter
    docs = [{"_id": f"t{i}", "eventType": "Note",
             "created_at": (START + timedelta(minutes=30 + i)).astimezone(
                 timezone(timedelta(hours=-1))).isoformat(timespec="milliseconds")}
            for i in range(5)]

    def by_instant(request: httpx.Request) -> httpx.Response:
        q = request.url.params
        low = datetime.fromisoformat(q["find[created_at][$gte]"])
        high = q.get("find[created_at][$lt]") or q["find[created_at][$lte]"]
        upper = datetime.fromisoformat(high)
        rows = [d for d in docs if low <= datetime.fromisoformat(str(d["created_at"]))
                and (datetime.fromisoformat(str(d["created_at"])) < upper
                     if "find[created_at][$lt]" in q
                     else datetime.fromisoformat(str(d["created_at"])) <= upper)]
        return httpx.Response(200, json=rows[: int(q["count"])])

    frame = _client(by_instant, page_size=5).fetch_window("treatments", START, END).frame
    assert frame.height == 5


def test_clients_share_one_tls_context_until_the_ca_settings_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A client per window must not load the CA bundle again each time (tens of ms each).
    from tasks import nightscout

    built: list[object] = []
    real = httpx.create_ssl_context

    def counting() -> object:
        built.append(real())
        return built[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counting)  # the module the client uses
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    nightscout._tls_context.cache_clear()
    settings = NightscoutSettings("https://ns.example.org", "a", SecretStr("s"))
    for _ in range(3):
        NightscoutClient(settings).close()
    assert len(built) == 1
    assert nightscout.tls_context() is built[0]

    monkeypatch.setenv("SSL_CERT_DIR", "/etc/ssl/certs")  # a changed setting is honoured
    NightscoutClient(settings).close()
    assert len(built) == 2
    nightscout._tls_context.cache_clear()
