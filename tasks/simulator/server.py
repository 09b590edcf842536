"""A local HTTP server speaking Nightscout's v1 API (and v3, see ``v3.py``) over simulated sites.

One server hosts many sites under a path prefix (``/a/api/v1/...``); the first site is also
served at the root (``/api/v1/...``). Query semantics follow Nightscout v1: ``find[...]``
filters with ``$gte/$gt/$lte/$lt/$ne``, numeric ``date`` on entries, string ``created_at`` on
treatments and devicestatus, default ``count`` (10 entries/devicestatus, 100 treatments or 1000
with a ``find``), newest first, and a silent 4-day window when no date filter is given.
Days are generated lazily and kept, pre-serialised, in an LRU cache per (site, day, collection).
Documents changed after generation (edits, deletions, late uploads: ``SiteChanges``) are laid
over the days they touch, so v1 reads see them as Nightscout would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Self
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from numpy.typing import NDArray

from tasks.simulator import hostile
from tasks.simulator.changes import SiteChanges
from tasks.simulator.generate import (
    Document,
    SiteConfig,
    default_site,
    generate_collection,
    generate_profiles,
)
from tasks.simulator.v3 import Answer, JwtIssuer, V3Api

__all__ = ["Fault", "SimulatorServer", "start_simulator"]


def _std_dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


_dumps: Callable[[Any], bytes] = _std_dumps
try:  # orjson ships with Prefect and writes the same compact JSON ~4x faster
    import orjson

    _dumps = orjson.dumps
except ImportError:  # pragma: no cover - the standard library is enough, only slower
    pass

logger = logging.getLogger("cascade.simulator")

_DAY_MS: Final = 86_400_000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_DEFAULT_WINDOW_MS: Final = 4 * _DAY_MS
_FIND: Final = re.compile(r"^find\[([^\]]+)\](?:\[([^\]]+)\])?$")
_OBJECT_ID: Final = re.compile(r"^[0-9a-f]{24}$")
_ORDER_OPS: Final = frozenset({"$gte", "$gt", "$lte", "$lt", "$eq"})
_ROUTES: Final[dict[str, tuple[str, str | None]]] = {
    "entries": ("entries", None),
    "entries/sgv": ("entries", "sgv"),
    "entries/mbg": ("entries", "mbg"),
    "entries/cal": ("entries", "cal"),
    "treatments": ("treatments", None),
    "devicestatus": ("devicestatus", None),
    "profile": ("profile", None),
    "status": ("status", None),
}
_TIME_FIELD: Final = {"entries": "date", "treatments": "created_at", "devicestatus": "created_at"}
_DATE_FIELDS: Final = {
    "entries": frozenset({"date", "dateString"}),
    "treatments": frozenset({"created_at"}),
    "devicestatus": frozenset({"created_at"}),
}
_REASONS: Final = {
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class Fault:
    """One injected misbehaviour, consumed by the next ``remaining`` matching requests."""

    status: int | None = None
    body: str | None = None
    content_type: str = "application/json"
    retry_after: float | None = None
    truncate: bool = False
    delay_s: float = 0.0
    path: str | None = None
    remaining: int = 1
    reset: bool = False
    # hostile servers (tasks.simulator.hostile)
    encoding: str | None = None  # send the answer compressed: gzip, deflate or zstd
    bomb: int | None = None  # instead, a compressed empty array this many bytes decoded
    huge: int | None = None  # instead, this many bytes of documents, whatever count asked
    trickle_s: float = 0.0  # send the answer a piece at a time, this long between pieces
    trickle_headers: bool = False  # ... from the status line on, one byte at a time
    redirect: str | None = None  # answer 301 to this Location
    echo_status: int | None = None  # answer this status, echoing the request's headers
    mutate: hostile.BodyMutation | None = None  # change the answer's body

    def matches(self, path: str, site_path: str) -> bool:
        """Whether this fault applies to a request for ``path`` (full or site-relative)."""
        return self.path is None or path.startswith(self.path) or site_path.startswith(self.path)


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False  # send half the body, then reset the connection
    chunks: Iterator[bytes] | None = None  # a body streamed until the connection closes
    trickle_s: float = 0.0  # seconds between the pieces of the answer
    trickle_headers: bool = False  # trickle the status line and headers too


@dataclass(frozen=True)
class _Cond:
    field: str
    op: str
    value: str

    @property
    def number(self) -> float:
        """The value as Nightscout's numeric parse would read it (NaN when not a number)."""
        try:
            return float(self.value)
        except ValueError:
            return math.nan


@dataclass(frozen=True)
class _Index:
    """One day of one collection, pre-serialised.

    Keys (``ms``, ``text``, ``types``) are in ascending time order; ``blob`` holds the JSON
    documents newest first, comma-joined, so any run of consecutive documents is one slice:
    ascending position ``i`` spans ``blob[starts[i]:ends[i]]``.
    """

    ms: NDArray[np.int64]
    text: NDArray[np.str_] | None
    types: NDArray[np.str_] | None
    blob: bytes
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]

    def piece(self, newest: int, oldest: int) -> bytes:
        """Documents at ascending positions ``newest`` down to ``oldest``, as one JSON run."""
        return self.blob[self.starts[newest] : self.ends[oldest]]


@dataclass(frozen=True)
class _Query:
    collection: str
    type_: str | None
    time_conds: list[_Cond]
    other_conds: list[_Cond]
    count: int
    low_ms: int | None  # the silent 4-day window, when no date filter was given
    now_ms: int


# ----------------------------------------------------------------------------- day cache


@lru_cache(maxsize=1500)
def _day_index(site: SiteConfig, ordinal: int, collection: str) -> _Index:
    """Generate, sort (time, then _id) and serialise one (site, day, collection), once."""
    return _index_of(generate_collection(site, date.fromordinal(ordinal), collection), collection)


def _index_of(docs: list[Document], collection: str) -> _Index:
    """Sort (time, then _id) and serialise one day's documents of ``collection``."""
    text = None
    if collection == "entries":
        ms = np.array([d["date"] for d in docs], dtype=np.int64)
    else:  # created_at is always UTC "...000Z" here: strip the Z for numpy
        text = np.array([d["created_at"] for d in docs], dtype=str)
        stamps = np.array([t[:-1] for t in text.tolist()], dtype="datetime64[ms]")
        ms = stamps.astype(np.int64)
    order = np.lexsort((np.array([d["_id"] for d in docs], dtype=str), ms))
    docs = [docs[i] for i in order.tolist()]
    types = (np.array([d.get("type", "") for d in docs], dtype=str) if collection == "entries"
             else None)
    blob, starts, ends = _pack([_dumps(d) for d in docs])
    return _Index(ms[order], None if text is None else text[order], types, blob, starts, ends)


def _pack(fragments: list[bytes]) -> tuple[bytes, NDArray[np.int64], NDArray[np.int64]]:
    """Join ascending fragments newest first; return the blob and each one's span in it."""
    sizes = np.array([len(f) for f in fragments[::-1]], dtype=np.int64)
    starts_desc = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]]).astype(np.int64)
    ends_desc = starts_desc + sizes
    return b",".join(fragments[::-1]), starts_desc[::-1].copy(), ends_desc[::-1].copy()


# ----------------------------------------------------------------------------- query parsing


def _parse_conds(params: list[tuple[str, str]]) -> list[_Cond]:
    conds = []
    for key, value in params:
        match = _FIND.match(key)
        if match is None:
            continue
        name, op = match.group(1), match.group(2)
        if op is not None and not op.startswith("$"):
            name, op = f"{name}.{op}", None
        conds.append(_Cond(name, op or "$eq", value))
    return conds


def _count(params: dict[str, str], collection: str, has_find: bool) -> int:
    default = 10
    if collection == "treatments":
        default = 1000 if has_find else 100
    try:
        value = int(params.get("count", ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _build_query(collection: str, type_: str | None, query: str, now_ms: int) -> _Query:
    params = parse_qsl(query, keep_blank_values=True)
    conds = _parse_conds(params)
    if collection == "entries":
        type_ = type_ or next((c.value for c in conds if c.field == "type" and c.op == "$eq"), None)
        conds = [c for c in conds if not (c.field == "type" and c.op == "$eq")]
    time_field = _TIME_FIELD[collection]
    time_conds = [c for c in conds if c.field == time_field and c.op in _ORDER_OPS]
    other = [c for c in conds if c not in time_conds]
    dated = any(c.field in _DATE_FIELDS[collection] for c in conds)
    return _Query(
        collection=collection,
        type_=type_,
        time_conds=time_conds,
        other_conds=other,
        count=_count(dict(params), collection, bool(conds) or type_ is not None),
        low_ms=None if dated else now_ms - _DEFAULT_WINDOW_MS,
        now_ms=now_ms,
    )


# ----------------------------------------------------------------------------- query execution


def _value_ordinal(cond: _Cond, numeric: bool) -> int | None:
    """UTC day ordinal a filter value points at (None when it cannot be read)."""
    if numeric:
        number = cond.number
        return None if math.isnan(number) else int(number) // _DAY_MS + _EPOCH_ORDINAL
    try:
        return date.fromisoformat(cond.value[:10]).toordinal()
    except ValueError:
        return None


def _day_span(q: _Query, first: int, last: int) -> tuple[int, int]:
    """Inclusive UTC day ordinals that may hold matches, widened a day for local strings."""
    if q.low_ms is not None:
        first = max(first, q.low_ms // _DAY_MS + _EPOCH_ORDINAL)
    bounded = q.time_conds + [c for c in q.other_conds if c.field == "dateString"]
    for cond in bounded:
        numeric = cond.field == "date"
        ordinal = _value_ordinal(cond, numeric)
        if ordinal is None:
            if numeric:
                return 1, 0  # NaN compares false: nothing matches
            continue
        margin = 0 if numeric else 1
        if cond.op in ("$gte", "$gt", "$eq"):
            first = max(first, ordinal - margin)
        if cond.op in ("$lte", "$lt", "$eq"):
            last = min(last, ordinal + margin)
    return first, last


def _slice(index: _Index, q: _Query) -> tuple[int, int]:
    """Positions [lo, hi) of the day's sorted documents inside the time filters."""
    lo = 0
    hi = int(np.searchsorted(index.ms, q.now_ms, side="right"))
    if q.low_ms is not None:
        lo = int(np.searchsorted(index.ms, q.low_ms, side="left"))
    for cond in q.time_conds:
        keys: Any = index.ms if index.text is None else index.text
        value: Any = cond.number if index.text is None else cond.value
        if cond.op in ("$gte", "$eq"):
            lo = max(lo, int(np.searchsorted(keys, value, side="left")))
        if cond.op == "$gt":
            lo = max(lo, int(np.searchsorted(keys, value, side="right")))
        if cond.op in ("$lte", "$eq"):
            hi = min(hi, int(np.searchsorted(keys, value, side="right")))
        if cond.op == "$lt":
            hi = min(hi, int(np.searchsorted(keys, value, side="left")))
    return lo, hi


def _lookup(doc: Document, dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _matches(doc: Document, cond: _Cond) -> bool:
    """Mongo-like comparison: numbers compare numerically, everything else as strings."""
    value = _lookup(doc, cond.field)
    if value is None:
        return cond.op == "$ne"
    wanted: Any = cond.value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        wanted = cond.number
    else:
        value = str(value)
    if cond.op in ("$eq", "$ne"):
        return bool(value == wanted) == (cond.op == "$eq")
    if isinstance(wanted, float) and math.isnan(wanted):
        return False
    compare = {
        "$gte": value >= wanted,
        "$gt": value > wanted,
        "$lte": value <= wanted,
        "$lt": value < wanted,
    }
    return bool(compare.get(cond.op, False))


def _day_matches(index: _Index, q: _Query, need: int) -> tuple[list[bytes], int]:
    """Up to ``need`` matching documents of one day, newest first, and how many."""
    lo, hi = _slice(index, q)
    if hi <= lo:
        return [], 0
    if q.type_ is None and not q.other_conds:
        oldest = max(lo, hi - need)
        return [index.piece(hi - 1, oldest)], hi - oldest
    positions: Sequence[int] = range(hi - 1, lo - 1, -1)
    if q.type_ is not None and index.types is not None:
        positions = (np.nonzero(index.types[lo:hi] == q.type_)[0] + lo)[::-1].tolist()
    found: list[bytes] = []
    for i in positions:
        piece = index.piece(i, i)
        if all(_matches(json.loads(piece), c) for c in q.other_conds):
            found.append(piece)
            if len(found) == need:
                break
    return found, len(found)


# ----------------------------------------------------------------------------- the server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    simulator: SimulatorServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, a small body waits
    # for the client's delayed ACK of the headers (~40 ms a request on loopback).
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        """Answer one GET through the simulator, applying any injected fault."""
        self._answer("GET")

    def do_POST(self) -> None:
        """A write (API v3, or v1 uploads)."""
        self._answer("POST")

    def do_PATCH(self) -> None:
        """An API v3 PATCH."""
        self._answer("PATCH")

    def do_DELETE(self) -> None:
        """An API v3 or v1 DELETE."""
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        response = self.server.simulator.respond(parts.path, parts.query, self.headers,
                                                 method=method, body=body)
        try:
            if response.chunks is not None or response.trickle_s:
                self._write_slowly(response)
                return
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if response.reset:
                self._reset_mid_body(response.body)
                return
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to do

    def _write_slowly(self, response: _Response) -> None:
        """Write the answer piece by piece: trickled (a pause between pieces) and/or
        streamed without a length (the connection closes after it)."""
        head = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'OK')}",
                f"Content-Type: {response.content_type}",
                *(f"{k}: {v}" for k, v in response.headers)]
        if response.chunks is None:
            head.append(f"Content-Length: {len(response.body)}")
        else:
            head.append("Connection: close")
            self.close_connection = True
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode()
        step = 1 if response.trickle_headers else len(raw_head)
        pieces: Iterator[bytes] = (raw_head[i:i + step] for i in range(0, len(raw_head), step))
        body = response.chunks if response.chunks is not None else (
            response.body[i:i + 16] for i in range(0, len(response.body), 16))
        for piece in _chain(pieces, body):
            self.wfile.write(piece)
            self.wfile.flush()
            if response.trickle_s:
                time.sleep(response.trickle_s)

    def _reset_mid_body(self, body: bytes) -> None:
        """Write half of ``body`` (Content-Length says all of it), then send a TCP reset."""
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests go to ``request_log`` and debug logging instead of stderr."""
        logger.debug("%s " + format, self.address_string(), *args)


@dataclass
class SimulatorServer:
    """Nightscout v1 over simulated sites, on a local port, in a background thread.

    Args:
        sites: the sites to host; the first is also served at the root.
        now: a fixed "now" (data ends there); None follows the wall clock.
        host, port: where to listen (port 0 picks a free port).
        history_days: data starts this many days before ``now``.
        auth_fail_delay_s: delay per failed auth (Nightscout uses 5 s; 0 keeps tests fast).
        v3_enabled: serve API v3 (False: 404, as a server before v3 does).
        jwt_lifetime_s: how long a v3 JWT lasts (8 h on Nightscout).
    """

    sites: list[SiteConfig]
    now: datetime | None = None
    host: str = "127.0.0.1"
    port: int = 0
    history_days: int = 400
    auth_fail_delay_s: float = 0.0
    page_cap: int | None = None  # answer at most this many documents, whatever count asks
    v3_enabled: bool = True
    jwt_lifetime_s: float = 8 * 3600
    request_log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("SimulatorServer needs at least one site")
        if self.now is not None and self.now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        self._by_id = {s.site_id: s for s in self.sites}
        start = self.now or datetime.now(UTC)
        self.first_day = start.astimezone(UTC).date() - timedelta(days=self.history_days)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._http = _HTTPServer((self.host, self.port), _Handler)
        self._http.simulator = self
        self.port = int(self._http.server_address[1])
        self._init_changes()

    # -- lifecycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Self:
        """Serve in a background daemon thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="nightscout-simulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        self._http.serve_forever()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._http.server_close()

    # -- addresses and clock

    @property
    def url(self) -> str:
        """Base URL of the first site, served at the root."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, site_id: str) -> str:
        """Base URL of ``site_id`` (give it to a client as the Nightscout site URL)."""
        if site_id not in self._by_id:
            raise KeyError(f"no simulated site {site_id!r}; have {sorted(self._by_id)}")
        return f"{self.url}/{site_id}"

    def current_time(self) -> datetime:
        """The server's "now": fixed if given, else the wall clock."""
        return self.now if self.now is not None else datetime.now(UTC)

    # -- fault injection

    def inject(
        self,
        status: int | None = None,
        *,
        body: str | None = None,
        content_type: str = "application/json",
        retry_after: float | None = None,
        truncate: bool = False,
        delay_s: float = 0.0,
        times: int = 1,
        path: str | None = None,
        reset: bool = False,
        **hostile_behaviour: Any,
    ) -> Fault:
        """Queue a fault for the next ``times`` requests (under ``path``, if given).

        ``reset`` answers normally but resets the connection half-way through the body;
        ``hostile_behaviour`` takes ``Fault``'s hostile-server fields (``encoding``, ``bomb``,
        ``huge``, ``trickle_s``, ``trickle_headers``, ``redirect``, ``echo_status``,
        ``mutate``).
        """
        fault = Fault(status, body, content_type, retry_after, truncate, delay_s, path, times,
                      reset, **hostile_behaviour)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str, site_path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path, site_path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- request handling

    def respond(self, path: str, query: str, headers: Any, *, method: str = "GET",
                body: bytes = b"") -> _Response:
        """The full answer to ``method path?query``, faults applied, logged."""
        site, site_path = self._resolve_site(path)
        fault = self._take_fault(path, site_path)
        if fault is not None and fault.delay_s > 0:
            time.sleep(fault.delay_s)
        response = self._fault_response(fault)
        if response is None and site is not None and self.v3.handles(site_path, method):
            response = self._answer_v3(site, method, site_path, query, headers, body)
        if response is None:
            response = self._answer(site, site_path, query, headers)
            if fault is not None and fault.reset:
                response = _Response(response.status, response.body, response.content_type,
                                     response.headers, reset=True)
            if fault is not None and fault.truncate:
                response = _Response(
                    response.status,
                    response.body[: len(response.body) // 2],
                    response.content_type,
                    response.headers,
                )
        response = _hostile(fault, response, path, query, headers)
        with self._lock:
            self.request_log.append((path, query, response.status))
        return response

    def _fault_response(self, fault: Fault | None) -> _Response | None:
        if fault is None or (fault.status is None and fault.body is None):
            return None
        status = fault.status or 200
        body = fault.body
        if body is None:
            body = json.dumps({"status": status, "message": _REASONS.get(status, "Error")})
        extra = () if fault.retry_after is None else (("Retry-After", f"{fault.retry_after:g}"),)
        return _Response(status, body.encode(), fault.content_type, extra)

    def _resolve_site(self, path: str) -> tuple[SiteConfig | None, str]:
        head, _, rest = path.lstrip("/").partition("/")
        if head in self._by_id and rest.startswith("api/"):
            return self._by_id[head], "/" + rest
        if path.startswith("/api/"):
            return self.sites[0], path
        return None, path

    def _answer(
        self, site: SiteConfig | None, site_path: str, query: str, headers: Any
    ) -> _Response:
        route = site_path.removeprefix("/api/v1/").removesuffix(".json")
        if site is None or not site_path.startswith("/api/v1/") or route not in _ROUTES:
            return _not_found(site_path)
        collection, type_ = _ROUTES[route]
        if collection == "status":
            return _json_response(self._status(site))
        if not _authorised(site, headers, query):
            if self.auth_fail_delay_s:
                time.sleep(self.auth_fail_delay_s)
            return _unauthorised()
        if collection == "profile":
            return _json_response(self._profiles(site))
        return self._find(site, collection, type_, query)

    def _find(self, site: SiteConfig, collection: str, type_: str | None, query: str) -> _Response:
        now_ms = int(self.current_time().timestamp() * 1000)
        q = _build_query(collection, type_, query, now_ms)
        if self.page_cap is not None:
            q = replace(q, count=min(q.count, self.page_cap))
        first, last = _day_span(q, self.first_day.toordinal(), now_ms // _DAY_MS + _EPOCH_ORDINAL)
        return _Response(200, _join(self._fragments(site, q, first, last)))

    def _fragments(self, site: SiteConfig, q: _Query, first: int, last: int) -> Iterator[bytes]:
        remaining = q.count
        for ordinal in range(last, first - 1, -1):
            found, count = _day_matches(self._index(site, ordinal, q.collection), q, remaining)
            yield from found
            remaining -= count
            if remaining <= 0:
                return

    def _profiles(self, site: SiteConfig) -> list[Document]:
        now = self.current_time()
        docs = generate_profiles(site, self.first_day, now.astimezone(UTC).date())
        docs = self._changes[site.site_id].merge_all("profile", docs)
        limit = int(now.timestamp() * 1000)
        return [d for d in docs if d.get("mills", 0) <= limit]

    def _status(self, site: SiteConfig) -> Document:
        now = self.current_time().astimezone(UTC)
        return {
            "status": "ok",
            "name": "nightscout",
            "version": "15.0.2",
            "serverTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "serverTimeEpoch": int(now.timestamp() * 1000),
            "apiEnabled": True,
            "careportalEnabled": True,
            "boluscalcEnabled": True,
            "settings": {
                "units": site.units,
                "timeFormat": 24,
                "customTitle": f"Cascade simulator ({site.site_id})",
                "theme": "colors",
                "authDefaultRoles": "denied" if _needs_auth(site) else "readable",
                "enable": ["careportal", "iob", "cob", "basal", "openaps", "pump", "rawbg"],
            },
            "extendedSettings": {"devicestatus": {"advanced": True}},
            "authorized": None,
        }


    # -- changes after generation (edits, deletions, late documents) and API v3

    def _init_changes(self) -> None:
        self._changes = {s.site_id: SiteChanges(self._clock_ms) for s in self.sites}
        self._merged: dict[tuple[str, int, str], tuple[int, _Index]] = {}
        self.v3 = V3Api(self._changes, self._clock_ms,
                        JwtIssuer(hashlib.sha256(f"jwt-{self.port}".encode()).digest(),
                                  self.jwt_lifetime_s),
                        self.locate, enabled=self.v3_enabled)

    def _clock_ms(self) -> int:
        return int(self.current_time().timestamp() * 1000)

    def changes(self, site_id: str) -> SiteChanges:
        """The change store of ``site_id``: edit, soft-delete, delete or add documents there
        (through v3, with ``srvModified``, or as v1 uploads without it)."""
        self.url_for(site_id)  # a clear KeyError for an unknown site
        return self._changes[site_id]

    def documents(self, site_id: str, collection: str, day: date) -> list[Document]:
        """The documents of ``collection`` for UTC ``day`` as v1 returns them now, oldest
        first (soft-deleted ones included): pick the ones to change from here."""
        site = self._by_id[site_id]
        ordinal = day.toordinal()
        generated = generate_collection(site, day, collection)
        merged = self._changes[site_id].merge_day(collection, ordinal, generated)
        return sorted(merged, key=lambda d: (_doc_time(collection, d), d["_id"]))

    def locate(self, site: SiteConfig, collection: str, key: str) -> Document | None:
        """A document as the server now holds it, by ``_id`` or ``identifier`` (None when
        there is none, or it was deleted for good). A generated document is found through
        its ObjectId, whose first 8 hex digits are its time in epoch seconds."""
        found = self._changes[site.site_id].find(collection, key)
        if found is not None:
            return found
        if collection == "profile":
            return next((d for d in self._profiles(site) if d["_id"] == key), None)
        if not _OBJECT_ID.match(key):
            return None
        day = datetime.fromtimestamp(int(key[:8], 16), UTC).date()
        for near in (day, day - timedelta(days=1), day + timedelta(days=1)):
            for doc in self.documents(site.site_id, collection, near):
                if doc["_id"] == key:
                    return doc
        return None

    def _index(self, site: SiteConfig, ordinal: int, collection: str) -> _Index:
        """The day's index, with the site's changes laid over it when it has any."""
        changes = self._changes[site.site_id]
        if ordinal not in changes.touched_days(collection):
            return _day_index(site, ordinal, collection)
        key = (site.site_id, ordinal, collection)
        with self._lock:
            cached = self._merged.get(key)
        if cached is not None and cached[0] == changes.version:
            return cached[1]
        version = changes.version
        docs = changes.merge_day(collection, ordinal,
                                 generate_collection(site, date.fromordinal(ordinal), collection))
        index = _index_of(docs, collection)
        with self._lock:
            self._merged[key] = (version, index)
        return index

    def _answer_v3(self, site: SiteConfig, method: str, site_path: str, query: str,
                   headers: Any, body: bytes) -> _Response:
        answer: Answer = self.v3.answer(site, method, site_path, query, headers, body,
                                        _authorised(site, headers, query))
        if answer.status == 401 and self.auth_fail_delay_s:
            time.sleep(self.auth_fail_delay_s)
        if answer.body is None:
            return _not_found(site_path)
        return _Response(answer.status, _dumps(answer.body), headers=answer.headers)


# ----------------------------------------------------------------------------- helpers


def _hostile(fault: Fault | None, response: _Response, path: str, query: str,
             headers: Any) -> _Response:
    """``response`` as a hostile or broken server would send it (see ``Fault``)."""
    if fault is None:
        return response
    if fault.echo_status is not None:
        body = hostile.echo_request(fault.echo_status, hostile.header_map(headers), path, query)
        return _Response(fault.echo_status, body)
    if fault.redirect is not None:
        return _Response(301, b"Moved Permanently", "text/plain",
                         (("Location", fault.redirect),))
    if fault.huge is not None:
        return replace(response, status=200, body=b"",
                       chunks=hostile.endless_documents(query, fault.huge))
    body, extra = response.body, response.headers
    if fault.mutate is not None:
        body = fault.mutate(body)
    if fault.bomb is not None:
        body = hostile.bomb(fault.encoding or "gzip", fault.bomb)
    elif fault.encoding is not None:
        body = hostile.compress(body, fault.encoding)
    if fault.bomb is not None or fault.encoding is not None:
        extra = (*extra, ("Content-Encoding", fault.encoding or "gzip"))
    return replace(response, body=body, headers=extra, trickle_s=fault.trickle_s,
                   trickle_headers=fault.trickle_headers)


def _chain(*parts: Iterator[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield from part


def _doc_time(collection: str, doc: Document) -> Any:
    return doc["date"] if collection == "entries" else doc["created_at"]


def _join(fragments: Iterator[bytes]) -> bytes:
    return b"[" + b",".join(fragments) + b"]"


def _json_response(payload: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(payload, separators=(",", ":")).encode())


def _not_found(path: str) -> _Response:
    body = f"<!DOCTYPE html><pre>Cannot GET {path}</pre>".encode()
    return _Response(404, body, "text/html; charset=utf-8")


def _unauthorised() -> _Response:
    payload = {"status": 401, "message": "Unauthorized", "description": "Invalid/Missing"}
    return _json_response(payload, 401)


def _needs_auth(site: SiteConfig) -> bool:
    return site.api_secret is not None or site.token is not None


def _authorised(site: SiteConfig, headers: Any, query: str) -> bool:
    """SHA-1 or SHA-512 hex of the secret in ``api-secret``, or ``token=`` in the query."""
    if not _needs_auth(site):
        return True
    sent = (headers.get("api-secret") or "").strip().lower()
    if site.api_secret is not None and sent:
        raw = site.api_secret.encode()
        if sent in (hashlib.sha1(raw).hexdigest(), hashlib.sha512(raw).hexdigest()):
            return True
    tokens = [v for k, v in parse_qsl(query) if k == "token"]
    return site.token is not None and site.token in tokens


def start_simulator(
    sites: Sequence[SiteConfig | str] = ("a",),
    *,
    now: datetime | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    history_days: int = 400,
) -> SimulatorServer:
    """Start a simulator in a background thread; site ids become ``default_site`` configs."""
    configs = [s if isinstance(s, SiteConfig) else default_site(s) for s in sites]
    server = SimulatorServer(configs, now=now, host=host, port=port, history_days=history_days)
    return server.start()
