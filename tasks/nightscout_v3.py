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
``NightscoutFeedUnavailable``: the caller falls back to the reconcile window. Every request
goes through the v1 client's retry layer (``tasks.nightscout.get_bounded``: an overall
deadline on the socket, a decoded-size cap, backoff and ``Retry-After``, no redirect
followed). A history page is read by ``tasks.json_documents.parse_member``: a change nested
too deep or not UTF-8 is set aside (its days are left to the reconcile window) and the rest
are read. The access token and every JWT are registered with ``tasks.redaction`` and every
body is redacted before it is read, so no message, log or row carries them.
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

from tasks.bounded_http import ACCEPT_ENCODING, BodyLimits, BodyTooLarge, bounded_transport
from tasks.errors import (
    NightscoutAuthError,
    NightscoutBadResponse,
    NightscoutFeedUnavailable,
    NightscoutTooLarge,
)
from tasks.json_documents import NotDocuments, ParsedDocuments, parse_member
from tasks.nightscout import Refuse, RequestRules, RetryPolicy, get_bounded, tls_context
from tasks.redaction import redact_bytes, register_token, sanitize_url
from tasks.settings import NightscoutSettings

__all__ = ["FEED_COLLECTIONS", "MAX_PAGE", "MIN_CURSOR_MS", "Change", "Feed",
           "NightscoutV3Client"]

logger = logging.getLogger("cascade.nightscout.v3")

FEED_COLLECTIONS: Final = ("entries", "treatments", "devicestatus", "profile")
MAX_PAGE: Final = 1000  # API3_MAX_LIMIT: a larger limit is a 400
MIN_CURSOR_MS: Final = 946_684_800_000  # below this the server reads the path as seconds
_RENEW_BEFORE_S: Final = 60.0
_CONSEQUENCE: Final = "nothing was written for its changes"
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
    unreadable: int = 0  # changes set aside unread (too deep, not UTF-8): left to reconcile

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
        timeout_s: timeout of each connect, read and write.
        retry: backoff policy for 429/5xx/timeouts/connection errors/the deadline.
        limits: overall deadline per request and the decoded size one answer may have.
        transport: an httpx transport, for tests (default: one that honours the deadline
            on the socket).
        sleep: the sleep function, for tests.
        clock: seconds since the epoch, for the JWT's expiry (tests move it).
    """

    settings: NightscoutSettings
    page_limit: int = MAX_PAGE
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: BodyLimits = field(default_factory=BodyLimits)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    requests_made: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.page_limit <= MAX_PAGE:
            raise ValueError(f"page_limit must be 1..{MAX_PAGE}, got {self.page_limit}")
        if self.settings.token is not None:
            register_token(self.settings.token.get_secret_value())
        self._jwt: _Jwt | None = None
        pool = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        self._http = httpx.Client(
            base_url=self.settings.url.rstrip("/"),
            headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING,
                     "User-Agent": "cascade/0.1"},
            timeout=self.timeout_s,
            transport=self.transport or bounded_transport(tls_context(), pool),
            follow_redirects=False,
        )
        self._rules = RequestRules(self._base(), self.retry, self.limits, self.sleep,
                                   _CONSEQUENCE)

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
        body = _json(self._get("/api/v3/version", {}, auth=False), self._where("/api/v3/version"))
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
        pages, changes, unreadable = 0, [], 0
        for page, set_aside in self._history(collection, since_ms):
            pages += 1
            changes.extend(page)
            unreadable += set_aside
        return Feed(collection, since_ms, tuple(changes), pages, unreadable)

    def history_pages(self, collection: str, since_ms: int) -> Iterator[list[Change]]:
        """The changes of ``collection`` after ``since_ms``, one list per page asked, without
        the ones an earlier page already gave (see the module docstring for the paging rule)."""
        for page, _ in self._history(collection, since_ms):
            yield page

    def _history(self, collection: str, since_ms: int) -> Iterator[tuple[list[Change], int]]:
        """Each page's new changes, and how many of its changes were set aside unread."""
        if collection not in FEED_COLLECTIONS:
            raise ValueError(f"unknown collection {collection!r}; expected one of "
                             f"{FEED_COLLECTIONS}")
        _check_cursor(since_ms)
        cursor, seen = since_ms, frozenset[str]()
        while True:
            path = f"/api/v3/{collection}/history/{cursor}"
            parsed = _documents(self._get(path, {"limit": str(self.page_limit)}),
                                self._where(path))
            page = _changes(parsed, collection, cursor, self._where(path))
            if parsed.set_aside:
                logger.warning(
                    "Nightscout %s: %d changes set aside unread (%s); the days they touch are "
                    "found by the reconcile window", self._where(path), len(parsed.set_aside),
                    parsed.set_aside[0].reason)
            yield [c for c in page if c.identifier not in seen], len(parsed.set_aside)
            if parsed.count < self.page_limit:
                return
            if not page:
                raise NightscoutBadResponse(
                    f"Nightscout at {self._where(path)}: a full page of {parsed.count} "
                    "changes that cannot be read, so the history cannot be paged past them. "
                    "Run reconcile over the days of the site; nothing was written")
            newest = max(c.srv_modified_ms for c in page)
            if all(c.srv_modified_ms == newest for c in page) and len(page) == parsed.count:
                raise NightscoutBadResponse(
                    f"Nightscout at {self._where(path)}: {len(page)} changes share "
                    f"srvModified {newest}, a full page, so the history cannot be paged past "
                    "them. Run reconcile over the days they touch; nothing was written")
            cursor = newest - 1
            seen = frozenset(c.identifier for c in page if c.srv_modified_ms == newest)

    # -- requests

    def _get(self, path: str, params: dict[str, str], *, auth: bool = True) -> bytes:
        """The redacted body of a 2xx answer; a 401 gets a new JWT, once (the server may have
        a new signing key)."""
        for renewed in (False, True):
            headers = {"Authorization": f"Bearer {self._bearer()}"} if auth else None
            try:
                return self._body(path, params, headers)
            except _Unauthorized as exc:
                if not auth or renewed:
                    raise NightscoutAuthError(
                        f"Nightscout answered 401 for {exc.where} ({exc.message})"
                        + (" with a fresh JWT" if auth else "") + "; check the access token "
                        "(NIGHTSCOUT_TOKEN or the nightscout-site block)") from None
                self._jwt = None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _body(self, path: str, params: dict[str, str], headers: dict[str, str] | None, *,
              shown: str | None = None, refuse: Refuse | None = None, redacted: bool = True
              ) -> bytes:
        """The body of a 2xx answer, redacted unless it is the JWT's own answer (a JWT the
        server issues again in the same second is one already registered)."""
        try:
            answer = get_bounded(self._http, path, params, rules=self._rules,
                                 refuse=refuse or _refuse_v3, counted=self._counted,
                                 headers=headers, shown=shown)
        except BodyTooLarge as exc:
            raise NightscoutTooLarge(
                f"Nightscout at {self._where(shown or path)} answered more than "
                f"{exc.limit:,} bytes: lower the change feed's page_limit (now "
                f"{self.page_limit}), or run reconcile over the days instead; "
                f"{_CONSEQUENCE}") from None
        # a server echoing a credential cannot pass it on
        return redact_bytes(answer.body) if redacted else answer.body

    def _counted(self) -> None:
        self.requests_made += 1

    def _refuse_token(self, status: int, text: str, where: str) -> None:
        if status in (401, 403):
            raise NightscoutAuthError(
                f"Nightscout at {self._base()} refused the access token for API v3 "
                f"({status} for {where}): check NIGHTSCOUT_TOKEN or the "
                "nightscout-site block's token (Admin tools > Subjects); Nightscout delays "
                "every failed attempt, so fix it before retrying")
        _refuse_v3(status, text, where)

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
        body = self._body(f"/api/v2/authorization/request/{token}", {}, None, shown=where,
                          refuse=self._refuse_token, redacted=False)  # read: token and exp
        answer = _json(body, self._where(where))
        jwt = answer.get("token") if isinstance(answer, dict) else None
        exp = answer.get("exp") if isinstance(answer, dict) else None
        if isinstance(jwt, str) and jwt:
            register_token(jwt)  # before anything could log or raise with it
        if not isinstance(jwt, str) or not jwt or not isinstance(exp, (int, float)):
            raise NightscoutBadResponse(
                f"Nightscout at {self._where(where)} answered without a JWT and its expiry: "
                "is it a Nightscout 15 site?")
        return _Jwt(jwt, float(exp))

    def _base(self) -> str:
        return sanitize_url(self.settings.url.rstrip("/"))

    def _where(self, path: str) -> str:
        return f"{self._base()}{path}"


class _Unauthorized(Exception):
    """A 401: the JWT is renewed once, else it becomes a ``NightscoutAuthError``."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(where)
        self.where, self.message = where, message


def _refuse_v3(status: int, text: str, where: str) -> None:
    """What a 4xx means to the change feed (the retry layer hands over the rest)."""
    message = _message(text)
    if status == 401:
        raise _Unauthorized(where, message)
    if status == 403:
        raise NightscoutFeedUnavailable(
            f"Nightscout answered 403 for {where} ({message}): the access token may not "
            "read this collection through API v3; give its subject a role with "
            "api:*:read to follow edits and deletions, else the reconcile window finds "
            "them")
    if status == 404:
        raise NightscoutFeedUnavailable(
            f"Nightscout at {where} answered 404, so the site has no API v3 (it came with "
            "Nightscout 15): edits and deletions are found by the reconcile window")


def _message(text: str) -> str:
    """The ``message`` of a v3 error body (already redacted), short: never the body as a
    whole, it may echo what was sent."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return "no JSON message"
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:120] if message else "no message"


def _json(content: bytes, where: str) -> Any:
    """A small v3 answer (the version, a JWT) as Python values."""
    try:
        return json.loads(content, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with a body that is not JSON "
            f"({type(exc).__name__}); {_CONSEQUENCE}") from None


def _documents(content: bytes, where: str) -> ParsedDocuments:
    """A history page's ``result`` array, read as v1 pages are."""
    try:
        return parse_member(content, "result")
    except NotDocuments as exc:
        raise NightscoutBadResponse(
            f"Nightscout answered {where} without a result array of documents ({exc}): is "
            f"it a Nightscout 15 site? {_CONSEQUENCE[0].upper()}{_CONSEQUENCE[1:]}") from None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_cursor(since_ms: int) -> None:
    if since_ms < MIN_CURSOR_MS:
        raise ValueError(
            f"a history cursor must be epoch milliseconds after 2000-01-01, got {since_ms}: "
            "Nightscout reads smaller values as seconds and refuses /history/0")


_FIELDS: Final = ("identifier", "srvModified", "isValid")


def _changes(parsed: ParsedDocuments, collection: str, cursor: int, where: str
             ) -> list[Change]:
    """The page's readable documents as ``Change``s, checked: each has an identifier and a
    ``srvModified`` after the cursor, in order."""
    frame = parsed.frame
    wanted = [c for c in (*_FIELDS, *(name for name, _ in _TIME_FIELDS[collection]))
              if c in frame.columns]
    docs = frame.select(wanted).to_dicts() if wanted else [{} for _ in range(frame.height)]
    out = [_change(doc, collection, where) for doc in docs]
    stamps = [c.srv_modified_ms for c in out]
    if any(s <= cursor for s in stamps) or stamps != sorted(stamps):
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with changes at or before the cursor {cursor}, or "
            "out of order: the history filter is not being applied (a proxy or cache in "
            f"front of the site?); {_CONSEQUENCE}")
    return out


def _change(doc: dict[str, Any], collection: str, where: str) -> Change:
    identifier, stamp = doc.get("identifier"), doc.get("srvModified")
    if not isinstance(identifier, str) or not identifier or not isinstance(stamp, int) \
            or isinstance(stamp, bool):
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with a document lacking identifier or srvModified "
            f"(keys {sorted(k for k, v in doc.items() if v is not None)[:8]}): not a v3 "
            f"history answer; {_CONSEQUENCE}")
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
