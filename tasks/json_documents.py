"""A JSON array of documents into one Polars frame, never crashing on a hostile document.

Polars' JSON reader segfaults on about 5,000 levels of nesting (the process dies with no
Python error), and one invalid UTF-8 byte makes a whole body unreadable. So before a body
reaches the reader, a vectorised scan of its brackets and quotes (numpy over the body's
structural bytes; about a millisecond a megabyte) finds how deep it nests. The usual body,
shallow and valid UTF-8, then goes to ``pl.read_json`` as it is. Otherwise the top-level
documents are located, and each one nested deeper than ``MAX_DEPTH`` or holding invalid
UTF-8 is set aside, unparsed, with its reason (``SetAside``); the rest are read.

A body that is not an array of objects (an object, an HTML page, truncated JSON, an array of
numbers, brackets that do not balance) raises ``NotDocuments``, with what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl
from numpy.typing import NDArray

__all__ = [
    "MAX_DEPTH",
    "UNREADABLE",
    "NotDocuments",
    "ParsedDocuments",
    "SetAside",
    "parse_documents",
    "parse_member",
]

MAX_DEPTH: Final = 64  # a document's own levels; Nightscout's deepest uploads have about 8
UNREADABLE: Final = "unreadable document"  # how every set-aside reason starts
_PAYLOAD_CHARS: Final = 64 * 1024  # of a set-aside document's text kept as its payload
_UTF8_BOM: Final = b"\xef\xbb\xbf"

# Structural bytes: [ { ] } " \ as 1..6, everything else 0 (one C pass over the body).
_OPEN_ARRAY, _OPEN_OBJECT, _CLOSE_ARRAY, _CLOSE_OBJECT, _QUOTE, _BACKSLASH = 1, 2, 3, 4, 5, 6
_TABLE: Final = bytes(
    {ord("["): 1, ord("{"): 2, ord("]"): 3, ord("}"): 4, ord('"'): 5, ord("\\"): 6}.get(b, 0)
    for b in range(256))
_ID: Final = re.compile(rb'"_id"\s*:\s*"((?:[^"\\]|\\.){1,128})"')


class NotDocuments(ValueError):
    """The body is not a JSON array of objects."""


@dataclass(frozen=True)
class SetAside:
    """A document left unparsed: why, its id when one can be read, and its text as payload
    (``{"_unparsed": "<text>", "_bytes": n}``, the text cut at 64 KiB)."""

    reason: str
    record_id: str
    payload: str


@dataclass(frozen=True)
class ParsedDocuments:
    """The documents read into a frame, and those set aside."""

    frame: pl.DataFrame
    set_aside: tuple[SetAside, ...] = ()

    @property
    def count(self) -> int:
        """How many documents the body held."""
        return self.frame.height + len(self.set_aside)


def parse_documents(body: bytes) -> ParsedDocuments:
    """Read a JSON array of objects; set aside documents too deep or not UTF-8.

    Raises:
        NotDocuments: the body is not a JSON array of objects.
    """
    body = body.removeprefix(_UTF8_BOM)
    if not body.lstrip().startswith(b"["):
        raise NotDocuments("not a JSON array")
    if body.strip() == b"[]":
        return ParsedDocuments(pl.DataFrame())
    if _max_depth(body) - 1 <= MAX_DEPTH and _first_bad_utf8(body) is None:
        return ParsedDocuments(_read(body))  # the usual body, as it is
    return _read_around(body, _Shape.of(body))


def parse_member(body: bytes, key: str) -> ParsedDocuments:
    """Read the array of documents under ``key`` of a JSON object, as ``parse_documents``
    reads a body: an API v3 answer is ``{"status": 200, "result": [...]}``. The object is
    located by the same bracket scan, never parsed whole, so one hostile document in the
    array is set aside as it would be in a v1 answer.

    Raises:
        NotDocuments: the body is not one JSON object with ``key`` holding an array of
            objects.
    """
    body = body.removeprefix(_UTF8_BOM)
    if not body.lstrip().startswith(b"{"):
        raise NotDocuments("not a JSON object")
    shape = _Shape.of(body)
    depth, kinds, positions = shape.depth_after, shape.kinds, shape.positions
    if depth.size < 2 or depth[-1] != 0 or (depth[:-1] <= 0).any() \
            or body[positions[-1] + 1:].strip():
        raise NotDocuments("brackets that do not balance (a truncated body?)")
    name = re.compile(rb'[{,]\s*"' + re.escape(key.encode()) + rb'"\s*:\s*\Z')
    for i in np.flatnonzero((depth == 2) & (kinds == _OPEN_ARRAY)).tolist():
        start = int(positions[i])
        if name.search(body[max(0, start - len(key) - 256):start]) is None:
            continue
        end = int(positions[i + int(np.argmax(depth[i:] == 1))])  # the array's own close
        return parse_documents(body[start:end + 1])
    raise NotDocuments(f"no {key!r} array in the object")


def _read_around(body: bytes, shape: _Shape) -> ParsedDocuments:
    """Read the documents that can be read; set the others aside with their reason."""
    starts, ends, depths = shape.documents(body)
    kept: list[bytes] = []
    set_aside: list[SetAside] = []
    for start, end, depth in zip(starts.tolist(), ends.tolist(), depths.tolist(), strict=True):
        doc = body[start:end]
        reason = _why_unreadable(doc, depth)
        if reason is None:
            kept.append(doc)
        else:
            set_aside.append(_set_aside(doc, reason, shape.own_id(body, start, end)))
    frame = _read(b"[" + b",".join(kept) + b"]") if kept else pl.DataFrame()
    return ParsedDocuments(frame, tuple(set_aside))


def _why_unreadable(doc: bytes, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return (f"{UNREADABLE}: nested {depth} levels deep, more than the {MAX_DEPTH} "
                "Cascade reads; set aside unparsed")
    bad = _first_bad_utf8(doc)
    if bad is not None:
        return (f"{UNREADABLE}: not valid UTF-8 (byte 0x{doc[bad]:02x} at offset {bad} of "
                "the document); set aside unparsed")
    return None


def _set_aside(doc: bytes, reason: str, own_id: bytes | None) -> SetAside:
    record_id = (own_id.decode("utf-8", "backslashreplace") if own_id is not None
                 else "unparsed:" + hashlib.blake2b(doc, digest_size=8).hexdigest())
    text = doc[:_PAYLOAD_CHARS].decode("utf-8", "backslashreplace")
    payload = json.dumps({"_unparsed": text, "_bytes": len(doc)}, ensure_ascii=False)
    return SetAside(reason, record_id, payload)


_NOT_STRUCTURAL: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_STEP: Final = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1


def _max_depth(body: bytes) -> int:
    """How deep ``body`` nests (its top-level array is 1), counting brackets outside strings.

    The cheap check every body gets: escaped backslashes and quotes are removed (pairs, left
    to right, as a JSON reader pairs them), then every byte but quotes and brackets; what is
    left (a sixth of a typical body) is scanned with numpy: about a millisecond a megabyte.
    """
    if b"\\" in body:  # one fast pass; most bodies have no escapes at all
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(body.translate(None, _NOT_STRUCTURAL), dtype=np.uint8)
    if codes.size == 0:
        return 0
    # inside a string after an odd number of quotes (a byte counter keeps the parity)
    outside = (np.cumsum(codes == ord('"'), dtype=np.uint8) & 1) == 0
    return int(np.cumsum(_STEP[codes] * outside, dtype=np.int32).max())


def _first_bad_utf8(data: bytes) -> int | None:
    """Offset of the first byte that is not valid UTF-8, else None."""
    if data.isascii():
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None


@dataclass(frozen=True)
class _Shape:
    """The body's brackets outside strings: where, which, and the depth after each."""

    positions: NDArray[np.int64]
    kinds: NDArray[np.uint8]
    depth_after: NDArray[np.int64]

    @classmethod
    def of(cls, body: bytes) -> _Shape:
        codes = np.frombuffer(body.translate(_TABLE), dtype=np.uint8)
        positions = np.flatnonzero(codes)
        kinds = codes[positions]
        quotes = positions[kinds == _QUOTE]
        slashes = positions[kinds == _BACKSLASH]
        if slashes.size:
            quotes = quotes[~_escaped(quotes, slashes)]
        brackets = kinds < _QUOTE
        positions, kinds = positions[brackets], kinds[brackets]
        in_string = (np.searchsorted(quotes, positions) & 1).astype(bool)
        positions, kinds = positions[~in_string], kinds[~in_string]
        step = np.where(kinds <= _OPEN_OBJECT, 1, -1)
        return cls(positions, kinds, np.cumsum(step))

    @property
    def max_doc_depth(self) -> int:
        """The deepest nesting below the top-level array (0 without brackets)."""
        return int(self.depth_after.max()) - 1 if self.depth_after.size else 0

    def own_id(self, body: bytes, start: int, end: int) -> bytes | None:
        """The ``_id`` of the document at ``body[start:end]`` (its own member, not one of
        a nested object), when it is a string."""
        for found in _ID.finditer(body, start, end):
            before = int(np.searchsorted(self.positions, found.start())) - 1
            if before >= 0 and self.depth_after[before] == 2:
                return found.group(1)
        return None

    def documents(self, body: bytes) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                              NDArray[np.int64]]:
        """Start, end (exclusive) and depth of each top-level document.

        Raises:
            NotDocuments: not one balanced array of objects with only commas between them.
        """
        depth, kinds, positions = self.depth_after, self.kinds, self.positions
        balanced = depth.size >= 2 and depth[-1] == 0 and int(depth.min()) >= 0 \
            and kinds[0] == _OPEN_ARRAY and (depth[:-1] > 0).all()
        if not balanced or body[: positions[0]].strip() or body[positions[-1] + 1:].strip():
            raise NotDocuments("brackets that do not balance (a truncated body?)")
        opens = np.flatnonzero((depth == 2) & (kinds <= _OPEN_OBJECT))
        closes = np.flatnonzero((depth == 1) & (kinds > _OPEN_OBJECT))
        if opens.size == 0 or opens.size != closes.size or \
                (kinds[opens] != _OPEN_OBJECT).any():
            raise NotDocuments("an array holding something other than JSON objects")
        starts, ends = positions[opens], positions[closes] + 1
        gaps = [body[a:b].strip() for a, b in zip(
            [positions[0] + 1, *ends.tolist()], [*starts.tolist(), positions[-1]], strict=True)]
        if gaps[0] or gaps[-1] or any(g != b"," for g in gaps[1:-1]):
            raise NotDocuments("an array holding something other than JSON objects")
        return starts, ends, np.maximum.reduceat(depth, opens) - 1


def _escaped(quotes: NDArray[np.int64], slashes: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether each quote follows an odd run of backslashes (so is inside a string)."""
    breaks = np.flatnonzero(np.diff(slashes) != 1)
    run_first = np.concatenate(([0], breaks + 1))
    run_last = np.concatenate((breaks, [slashes.size - 1]))
    run_end = slashes[run_last]
    at = np.minimum(np.searchsorted(run_end, quotes - 1), run_end.size - 1)
    odd = (run_last - run_first + 1) % 2 == 1
    escaped: NDArray[np.bool_] = (run_end[at] == quotes - 1) & odd[at]
    return escaped


# ----------------------------------------------------------------------------- reading


def _read(body: bytes) -> pl.DataFrame:
    """Polars' reader, or field by field when documents disagree on a field's type.

    Raises:
        NotDocuments: not valid JSON, or not an array of objects.
    """
    try:
        try:
            frame = pl.read_json(io.BytesIO(body), infer_schema_length=None)
        except (pl.exceptions.PolarsError, ValueError):
            frame = _read_uneven(body)  # valid JSON whose documents disagree on a field's type
        if frame.width == 0:
            frame = _read_uneven(body)  # only empty documents: Polars may lose them
    except (pl.exceptions.PolarsError, ValueError) as exc:  # all mean: not the JSON we expect
        raise NotDocuments(f"{type(exc).__name__}: {str(exc)[:160]}") from None
    return frame


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
