"""Nightscout v1 API client: time-windowed, paged, retried, parsed straight into Polars.

Paging: Nightscout returns the newest ``count`` records matching a filter. We ask for
``[start, end)``, then move the upper bound to the oldest time on the page with ``$lte``
(so records sharing the boundary time are never skipped) and drop the records already
seen at that boundary time. If a whole page shares one timestamp, the page size doubles.
The window is exhausted when a page comes back shorter than ``count``. A full page holding
documents outside the bounds asked for means the server ignores the time filter: paging on
would repeat them forever, so that is a ``NightscoutBadResponse``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Final, Self

import httpx
import polars as pl

from tasks.errors import (
    NightscoutAuthError,
    NightscoutBadResponse,
    NightscoutError,
    NightscoutNotFound,
    NightscoutUnavailable,
)
from tasks.settings import NightscoutSettings

__all__ = ["COLLECTIONS", "Collection", "NightscoutClient", "RetryPolicy", "sanitize_url"]

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


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for 429/5xx/timeouts."""

    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(self.max_s, max(0.0, retry_after))
        ceiling = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def tls_context() -> ssl.SSLContext:
    """The TLS settings every client shares, built once per process (and again only when
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` change): loading the CA bundle costs tens of
    milliseconds, which a client per window would pay every time."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@cache
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads the same two variables, else certifi's bundle


def sanitize_url(url: httpx.URL | str) -> str:
    """Return ``url`` with credentials in its query (token, secret) replaced by ``***``."""
    parsed = httpx.URL(str(url))
    params = [
        (k, "***" if k.lower() in {"token", "secret", "api_secret", "api-secret"} else v)
        for k, v in parsed.params.multi_items()
    ]
    return str(parsed.copy_with(params=params, username=None, password=None))


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
        timeout_s: per-request timeout.
        retry: backoff policy for 429/5xx/timeouts/connection errors.
        transport: an httpx transport, for tests.
        sleep: the sleep function, for tests.
    """

    settings: NightscoutSettings
    page_size: int = 5000
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    requests_made: int = 0

    def __post_init__(self) -> None:
        headers = {"Accept": "application/json", "User-Agent": "cascade/0.1"}
        if self.settings.api_secret is not None:
            raw = self.settings.api_secret.get_secret_value().encode()
            headers["api-secret"] = hashlib.sha1(raw).hexdigest()
        params = {}
        if self.settings.token is not None:
            params["token"] = self.settings.token.get_secret_value()
        self._http = httpx.Client(
            base_url=self.settings.url.rstrip("/"),
            headers=headers,
            params=params,
            timeout=self.timeout_s,
            transport=self.transport,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            verify=tls_context(),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def fetch_window(self, collection: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Every record of ``collection`` with its time in ``[start, end)``, as one frame.

        Raises:
            NightscoutAuthError, NightscoutNotFound: fail fast, with what to check.
            NightscoutUnavailable: the source kept failing past the retry budget.
            NightscoutBadResponse: a body that is not a JSON array of documents.
        """
        spec = COLLECTIONS[collection]
        pages = list(self._pages(spec, start, end))
        frames = [p for p in pages if p.height]
        if not frames:
            return pl.DataFrame()
        return pl.concat(frames, how="diagonal_relaxed")

    def fetch_profiles(self) -> pl.DataFrame:
        """Every profile document of the site (Nightscout keeps few)."""
        return self._get_frame(_PROFILE_PATH, {"count": "10000"})

    def _pages(self, spec: Collection, start: datetime, end: datetime) -> Iterator[pl.DataFrame]:
        lower: int | str = _epoch_ms(start) if spec.numeric_time else _iso_ms(start)
        upper: int | str = _epoch_ms(end) if spec.numeric_time else _iso_ms(end)
        upper_op, count, seen_at_upper = "$lt", self.page_size, pl.Series("_id", [], pl.String)
        while True:
            bounds = _Bounds(spec, lower, upper, upper_op)
            page = self._get_frame(spec.path, {**bounds.params(), "count": str(count)})
            full = page.height >= count
            self._check_bounds(page, bounds, full=full)
            yield _drop_seen(page, spec, upper, seen_at_upper)
            if not full:
                return
            oldest = _oldest(page, spec, self._where(httpx.URL(self._base() + spec.path)))
            if oldest == upper:  # the whole page shares the bound's time: widen, not loop
                count = self._widen(count, bounds, page.height)
            upper, upper_op = oldest, "$lte"
            seen_at_upper = _ids_at(page, spec, upper)

    def _check_bounds(self, page: pl.DataFrame, bounds: _Bounds, *, full: bool) -> None:
        """Refuse a full page holding documents outside the bounds asked for.

        A server that ignores ``find[...]`` (an old or non-Nightscout API, a proxy or cache
        that drops the query string) answers every page with the same newest documents:
        paging on would never end, or fetch them twice. A short page ends the window
        instead, so its strays are kept (shaping rejects those outside the window, with
        the reason) and only logged here.
        """
        strays = page.filter(~bounds.holds(page))
        if strays.height == 0:
            return
        where = f"{self._base()}{bounds.spec.path}"
        if not full:
            logger.warning(
                "Nightscout %s: %d of %d documents lie outside %s; the last page, so they "
                "are kept and shaping sets them aside", where, strays.height, page.height,
                bounds.text(),
            )
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

    def _widen(self, count: int, bounds: _Bounds, height: int) -> int:
        """The next page size when a full page did not move the upper bound."""
        if count >= _MAX_PAGE:
            raise NightscoutBadResponse(
                f"Nightscout at {self._base()}{bounds.spec.path} answered {height} documents "
                f"all at {bounds.spec.time_field} {bounds.upper}, even for count={count}: the "
                "page does not move, so paging cannot finish. Check the site's data and its "
                "count handling; nothing was written for this window"
            )
        return count * 2

    def _get_frame(self, path: str, params: dict[str, str]) -> pl.DataFrame:
        response = self._request(path, params)
        return _parse_documents(response, self._where(response.request.url))

    def _request(self, path: str, params: dict[str, str]) -> httpx.Response:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                response = self._http.get(path, params=params)
                self.requests_made += 1
            except httpx.TransportError as exc:  # timeouts, resets, refused connections
                problem = f"{type(exc).__name__}"
                retry_after = None
            else:
                if response.status_code < 400:
                    return response
                _raise_for_client_error(response, self._where(response.request.url))
                problem = f"HTTP {response.status_code}"
                retry_after = _retry_after(response)
            if attempt == self.retry.attempts:
                break
            wait = self.retry.delay(attempt, retry_after)
            logger.warning(
                "Nightscout %s%s: %s, retry %d/%d in %.1fs",
                self._base(), path, problem, attempt, self.retry.attempts - 1, wait,
            )
            self.sleep(wait)
        raise NightscoutUnavailable(
            f"Nightscout at {self._base()} kept failing for {path} ({problem}) after "
            f"{self.retry.attempts} attempts: check the site is up, then re-run; "
            "nothing was written for this window"
        )

    def _base(self) -> str:
        return sanitize_url(self.settings.url.rstrip("/"))

    def _where(self, url: httpx.URL) -> str:
        return sanitize_url(url)


def _raise_for_client_error(response: httpx.Response, where: str) -> None:
    status = response.status_code
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
    if status not in _RETRY_STATUSES:
        raise NightscoutError(f"Nightscout answered {status} for {where}: {response.text[:200]!r}")


def _retry_after(response: httpx.Response) -> float | None:
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


def _parse_documents(response: httpx.Response, where: str) -> pl.DataFrame:
    """Parse a JSON array of documents with Polars; anything else is a clear error."""
    body = response.content.removeprefix(_UTF8_BOM)
    stripped = body.lstrip()
    if not stripped.startswith(b"["):
        kind = response.headers.get("content-type", "unknown content type")
        raise NightscoutBadResponse(
            f"Nightscout answered {response.status_code} for {where} with {kind}, not a JSON "
            f"array (starts {stripped[:60]!r}): is the URL a Nightscout site, and is its API "
            "enabled? Nothing was written for this window"
        )
    if stripped.rstrip() == b"[]":
        return pl.DataFrame()
    try:
        body.decode("utf-8")  # Polars would let some broken bytes through into the rows
        try:
            frame = pl.read_json(io.BytesIO(body), infer_schema_length=None)
        except (pl.exceptions.PolarsError, ValueError):
            frame = _read_uneven(body)  # valid JSON whose documents disagree on a field's type
        if frame.width == 0:
            frame = _read_uneven(body)  # only empty documents: Polars may lose them
    except (pl.exceptions.PolarsError, ValueError) as exc:  # all mean: not the JSON we expect
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with a body that is not valid JSON documents "
            f"({type(exc).__name__}: {str(exc)[:160]}); nothing was written for this window"
        ) from None
    return frame


_UTF8_BOM: Final = b"\xef\xbb\xbf"


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _read_uneven(body: bytes) -> pl.DataFrame:
    """Documents whose fields disagree on type across documents (an object in one, a number
    in another): each such field is read on its own, and kept as JSON text if it still
    cannot be one column. The rare slow path; the usual body never comes here.

    Raises:
        ValueError: the body is not a JSON array of objects.
    """
    docs = json.loads(body, parse_constant=_refuse_constant)
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise ValueError("an array holding something other than JSON objects")
    keys = list(dict.fromkeys(k for d in docs for k in d))
    if not keys:
        return pl.DataFrame(height=len(docs))  # documents without a single field
    return pl.DataFrame([_read_field(key, [d.get(key) for d in docs]) for key in keys])


def _read_field(key: str, values: list[object]) -> pl.Series:
    """One field of every document as a column; as JSON text if its types cannot mix."""
    rows = json.dumps([{key: v} for v in values], separators=(",", ":")).encode()
    try:
        column = pl.read_json(io.BytesIO(rows), infer_schema_length=None)
        if column.height == len(values) and column.columns == [key]:
            return column.to_series()
    except (pl.exceptions.PolarsError, ValueError):
        pass
    text = [v if v is None or isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for v in values]
    return pl.Series(key, text, pl.String())


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

    def holds(self, page: pl.DataFrame) -> pl.Expr:
        """Whether each document's time is inside the bounds (a missing time is not).

        Text times are inside if they are as text (how Nightscout compares ``created_at``)
        or as instants (a server comparing dates would return those).
        """
        inside = self._between(_comparable_time(page, self.spec), self.lower, self.upper)
        if not self.spec.numeric_time and page.schema.get(self.spec.time_field) == pl.String:
            at = pl.col(self.spec.time_field).str.to_datetime(
                _ISO, time_zone="UTC", strict=False, time_unit="ms")
            lower, upper = (datetime.fromisoformat(str(b)) for b in (self.lower, self.upper))
            inside = inside | self._between(at, lower, upper)
        return inside.fill_null(False)

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
    page: pl.DataFrame, spec: Collection, upper: int | str, seen: pl.Series
) -> pl.DataFrame:
    if seen.len() == 0 or page.height == 0 or "_id" not in page.columns:
        return page
    already = _time_is(spec, upper) & pl.col("_id").cast(pl.String).is_in(seen.implode())
    return page.filter(~already)


def _ids_at(page: pl.DataFrame, spec: Collection, upper: int | str) -> pl.Series:
    if "_id" not in page.columns:
        return pl.Series("_id", [], pl.String)
    return page.filter(_time_is(spec, upper)).get_column("_id").cast(pl.String)


def _oldest(page: pl.DataFrame, spec: Collection, where: str) -> int | str:
    if spec.time_field not in page.columns:
        raise NightscoutBadResponse(
            f"Nightscout answered {where} with documents that have no {spec.time_field!r}"
        )
    column = page.get_column(spec.time_field)
    if spec.numeric_time:
        oldest = column.cast(pl.Float64, strict=False).min()
        return int(oldest) if isinstance(oldest, (int, float)) else 0
    return str(column.cast(pl.String).min())
