"""HTTP that a hostile or broken server cannot hold for ever or flood: bounded time and memory.

httpx's timeouts are per operation (connect, each read), so a server trickling one byte
every few seconds keeps a request alive indefinitely; and httpx decompresses gzip, deflate
and zstd as it reads, without bounding the decoded size, so a small compressed body can
expand to gigabytes in one step. Here:

- ``deadline(seconds)`` sets an overall deadline for the requests made inside it; the
  transport of ``bounded_transport()`` clamps every connect, write and read on the socket to
  the time left, so the deadline holds in every phase (headers included), not only between
  body chunks. ``read_body`` checks it between chunks as well (for other transports).
- ``read_body(response, limits)`` streams the body and decodes it itself, a bounded piece at
  a time (gzip, deflate, zstd: ``ACCEPT_ENCODING`` is what a client should ask for), and
  stops as soon as the decoded size passes ``limits.max_body_bytes``.

Errors are plain exceptions for the client to turn into its own (``DeadlineExceeded``,
``BodyTooLarge``, ``BodyUndecodable``): this module knows HTTP, not Nightscout.

``bounded_transport`` replaces the connection pool of an ``httpx.HTTPTransport`` with one
built on the clamping network backend (httpcore's public ``network_backend`` argument,
which httpx does not expose): one private attribute, ``HTTPTransport._pool``, pinned by
``tests/unit/test_hostile_sources.py::test_a_trickled_header_is_cut_at_the_deadline``.
Proxies from the environment are not used by this transport.
"""

from __future__ import annotations

import ssl
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import httpcore
import httpx

__all__ = [
    "ACCEPT_ENCODING",
    "BodyLimits",
    "BodyTooLarge",
    "BodyUndecodable",
    "DeadlineExceeded",
    "bounded_transport",
    "deadline",
    "read_body",
    "read_prefix",
]

_zstd: Any
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover - zstd is then neither asked for nor decoded
    _zstd = None

ACCEPT_ENCODING: Final = "gzip, deflate" + (", zstd" if _zstd is not None else "")
_RAW_CHUNK: Final = 64 * 1024  # bytes read from the socket at a time
_OUT_CHUNK: Final = 256 * 1024  # the most one decoding step may produce

_deadline: ContextVar[float | None] = ContextVar("cascade_http_deadline", default=None)


@dataclass(frozen=True)
class BodyLimits:
    """What one response may cost: wall time from sending the request to the body's last
    byte, and decoded size."""

    deadline_s: float = 120.0
    max_body_bytes: int = 64 * 1024 * 1024


class DeadlineExceeded(Exception):
    """The response was not complete within the request's overall deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within {seconds:g} s")
        self.seconds = seconds


class BodyTooLarge(Exception):
    """The body (decoded) is larger than the limit; reading stopped at the limit."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        said = f" (Content-Length {declared:,})" if declared is not None else ""
        super().__init__(f"body larger than {limit:,} bytes{said}")
        self.limit, self.declared = limit, declared


class BodyUndecodable(Exception):
    """The body's Content-Encoding is unknown, or its compressed data is broken."""


@contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Requests made inside must be complete within ``seconds``; yields the monotonic
    deadline (pass it to ``read_body``)."""
    at = time.monotonic() + seconds
    token = _deadline.set(at)
    try:
        yield at
    finally:
        _deadline.reset(token)


def read_body(response: httpx.Response, limits: BodyLimits, deadline_at: float) -> bytes:
    """The decoded body of a streamed ``response`` (``client.stream(...)``), bounded.

    Raises:
        BodyTooLarge: the decoded body passed ``limits.max_body_bytes`` (or said it would).
        DeadlineExceeded: the body was not complete by ``deadline_at`` (``time.monotonic``).
        BodyUndecodable: an unknown Content-Encoding, or broken compressed data.
        httpx.TransportError: the connection failed while reading.
    """
    declared = _content_length(response)
    if declared is not None and declared > limits.max_body_bytes:
        raise BodyTooLarge(limits.max_body_bytes, declared)
    if response.is_stream_consumed:  # built in memory (httpx.MockTransport): already read
        if len(response.content) > limits.max_body_bytes:
            raise BodyTooLarge(limits.max_body_bytes, declared)
        return response.content
    encodings = _encodings(response)
    chunks: list[bytes] = []
    size = 0
    for piece in _decode(_raw(response, deadline_at, limits.deadline_s), encodings):
        size += len(piece)
        if size > limits.max_body_bytes:
            raise BodyTooLarge(limits.max_body_bytes, declared)
        chunks.append(piece)
    return b"".join(chunks)


def read_prefix(response: httpx.Response, size: int, deadline_at: float, seconds: float
                ) -> bytes:
    """At most the first ``size`` decoded bytes of a streamed ``response`` (an error page's
    opening, for a message); never raises for a longer or undecodable body."""
    if response.is_stream_consumed:  # built in memory (httpx.MockTransport): already read
        return response.content[:size]
    out = b""
    try:
        for piece in _decode(_raw(response, deadline_at, seconds), _encodings(response)):
            out += piece[: size - len(out)]
            if len(out) >= size:
                break
    except (BodyUndecodable, DeadlineExceeded, httpx.TransportError):
        pass
    return out


def _raw(response: httpx.Response, deadline_at: float, seconds: float) -> Iterator[bytes]:
    for chunk in response.iter_raw(_RAW_CHUNK):
        if time.monotonic() > deadline_at:
            raise DeadlineExceeded(seconds)
        yield chunk


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _encodings(response: httpx.Response) -> list[str]:
    """The Content-Encodings to undo, in the order they were applied."""
    header = response.headers.get("content-encoding", "")
    found = [e.strip().lower() for e in header.split(",") if e.strip()]
    return [e for e in found if e != "identity"]


def _decode(raw: Iterator[bytes], encodings: list[str]) -> Iterator[bytes]:
    stream: Iterator[bytes] = raw
    for encoding in reversed(encodings):  # the last applied is undone first
        if encoding in ("gzip", "x-gzip"):
            stream = _inflate(stream, zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            stream = _inflate(stream, zlib.MAX_WBITS, raw_fallback=True)
        elif encoding == "zstd" and _zstd is not None:
            stream = _unzstd(stream)
        else:
            raise BodyUndecodable(f"Content-Encoding {encoding!r}, which was not asked for "
                                  f"(Accept-Encoding: {ACCEPT_ENCODING})")
    return stream


def _inflate(chunks: Iterable[bytes], wbits: int, *, raw_fallback: bool = False
             ) -> Iterator[bytes]:
    """zlib/gzip/deflate, at most ``_OUT_CHUNK`` bytes per step; concatenated gzip members
    are read one after another."""
    decoder = zlib.decompressobj(wbits)
    first = True
    for data in chunks:
        while data:
            try:
                out = decoder.decompress(data, _OUT_CHUNK)
            except zlib.error as exc:
                if first and raw_fallback:  # "deflate" sent without its zlib header
                    decoder, raw_fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise BodyUndecodable(f"broken compressed data ({exc})") from None
            first = False
            if out:
                yield out
            data = decoder.unconsumed_tail
            if decoder.eof and decoder.unused_data:  # another gzip member follows
                data, decoder = decoder.unused_data, zlib.decompressobj(wbits)
    if not decoder.eof and not first:
        raise BodyUndecodable("compressed data ended before its end marker")
    tail = decoder.flush()
    if tail:
        yield tail


class _Reader:
    """A file-like ``read`` over an iterator of chunks, for zstandard's streaming reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


def _unzstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    decoder = _zstd.ZstdDecompressor()
    try:
        yield from decoder.read_to_iter(_Reader(chunks), read_size=_RAW_CHUNK,
                                        write_size=_OUT_CHUNK)
    except _zstd.ZstdError as exc:
        raise BodyUndecodable(f"broken zstd data ({exc})") from None


# ----------------------------------------------------------------------------- transport


def _left(timeout: float | None) -> float | None:
    """``timeout`` clamped to the time left before the current deadline."""
    at = _deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's overall deadline has passed")
    return left if timeout is None else min(timeout, left)


class _ClampedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _ClampedStream(self._stream.start_tls(ssl_context, server_hostname,
                                                     _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _ClampedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, every operation clamped to the current deadline."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _ClampedStream(self._backend.connect_tcp(host, port, _left(timeout),
                                                        local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _ClampedStream(self._backend.connect_unix_socket(path, _left(timeout),
                                                                socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bounded_transport(verify: ssl.SSLContext, limits: httpx.Limits) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` whose sockets honour ``deadline(...)`` in every phase."""
    transport = httpx.HTTPTransport(verify=verify, limits=limits, trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_ClampedBackend(),
    )
    return transport
