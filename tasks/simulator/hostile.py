"""Hostile and broken server behaviours for the simulator's fault injection.

What a misconfigured proxy, a hosting plan or a hostile server does to a client, as small
functions the server applies to one answer (``SimulatorServer.inject``): compress it, or
replace it with a compression bomb or an endless stream of documents; echo the request's
headers (credentials included) in an error page; and changes to one document of a normal
body wherever it appears (nested thousands of levels deep, not UTF-8, another date).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qsl

__all__ = [
    "BodyMutation",
    "bomb",
    "break_utf8",
    "compress",
    "deepen",
    "echo_request",
    "edit_document",
    "endless_documents",
    "header_map",
    "set_date",
]

BodyMutation = Callable[[bytes], bytes]
_PIECE: Final = 1 << 20


def compress(body: bytes, encoding: str) -> bytes:
    """``body`` encoded as ``Content-Encoding: encoding`` (gzip, deflate or zstd)."""
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=6)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "zstd":
        import zstandard  # with httpx's zstd support; pyiceberg and trino bring it

        return bytes(zstandard.ZstdCompressor().compress(body))
    raise ValueError(f"unknown encoding {encoding!r}")


@lru_cache(maxsize=8)
def bomb(encoding: str, decoded_bytes: int) -> bytes:
    """A compressed body that decodes to ``decoded_bytes`` of a valid, empty JSON array
    (``[``, spaces, ``]``): a few kilobytes on the wire (zstd) or about a thousandth of the
    decoded size (gzip, deflate)."""
    blank = b" " * _PIECE
    push: Callable[[bytes], bytes]
    finish: Callable[[], bytes]
    if encoding == "zstd":
        import zstandard

        writer = zstandard.ZstdCompressor(level=1).compressobj()
        push, finish = writer.compress, writer.flush
    else:
        wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
        deflater = zlib.compressobj(1, zlib.DEFLATED, wbits)
        push, finish = deflater.compress, deflater.flush
    parts, left = [push(b"[")], decoded_bytes - 2
    while left > 0:
        parts.append(push(blank[: min(left, _PIECE)]))
        left -= _PIECE
    parts += [push(b"]"), finish()]
    return b"".join(parts)


def endless_documents(query: str, total_bytes: int) -> Iterator[bytes]:
    """``total_bytes`` of entries inside the query's time bounds, whatever ``count`` asked:
    a server (or a proxy's cache) that ignores the page size, streamed without holding it."""
    params = dict(parse_qsl(query))
    low = int(float(params.get("find[date][$gte]", "0")))
    yield b"["
    sent, i = 1, 0
    while sent < total_bytes:
        batch = b",".join(
            b'{"_id":"huge%012d","type":"sgv","sgv":%d,"date":%d,"device":"flood"}'
            % (n, 100 + n % 50, low + n % 3_600_000) for n in range(i, i + 4096))
        if i:
            batch = b"," + batch
        yield batch
        sent += len(batch)
        i += 4096
    yield b"]"


def echo_request(status: int, headers: Mapping[str, str], path: str, query: str) -> bytes:
    """An error page that echoes the request back, credentials included, as some proxies
    and framework debug pages do."""
    return json.dumps({
        "status": status,
        "message": "Bad Request",
        "request": {"path": path, "query": dict(parse_qsl(query)),
                    "headers": {k: v for k, v in headers.items()}},
    }).encode()


def edit_document(doc_id: str, *, insert: bytes = b"",
                  replace: tuple[bytes, bytes] | None = None) -> BodyMutation:
    """Change the document with ``_id`` ``doc_id`` wherever an answer carries it: put the
    member(s) ``insert`` first in it, and/or replace the first match of the regular
    expression ``replace[0]`` in it with ``replace[1]``."""
    key = b'{"_id":"' + doc_id.encode() + b'"'

    def mutate(body: bytes) -> bytes:
        at = body.find(key)
        if at < 0:
            return body
        end = body.find(b'{"_id":"', at + 1)
        end = len(body) - 1 if end < 0 else end
        doc = body[at:end]
        if replace is not None:
            doc = re.sub(replace[0], replace[1], doc, count=1)
        if insert:
            doc = doc[:1] + insert + b"," + doc[1:]
        return body[:at] + doc + body[end:]

    return mutate


def deepen(doc_id: str, depth: int) -> BodyMutation:
    """Give one document a field nested ``depth`` levels deep."""
    return edit_document(doc_id, insert=b'"deep":' + b"[" * depth + b"]" * depth)


def break_utf8(doc_id: str, raw: bytes = b"\xff") -> BodyMutation:
    """Put bytes that are not UTF-8 into a text field of one document."""
    return edit_document(doc_id, insert=b'"notes":"caf' + raw + b'"')


def set_date(doc_id: str, value: bytes) -> BodyMutation:
    """Give one entry another ``date`` (``value`` as JSON: a number or a quoted text)."""
    return edit_document(doc_id, replace=(rb'"date":[^,}]+', b'"date":' + value))


def header_map(headers: Any) -> dict[str, str]:
    """The request's headers as a plain dict (``http.server``'s message object)."""
    return {k: str(v) for k, v in headers.items()}
