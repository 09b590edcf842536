"""Nightscout v1 API client: time-windowed, paged, retried, bounded, parsed straight into Polars.

Paging: Nightscout returns the newest ``count`` records matching a filter. We ask for
``[start, end)``, then move the upper bound to the oldest time on the page with ``$lte``
(so records sharing the boundary time are never skipped) and drop the records already
seen at that boundary time. The window is done only when a page brings nothing new (it is
empty, or holds only the records already taken at the boundary): a page shorter than
``count`` is *not* the end, because a server, a proxy or a hosting plan may cap the page
size below what was asked. Such a cap is logged, with what was asked and what came back.
If a whole full page shares one timestamp, the page size doubles. A page holding documents
outside the bounds asked for (unless it is a short first page: those are kept, and shaping
sets them aside) means the server ignores the time filter: paging on would repeat them for
ever, so that is a ``NightscoutBadResponse``.

Bounds per response (``tasks.bounded_http``): an overall deadline per request (not only per
read), a decoded-size cap (streamed, decompressed by Cascade a bounded piece at a time);
a page over the cap is asked again with a quarter of the ``count``. Each body is read by
``tasks.json_documents``: a document nested too deep or not UTF-8 is set aside with its
reason, and the rest are read. Retries (429, 5xx, timeouts, resets, the deadline) happen
here and only here, under ``RetryPolicy``. A redirect is reported as one, with its
Location, and not followed: the credential would travel with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Final, Self

import httpx
import polars as pl

from tasks.bounded_http import (
    ACCEPT_ENCODING,
    BodyLimits,
    BodyTooLarge,
    BodyUndecodable,
    DeadlineExceeded,
    bounded_transport,
    deadline,
    read_body,
    read_prefix,
)
from tasks.errors import (
    NightscoutAuthError,
    NightscoutBadResponse,
    NightscoutError,
    NightscoutNotFound,
    NightscoutRedirected,
    NightscoutTooLarge,
    NightscoutUnavailable,
)
from tasks.json_documents import NotDocuments, ParsedDocuments, SetAside, parse_documents
from tasks.redaction import redact_bytes, sanitize_url
from tasks.settings import NightscoutSettings

__all__ = ["COLLECTIONS", "Answer", "Collection", "Fetched", "NightscoutClient", "Refuse",
           "RequestRules", "RetryPolicy", "get_bounded", "retry_after_seconds", "sanitize_url",
           "tls_context"]

logger = logging.getLogger("cascade.nightscout")


@dataclass(frozen=True)
class Collection:
    """How one Nightscout collection is queried by time."""

    name: str
    path: str
    time_field: str
    numeric_time: bool


COLLECTIONS: Final[dict[str, Collection]] = {
    "entries": Collection("entries", "/api/v1/entries.json", "date", numeric_time=True),
    "treatments": Collection("treatments", "/api/v1/treatments.json", "created_at", False),
    "devicestatus": Collection("devicestatus", "/api/v1/devicestatus.json", "created_at", False),
}
_PROFILE_PATH: Final = "/api/v1/profile.json"
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_ERROR_EXCERPT: Final = 2048  # bytes of an error page read for the message


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for 429/5xx/timeouts/the deadline."""

    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(self.max_s, max(0.0, retry_after))
        ceiling = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Fetched:
    """The documents of one window (or the profiles), and how they came.

    Attributes:
        frame: the documents read, one row each.
        set_aside: documents that could not be read (too deep, not UTF-8), with the reason.
        requests: pages asked for.
        page_cap: the most documents the server answered to a page that was not the last,
            when that was fewer than asked (a cap set by the server or a proxy); else None.
    """

    frame: pl.DataFrame
    set_aside: tuple[SetAside, ...] = ()
    requests: int = 0
    page_cap: int | None = None


def tls_context() -> ssl.SSLContext:
    """The TLS settings every client shares, built once per process (and again only when
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` change): loading the CA bundle costs tens of
    milliseconds, which a client per window would pay every time."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@cache
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads the same two variables, else certifi's bundle


def _iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass
class NightscoutClient:
    """A pooled httpx client for one Nightscout site.

    Args:
        settings: the site's URL and credentials.
        page_size: records asked per request (Nightscout has no upper cap).
        timeout_s: timeout of each connect, read and write.
        retry: backoff policy for 429/5xx/timeouts/connection errors/the deadline.
        limits: overall deadline per request and the decoded size one answer may have.
        transport: an httpx transport, for tests (default: one that honours the deadline
            on the socket).
        sleep: the sleep function, for tests.
    """

    settings: NightscoutSettings
    page_size: int = 5000
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: BodyLimits = field(default_factory=BodyLimits)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    requests_made: int = 0

    def __post_init__(self) -> None:
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING,
                   "User-Agent": "cascade/0.1"}
        if self.settings.api_secret is not None:
            raw = self.settings.api_secret.get_secret_value().encode()
            headers["api-secret"] = hashlib.sha1(raw).hexdigest()
        params = {}
        if self.settings.token is not None:
            params["token"] = self.settings.token.get_secret_value()
        pool = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        self._http = httpx.Client(
            base_url=self.settings.url.rstrip("/"),
            headers=headers,
            params=params,
            timeout=self.timeout_s,
            transport=self.transport or bounded_transport(tls_context(), pool),
            follow_redirects=False,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def fetch_window(self, collection: str, start: datetime, end: datetime) -> Fetched:
        """Every record of ``collection`` with its time in ``[start, end)``.

        Raises:
            NightscoutAuthError, NightscoutNotFound, NightscoutRedirected: fail fast, with
                what to check.
            NightscoutUnavailable: the source kept failing past the retry budget.
            NightscoutBadResponse: a body that is not a JSON array of documents, or a server
                that ignores the time filter; ``NightscoutTooLarge`` when an answer stays
                over the size cap even for one document.
        """
        walk = _Walk(COLLECTIONS[collection], start, end, self.page_size)
        pages = list(self._pages(walk))
        frames = [p.frame for p in pages if p.frame.height]
        frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        fetched = Fetched(frame, tuple(s for p in pages for s in p.set_aside), walk.requests,
                          walk.page_cap)
        if walk.page_cap is not None:
            self._log_page_cap(walk, fetched)
        return fetched

    def _log_page_cap(self, walk: _Walk, fetched: Fetched) -> None:
        logger.warning(
            "Nightscout %s%s: asked for %d documents a page, the server answered at most %d "
            "on pages that were not the last (a page cap set by the site, a proxy or a "
            "hosting plan); paged on by time until a page brought nothing new: %d requests, "
            "%d documents", self._base(), walk.spec.path, walk.asked, walk.page_cap,
            walk.requests, fetched.frame.height + len(fetched.set_aside))

    def fetch_profiles(self) -> Fetched:
        """Every profile document of the site (Nightscout keeps few)."""
        try:
            page = self._get(_PROFILE_PATH, {"count": "10000"})
        except BodyTooLarge as exc:
            raise NightscoutTooLarge(
                f"Nightscout at {self._base()}{_PROFILE_PATH} answered more than "
                f"{exc.limit:,} bytes of profiles: check the site's profile collection; "
                "nothing was written") from None
        return Fetched(page.frame, page.set_aside, 1)

    def _pages(self, walk: _Walk) -> Iterator[ParsedDocuments]:
        while True:
            page = self._sized_page(walk)
            full = page.count >= walk.count
            inside = walk.bounds.inside(page.frame)
            self._check_bounds(page.frame, inside, walk.bounds, full=full, first=walk.pages == 1)
            fresh = walk.fresh(page)
            if fresh.count:
                yield fresh
            if not walk.advance(page, inside, full=full, widen=self._widen):
                return  # a page brought nothing older than what was taken: the window is done

    def _sized_page(self, walk: _Walk) -> ParsedDocuments:
        """The next page; a page over the size cap is asked again with a quarter the count."""
        while True:
            walk.requests += 1
            try:
                page = self._get(walk.spec.path, walk.params())
                walk.pages += 1
                return page
            except BodyTooLarge as exc:
                if walk.count <= 1:
                    raise NightscoutTooLarge(
                        f"Nightscout at {self._base()}{walk.spec.path} answered more than "
                        f"{exc.limit:,} bytes even for count=1 ({walk.bounds.text()}): one "
                        "document that large is not CGM data, or the server ignores count. "
                        "Check the site; nothing was written for this window") from None
                smaller = max(1, walk.count // 4)
                logger.warning("Nightscout %s%s: the answer to count=%d is over %s bytes; "
                               "asking for %d at a time", self._base(), walk.spec.path,
                               walk.count, f"{exc.limit:,}", smaller)
                walk.too_large = min(walk.too_large or walk.count, walk.count)
                walk.count = smaller

    def _check_bounds(self, page: pl.DataFrame, inside: pl.Series, bounds: _Bounds, *,
                      full: bool, first: bool) -> None:
        """Refuse a page holding documents outside the bounds asked for, unless it is the
        window's first page and a short one.

        A server that ignores ``find[...]`` (an old or non-Nightscout API, a proxy or cache
        that drops the query string) answers every page with the same newest documents:
        paging on would never end, or fetch them twice. The strays of a short first page
        are kept (shaping rejects those outside the window, with the reason) and logged;
        a page after it holding strays shows the server ignores the filter.
        """
        if inside.all():
            return
        strays = page.filter(~inside)
        where = f"{self._base()}{bounds.spec.path}"
        if first and not full:
            logger.warning(
                "Nightscout %s: %d of %d documents lie outside %s; kept, and shaping sets "
                "them aside", where, strays.height, page.height, bounds.text())
            return
        raise NightscoutBadResponse(
            f"Nightscout at {where} ignores the time filter: asked for {bounds.text()}, it "
            f"answered {strays.height} of {page.height} documents outside it (the first has "
            f"{bounds.spec.time_field} {_first_time(strays, bounds.spec)}), so paging back "
            "through the window would fetch the same documents again and again. Check that "
            "the URL is the Nightscout site itself, not a proxy or cache that drops the query "
            "string, and that its API supports find[...] filters; nothing was written for "
            "this window"
        )

    def _widen(self, walk: _Walk, height: int) -> int:
        """The next page size when a full page did not move the upper bound."""
        bounds = walk.bounds
        if walk.count >= _MAX_PAGE or (walk.too_large and walk.count * 2 >= walk.too_large):
            why = ("the page does not move" if walk.count >= _MAX_PAGE else
                   "a page large enough to move past them is over the size cap")
            raise NightscoutBadResponse(
                f"Nightscout at {self._base()}{bounds.spec.path} answered {height} documents "
                f"all at {bounds.spec.time_field} {bounds.upper}, even for count={walk.count}: "
                f"{why}, so paging cannot finish. Check the site's data and its count "
                "handling; nothing was written for this window"
            )
        return walk.count * 2

    def _get(self, path: str, params: dict[str, str]) -> ParsedDocuments:
        body, where, kind = self._request(path, params)
        body = redact_bytes(body)  # a server echoing the credential cannot land it
        stripped = body.removeprefix(_UTF8_BOM).lstrip()
        if not stripped.startswith(b"["):
            raise NightscoutBadResponse(
                f"Nightscout answered {where} with {kind}, not a JSON array (starts "
                f"{stripped[:60]!r}): is the URL a Nightscout site, and is its API enabled? "
                "Nothing was written for this window"
            )
        try:
            return parse_documents(body)
        except NotDocuments as exc:
            raise NightscoutBadResponse(
                f"Nightscout answered {where} with a body that is not valid JSON documents "
                f"({exc}); nothing was written for this window"
            ) from None

    def _request(self, path: str, params: dict[str, str]) -> tuple[bytes, str, str]:
        """The body of a 2xx answer (retried past transient failures), where it came from
        and its content type."""
        answer = get_bounded(self._http, path, params, rules=self._rules,
                             refuse=_raise_for_client_error, counted=self._counted)
        return answer.body, answer.where, answer.content_type

    @property
    def _rules(self) -> RequestRules:
        return RequestRules(self._base(), self.retry, self.limits, self.sleep,
                            "nothing was written for this window")

    def _counted(self) -> None:
        self.requests_made += 1

    def _base(self) -> str:
        return sanitize_url(self.settings.url.rstrip("/"))



@dataclass(frozen=True)
class RequestRules:
    """How a client's requests are bounded and retried, and what its messages say.

    Attributes:
        base: the site's URL as messages show it (``sanitize_url``).
        retry: backoff for 429/5xx/timeouts/resets/the deadline.
        limits: the overall deadline per request and the decoded-size cap.
        sleep: the sleep function (tests pass one that does not).
        consequence: the end of a failure message, what the failure left undone
            (``"nothing was written for this window"``).
    """

    base: str
    retry: RetryPolicy
    limits: BodyLimits
    sleep: Callable[[float], None]
    consequence: str


@dataclass(frozen=True)
class Answer:
    """The decoded body of a 2xx answer, where it came from (no credential) and its type."""

    body: bytes
    where: str
    content_type: str


Refuse = Callable[[int, str, str], None]
"""Raise for a 4xx a retry cannot fix: ``(status, error-page excerpt, where)``; the excerpt
is redacted. Return to have the answer treated as a generic failure."""


def get_bounded(http: httpx.Client, path: str, params: Mapping[str, str], *,
                rules: RequestRules, refuse: Refuse, counted: Callable[[], None],
                headers: Mapping[str, str] | None = None, shown: str | None = None) -> Answer:
    """GET ``path`` through the one retry layer of every Nightscout request (API v1 and v3).

    Each attempt is bounded (``rules.limits``: an overall deadline on the socket, a
    decoded-size cap); 429, 5xx, timeouts, resets and the deadline are retried under
    ``rules.retry`` (honouring ``Retry-After``); a redirect is refused with its Location
    and not followed (the credential would go with it); any other 4xx goes to ``refuse``.
    ``shown`` is the path as messages may show it, when the path itself carries a
    credential (API v3's JWT request); else the URL asked, sanitized. ``counted`` is called
    once per request sent.

    Raises:
        NightscoutRedirected: a 3xx.
        NightscoutUnavailable: the retry budget ran out.
        NightscoutBadResponse: a body Cascade cannot decode.
        BodyTooLarge: a body over the cap (the caller decides: ask for less, or fail).
        NightscoutError: what ``refuse`` raises, or a 4xx it let through.
    """
    where = f"{rules.base}{shown or path}"
    problem = "no attempt"
    for attempt in range(1, rules.retry.attempts + 1):
        retry_after = None
        try:
            with deadline(rules.limits.deadline_s) as at, \
                    http.stream("GET", path, params=params, headers=headers) as response:
                counted()
                where = f"{rules.base}{shown}" if shown else sanitize_url(response.request.url)
                if response.status_code < 300:
                    kind = response.headers.get("content-type", "unknown content type")
                    return Answer(read_body(response, rules.limits, at), where, kind)
                _refuse(response, where, at, rules, refuse)
                problem = f"HTTP {response.status_code}"
                retry_after = retry_after_seconds(response)
        except DeadlineExceeded:
            problem = _late(rules)
        except httpx.TimeoutException as exc:  # a read cut at the deadline, or its own
            problem = _late(rules) if _past(at) else type(exc).__name__
        except httpx.TransportError as exc:  # resets, refused connections, protocol errors
            problem = type(exc).__name__
        except BodyUndecodable as exc:
            raise NightscoutBadResponse(
                f"Nightscout answered {where} with a body Cascade cannot decode ({exc}); "
                f"{rules.consequence}") from None
        except httpx.HTTPError as exc:
            raise NightscoutError(f"Nightscout at {where}: {type(exc).__name__}: {exc}"
                                  ) from None
        if attempt == rules.retry.attempts:
            break
        wait = rules.retry.delay(attempt, retry_after)
        logger.warning("Nightscout %s: %s, retry %d/%d in %.1fs", where, problem, attempt,
                       rules.retry.attempts - 1, wait)
        rules.sleep(wait)
    raise NightscoutUnavailable(
        f"Nightscout at {rules.base} kept failing for {shown or path} ({problem}) after "
        f"{rules.retry.attempts} attempts: check the site is up, then re-run; "
        f"{rules.consequence}"
    )


def _refuse(response: httpx.Response, where: str, at: float, rules: RequestRules,
            refuse: Refuse) -> None:
    """Raise for a redirect or a 4xx that a retry cannot fix; return for 429/5xx."""
    status = response.status_code
    if status < 400:
        location = response.headers.get("location")
        target = sanitize_url(response.request.url.join(location)) if location else \
            "nowhere (no Location header)"
        raise NightscoutRedirected(
            f"Nightscout at {where} answered {status}, a redirect to {target}: Cascade "
            "does not follow redirects (the credential would go with it). If the site "
            "moved, set NIGHTSCOUT_URL (or the nightscout-site block's url) to the new "
            f"address; {rules.consequence}", target)
    if status in _RETRY_STATUSES:
        return
    excerpt = redact_bytes(read_prefix(response, _ERROR_EXCERPT, at, rules.limits.deadline_s))
    text = excerpt.decode("utf-8", "replace")
    refuse(status, text, where)
    raise NightscoutError(f"Nightscout answered {status} for {where}: {text[:200]!r}")


def _late(rules: RequestRules) -> str:
    return f"no complete answer within the {rules.limits.deadline_s:g} s deadline"


def _past(at: float) -> bool:
    return time.monotonic() >= at - 0.01


def _raise_for_client_error(status: int, text: str, where: str) -> None:
    if status in (401, 403):
        raise NightscoutAuthError(
            f"Nightscout answered {status} for {where}: check the API secret or token "
            "(NIGHTSCOUT_API_SECRET / NIGHTSCOUT_TOKEN, or the nightscout-site block); "
            "Nightscout delays every failed attempt, so fix it before retrying"
        )
    if status == 404:
        raise NightscoutNotFound(
            f"Nightscout answered 404 for {where}: check the site URL (NIGHTSCOUT_URL) "
            "points at the site root, without /api/v1"
        )


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds a response's ``Retry-After`` asks to wait (a number or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:  # the other form HTTP allows: an HTTP date
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return float(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


_UTF8_BOM: Final = b"\xef\xbb\xbf"


class _Walk:
    """Where paging back through one window stands: the bounds and count of the next page,
    what was taken at the boundary time, and what the server's answers showed."""

    def __init__(self, spec: Collection, start: datetime, end: datetime, count: int) -> None:
        self.spec = spec
        self.lower: int | str = _epoch_ms(start) if spec.numeric_time else _iso_ms(start)
        upper: int | str = _epoch_ms(end) if spec.numeric_time else _iso_ms(end)
        self.bounds = _Bounds(spec, self.lower, upper, "$lt")
        self.count = self.asked = count
        self.requests = self.pages = 0
        self.too_large: int | None = None  # the smallest count whose answer was too large
        self.page_cap: int | None = None
        self._seen = pl.Series("_id", [], pl.String)  # ids taken at the boundary time
        self._unreadable: set[str] = set()  # set-aside documents taken (their payload)
        self._short: int | None = None  # a page shorter than asked, not yet known as the end

    def params(self) -> dict[str, str]:
        return {**self.bounds.params(), "count": str(self.count)}

    def fresh(self, page: ParsedDocuments) -> ParsedDocuments:
        """What ``page`` holds that was not taken already."""
        upper = self.bounds.upper if self.bounds.upper_op == "$lte" else None
        frame = _drop_seen(page.frame, self.spec, upper, self._seen)
        aside = tuple(s for s in page.set_aside if s.payload not in self._unreadable)
        self._unreadable.update(s.payload for s in aside)
        if (frame.height or aside) and self._short is not None:  # a short page was not the end
            self.page_cap = max(self.page_cap or 0, self._short)
        return ParsedDocuments(frame, aside)

    def advance(self, page: ParsedDocuments, inside_mask: pl.Series, *, full: bool,
                widen: Callable[[_Walk, int], int]) -> bool:
        """Move the bounds past ``page`` (``inside_mask``: its documents inside the bounds);
        False when nothing can come after it."""
        self._short = page.count if 0 < page.count < self.count else None
        self.asked = max(self.asked, self.count)
        inside = page.frame.filter(inside_mask) if page.frame.height else page.frame
        oldest = _oldest(inside, self.spec) if inside.height else None
        if oldest is None or (oldest == self.bounds.upper and self.bounds.upper_op == "$lte"):
            if not full:
                return False  # everything at or before the bound is taken
            self.count = widen(self, page.count)  # a full page at one time: ask for more
            if oldest is not None:
                self._seen = pl.concat([self._seen, _ids_at(inside, self.spec, oldest)])
            return True
        self.bounds = _Bounds(self.spec, self.lower, oldest, "$lte")
        self._seen = _ids_at(inside, self.spec, oldest)
        return True


_ISO: Final = "%Y-%m-%dT%H:%M:%S%.f%#z"
_MAX_PAGE: Final = 1 << 22  # a page this size, all at one time, is not a real site's data


@dataclass(frozen=True)
class _Bounds:
    """The time range one page asks for: ``lower <= time`` and ``time < upper`` (``$lt``)
    or ``time <= upper`` (``$lte``), compared as the server compares them."""

    spec: Collection
    lower: int | str
    upper: int | str
    upper_op: str

    def params(self) -> dict[str, str]:
        field = self.spec.time_field
        return {f"find[{field}][$gte]": str(self.lower),
                f"find[{field}][{self.upper_op}]": str(self.upper)}

    def inside(self, page: pl.DataFrame) -> pl.Series:
        """Whether each document's time is inside the bounds (a missing time is not).

        Text times are inside if they are as text (how Nightscout compares ``created_at``)
        or as instants (a server comparing dates would return those); the instants are
        parsed only when some text falls outside.
        """
        if page.height == 0:
            return pl.Series("inside", [], pl.Boolean)
        time = _comparable_time(page, self.spec)
        inside = page.select(self._between(time, self.lower, self.upper).fill_null(False)
                             .alias("inside")).to_series()
        if inside.all() or self.spec.numeric_time or \
                page.schema.get(self.spec.time_field) != pl.String:
            return inside
        at = pl.col(self.spec.time_field).str.to_datetime(
            _ISO, time_zone="UTC", strict=False, time_unit="ms")
        lower, upper = (datetime.fromisoformat(str(b)) for b in (self.lower, self.upper))
        as_instant = page.select(self._between(at, lower, upper).fill_null(False)).to_series()
        return inside | as_instant

    def _between(self, time: pl.Expr, lower: int | str | datetime, upper: int | str | datetime
                 ) -> pl.Expr:
        below = time < upper if self.upper_op == "$lt" else time <= upper
        return (time >= lower) & below

    def text(self) -> str:
        close = ")" if self.upper_op == "$lt" else "]"
        return f"{self.spec.time_field} in [{self.lower}, {self.upper}{close}"


def _comparable_time(page: pl.DataFrame, spec: Collection) -> pl.Expr:
    """The time field as the server's filter compares it: a number (``date``, text that
    reads as one too) or text (``created_at``); null where it cannot be compared."""
    dtype = page.schema.get(spec.time_field)
    if spec.numeric_time and dtype is not None and (dtype.is_numeric() or dtype == pl.String):
        return pl.col(spec.time_field).cast(pl.Float64, strict=False)
    if not spec.numeric_time and dtype == pl.String:
        return pl.col(spec.time_field)
    return pl.lit(None, pl.Float64 if spec.numeric_time else pl.String)


def _first_time(page: pl.DataFrame, spec: Collection) -> str:
    if spec.time_field not in page.columns:
        return "missing"
    return repr(page.get_column(spec.time_field).cast(pl.String, strict=False)[0])


def _time_is(spec: Collection, value: int | str) -> pl.Expr:
    if spec.numeric_time:
        return pl.col(spec.time_field).cast(pl.Float64, strict=False) == float(value)
    return pl.col(spec.time_field).cast(pl.String) == str(value)


def _drop_seen(
    page: pl.DataFrame, spec: Collection, upper: int | str | None, seen: pl.Series
) -> pl.DataFrame:
    if upper is None or seen.len() == 0 or page.height == 0 or "_id" not in page.columns:
        return page
    already = _time_is(spec, upper) & pl.col("_id").cast(pl.String).is_in(seen.implode())
    return page.filter(~already)


def _ids_at(page: pl.DataFrame, spec: Collection, upper: int | str) -> pl.Series:
    if "_id" not in page.columns:
        return pl.Series("_id", [], pl.String)
    return page.filter(_time_is(spec, upper)).get_column("_id").cast(pl.String)


def _oldest(page: pl.DataFrame, spec: Collection) -> int | str:
    """The oldest time of documents inside the bounds (so all have one)."""
    column = page.get_column(spec.time_field)
    if spec.numeric_time:
        oldest = column.cast(pl.Float64, strict=False).min()
        return int(oldest) if isinstance(oldest, (int, float)) else 0
    return str(column.cast(pl.String).min())
