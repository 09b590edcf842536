"""Nightscout API v3 client: the change feed of a site, read from a cursor.

Auth: API v3 takes no API secret. The site's access token is exchanged for a JWT at
``/api/v2/authorization/request/<token>`` (valid 8 h on cgm-remote-monitor 15.x) and sent as
``Authorization: Bearer <jwt>``. The JWT is renewed a minute before it expires, and once more
when a call is answered 401 (the server restarted with a new signing key, say).

Paging: ``GET /api/v3/{collection}/history/{ms}`` answers the documents whose ``srvModified``
is strictly after ``ms``, oldest change first, at most ``limit`` (1000, the server's cap) per
page, soft-deleted ones included with ``isValid: false``. The next page starts from the newest
``srvModified`` of a full page *minus one*, so changes sharing that millisecond across the
page boundary are never skipped; those already seen are dropped by identifier. A short page
ends the feed. The server's quirks:

* the path value is milliseconds, but one below 946684800000 (2000-01-01) is read as
  seconds and one still below it (``/history/0``) is refused: cursors are checked here;
* the ``Last-Modified`` response header is the newest ``srvModified`` in whole seconds, so
  it is not used as a cursor (a whole second of changes would be read again or lost); the
  documents' own ``srvModified`` is;
* documents written through v1 (xDrip+, Loop, most bridges) carry no ``srvModified`` and
  never appear, nor do permanent deletes: the reconcile window re-reads those by time.

A server without v3 (404), or a token that may not read a collection (403), raises
``NightscoutFeedUnavailable``: the caller falls back to the reconcile window. Retries,
backoff and ``Retry-After`` follow the v1 client's ``RetryPolicy``; no message carries the
token, the JWT or the API secret.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Self
from urllib.parse import quote

import httpx

from tasks.errors import (
    NightscoutAuthError,
    NightscoutBadResponse,
    NightscoutError,
    NightscoutFeedUnavailable,
    NightscoutUnavailable,
)
from tasks.nightscout import RetryPolicy, retry_after_seconds, sanitize_url, tls_context
from tasks.settings import NightscoutSettings

__all__ = ["FEED_COLLECTIONS", "MAX_PAGE", "MIN_CURSOR_MS", "Change", "Feed",
           "NightscoutV3Client"]

logger = logging.getLogger("cascade.nightscout.v3")

FEED_COLLECTIONS: Final = ("entries", "treatments", "devicestatus", "profile")
MAX_PAGE: Final = 1000  # API3_MAX_LIMIT: a larger limit is a 400
MIN_CURSOR_MS: Final = 946_684_800_000  # below this the server reads the path as seconds
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_RENEW_BEFORE_S: Final = 60.0
# The time fields a changed document may be placed by, per collection, and whether each is
# epoch milliseconds (else ISO-8601 text). Every one found counts: a document whose
# ``created_at`` was patched keeps its original ``date``, and both days change.
_TIME_FIELDS: Final[dict[str, tuple[tuple[str, bool], ...]]] = {
    "entries": (("date", True), ("dateString", False)),
    "treatments": (("created_at", False), ("date", True)),
    "devicestatus": (("created_at", False), ("date", True)),
    "profile": (("startDate", False), ("mills", True), ("created_at", False)),
}


@dataclass(frozen=True)
class Change:
    """One changed document of the feed: what Cascade needs to land it."""

    identifier: str
    srv_modified_ms: int
    is_valid: bool
    times: tuple[datetime, ...]  # every time the document is placed by (UTC)


@dataclass(frozen=True)
class Feed:
    """The changes of one collection after a cursor, and the cursor after them."""

    collection: str
    since_ms: int
    changes: tuple[Change, ...]
    pages: int  # history requests made

    @property
    def cursor_ms(self) -> int:
        """The newest ``srvModified`` read (the cursor to store), else the one read from."""
        return max((c.srv_modified_ms for c in self.changes), default=self.since_ms)


@dataclass
class _Jwt:
    token: str
    expires_at: float


@dataclass
class NightscoutV3Client:
    """API v3 of one Nightscout site, over one pooled httpx client.

    Args:
        settings: the site's URL and access token (an API secret does not open v3).
        page_limit: changes asked per page (at most 1000, the server's cap).
        timeout_s: per-request timeout.
        retry: backoff policy for 429/5xx/timeouts/connection errors.
        transport: an httpx transport, for tests.
        sleep: the sleep function, for tests.
        clock: seconds since the epoch, for the JWT's expiry (tests move it).
    """

    settings: NightscoutSettings
    page_limit: int = MAX_PAGE
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    requests_made: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.page_limit <= MAX_PAGE:
            raise ValueError(f"page_limit must be 1..{MAX_PAGE}, got {self.page_limit}")
        self._jwt: _Jwt | None = None
        self._http = httpx.Client(
            base_url=self.settings.url.rstrip("/"),
            headers={"Accept": "application/json", "User-Agent": "cascade/0.1"},
            timeout=self.timeout_s, transport=self.transport, verify=tls_context(),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- public

    def server_time_ms(self) -> int:
        """The server's clock (``srvDate`` of ``/api/v3/version``), where cursors start.

        Raises:
            NightscoutFeedUnavailable: the server has no API v3.
        """
        body = self._get_json("/api/v3/version", {}, auth=False)
        result = body.get("result") if isinstance(body, dict) else None
        stamp = result.get("srvDate") if isinstance(result, dict) else None
        if not isinstance(stamp, int) or stamp < MIN_CURSOR_MS:
            raise NightscoutBadResponse(
                f"Nightscout at {self._base()}/api/v3/version answered without a usable "
                f"srvDate ({str(stamp)[:40]!r}): is it a Nightscout 15 site?")
        return stamp

    def feed(self, collection: str, since_ms: int) -> Feed:
        """Every change of ``collection`` after ``since_ms`` (epoch ms), oldest first.

        Raises:
            NightscoutFeedUnavailable: no API v3, no token, or no read permission.
            NightscoutAuthError: the access token was refused.
            NightscoutUnavailable: the source kept failing past the retry budget.
            NightscoutBadResponse: a body that is not a v3 history answer.
        """
        pages, changes = 0, []
        for page in self.history_pages(collection, since_ms):
            pages += 1
            changes.extend(page)
        return Feed(collection, since_ms, tuple(changes), pages)

    def history_pages(self, collection: str, since_ms: int) -> Iterator[list[Change]]:
        """The changes of ``collection`` after ``since_ms``, one list per page asked, without
        the ones an earlier page already gave (see the module docstring for the paging rule)."""
        if collection not in FEED_COLLECTIONS:
            raise ValueError(f"unknown collection {collection!r}; expected one of "
                             f"{FEED_COLLECTIONS}")
        _check_cursor(since_ms)
        cursor, seen = since_ms, frozenset[str]()
        while True:
            path = f"/api/v3/{collection}/history/{cursor}"
            page = _changes(self._get_json(path, {"limit": str(self.page_limit)}),
                            collection, cursor, self._where(path))
            yield [c for c in page if c.identifier not in seen]
            if len(page) < self.page_limit:
                return
            newest = max(c.srv_modified_ms for c in page)
            if all(c.srv_modified_ms == newest for c in page):
                raise NightscoutBadResponse(
                    f"Nightscout at {self._where(path)}: {len(page)} changes share "
                    f"srvModified {newest}, a full page, so the history cannot be paged past "
                    "them. Run reconcile over the days they touch; nothing was written")
            cursor = newest - 1
            seen = frozenset(c.identifier for c in page if c.srv_modified_ms == newest)

    # -- requests

    def _get_json(self, path: str, params: dict[str, str], *, auth: bool = True) -> Any:
        for renewed in (False, True):
            headers = {"Authorization": f"Bearer {self._bearer()}"} if auth else {}
            response = self._request(path, params, headers)
            if response.status_code != 401 or not auth or renewed:
                break
            self._jwt = None  # refused: a new JWT, once (the server may have a new key)
        self._raise_for_status(response, path)
        return _parse_json(response.content, self._where(path))

    def _bearer(self) -> str:
        if self._jwt is None or self._jwt.expires_at - self.clock() < _RENEW_BEFORE_S:
            self._jwt = self._request_jwt()
        return self._jwt.token

    def _request_jwt(self) -> _Jwt:
        if self.settings.token is None:
            raise NightscoutFeedUnavailable(
                f"Nightscout at {self._base()}: API v3 needs an access token (NIGHTSCOUT_TOKEN "
                "or the block's token; an API secret does not open it), so edits and "
                "deletions are found by the reconcile window only")
        token = quote(self.settings.token.get_secret_value(), safe="")
        where = "/api/v2/authorization/request/***"
        response = self._request(f"/api/v2/authorization/request/{token}", {}, {}, shown=where)
        if response.status_code in (401, 403):
            raise NightscoutAuthError(
                f"Nightscout at {self._base()} refused the access token for API v3 "
                f"({response.status_code} for {where}): check NIGHTSCOUT_TOKEN or the "
                "nightscout-site block's token (Admin tools > Subjects); Nightscout delays "
                "every failed attempt, so fix it before retrying")
        self._raise_for_status(response, where)
        body = _parse_json(response.content, self._where(where))
        jwt = body.get("token") if isinstance(body, dict) else None
        exp = body.get("exp") if isinstance(body, dict) else None
        if not isinstance(jwt, str) or not jwt or not isinstance(exp, (int, float)):
            raise NightscoutBadResponse(
                f"Nightscout at {self._where(where)} answered without a JWT and its expiry: "
                "is it a Nightscout 15 site?")
        return _Jwt(jwt, float(exp))

    def _request(self, path: str, params: dict[str, str], headers: dict[str, str], *,
                 shown: str | None = None) -> httpx.Response:
        """GET with retries on 429/5xx/transport errors; ``shown`` is the path as messages
        may show it (the JWT request carries the token in its path)."""
        shown = shown or path
        problem = "no attempt"
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                response = self._http.get(path, params=params, headers=headers)
                self.requests_made += 1
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                problem, retry_after = f"HTTP {response.status_code}", retry_after_seconds(
                    response)
            if attempt == self.retry.attempts:
                break
            wait = self.retry.delay(attempt, retry_after)
            logger.warning("Nightscout %s%s: %s, retry %d/%d in %.1fs", self._base(), shown,
                           problem, attempt, self.retry.attempts - 1, wait)
            self.sleep(wait)
        raise NightscoutUnavailable(
            f"Nightscout at {self._base()} kept failing for {shown} ({problem}) after "
            f"{self.retry.attempts} attempts: check the site is up, then re-run; nothing was "
            "written for its changes")

    def _raise_for_status(self, response: httpx.Response, path: str) -> None:
        status, where = response.status_code, self._where(path)
        if status < 400:
            return
        message = _message(response)
        if status == 401:
            raise NightscoutAuthError(
                f"Nightscout answered 401 for {where} ({message}) with a fresh JWT: check the "
                "access token (NIGHTSCOUT_TOKEN or the nightscout-site block)")
        if status == 403:
            raise NightscoutFeedUnavailable(
                f"Nightscout answered 403 for {where} ({message}): the access token may not "
                "read this collection through API v3; give its subject a role with "
                "api:*:read to follow edits and deletions, else the reconcile window finds "
                "them")
        if status == 404:
            raise NightscoutFeedUnavailable(
                f"Nightscout at {self._base()} has no API v3 ({where} answered 404; it came "
                "with Nightscout 15): edits and deletions are found by the reconcile window")
        raise NightscoutError(f"Nightscout answered {status} for {where}: {message}")

    def _base(self) -> str:
        return sanitize_url(self.settings.url.rstrip("/"))

    def _where(self, path: str) -> str:
        return f"{self._base()}{path}"


def _message(response: httpx.Response) -> str:
    """The ``message`` of a v3 error body, short (never the body as a whole: it may echo
    what was sent)."""
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return "no JSON message"
    text = body.get("message") if isinstance(body, dict) else None
    return str(text)[:120] if text else "no message"


def _parse_json(content: bytes, where: str) -> Any:
    try:
        return json.loads(content, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with a body that is not JSON "
            f"({type(exc).__name__}); nothing was written for its changes") from None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_cursor(since_ms: int) -> None:
    if since_ms < MIN_CURSOR_MS:
        raise ValueError(
            f"a history cursor must be epoch milliseconds after 2000-01-01, got {since_ms}: "
            "Nightscout reads smaller values as seconds and refuses /history/0")


def _changes(body: Any, collection: str, cursor: int, where: str) -> list[Change]:
    """The page's documents as ``Change``s, checked: each has an identifier and a
    ``srvModified`` after the cursor, in order."""
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list) or not all(isinstance(d, dict) for d in result):
        raise NightscoutBadResponse(
            f"Nightscout answered {where} without a result array of documents: is it a "
            "Nightscout 15 site? Nothing was written for its changes")
    out = [_change(doc, collection, where) for doc in result]
    stamps = [c.srv_modified_ms for c in out]
    if any(s <= cursor for s in stamps) or stamps != sorted(stamps):
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with changes at or before the cursor {cursor}, or "
            "out of order: the history filter is not being applied (a proxy or cache in "
            "front of the site?); nothing was written for its changes")
    return out


def _change(doc: dict[str, Any], collection: str, where: str) -> Change:
    identifier, stamp = doc.get("identifier"), doc.get("srvModified")
    if not isinstance(identifier, str) or not identifier or not isinstance(stamp, int) \
            or isinstance(stamp, bool):
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with a document lacking identifier or srvModified "
            f"(keys {sorted(doc)[:8]}): not a v3 history answer; nothing was written")
    times = tuple(t for name, numeric in _TIME_FIELDS[collection]
                  if (t := _time(doc.get(name), numeric)) is not None)
    return Change(identifier, stamp, doc.get("isValid") is not False, times)


def _time(value: Any, numeric: bool) -> datetime | None:
    """A document's time field as UTC (None when absent or unreadable: the document is
    then found by the reconcile window, not placed here)."""
    try:
        if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(value / 1000, UTC)
        elif not numeric and isinstance(value, str) and value:
            moment = datetime.fromisoformat(value)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    moment = moment.astimezone(UTC)
    return moment if 2000 <= moment.year < 2100 else None
