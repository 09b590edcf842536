"""Find a credential, in any form, in every file a run leaves and in what it printed.

Compressed files are read decoded, so a secret cannot hide in them: Parquet data files
(every column as text), Avro manifests (each block decompressed), gzip files; anything
else (SQLite databases and their WAL, JSON metadata, logs, pickled results) as raw bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq

__all__ = ["credential_forms", "leaks", "readable"]


def credential_forms(*, secret: str | None = None, token: str | None = None
                     ) -> dict[str, str]:
    """Every form in which the credentials could leak: plain, SHA-1 and SHA-512 hex (both
    letter cases) and URL-quoted."""
    forms: dict[str, str] = {}
    if secret is not None:
        sha1 = hashlib.sha1(secret.encode()).hexdigest()
        sha512 = hashlib.sha512(secret.encode()).hexdigest()
        forms |= {"api-secret (plain)": secret, "api-secret (SHA-1)": sha1,
                  "api-secret (SHA-1, upper case)": sha1.upper(),
                  "api-secret (SHA-512)": sha512,
                  "api-secret (SHA-512, upper case)": sha512.upper(),
                  "api-secret (URL-quoted)": quote(secret, safe="")}
    if token is not None:
        forms |= {"token (plain)": token, "token (URL-quoted)": quote(token, safe="")}
    return forms


def leaks(forms: Mapping[str, str], *, roots: Iterable[Path] = (),
          texts: Mapping[str, str] | None = None) -> list[str]:
    """``"<form> in <where>"`` for every credential form found in any file under ``roots``
    or in ``texts`` (name → text: captured output, an exception's message, ...)."""
    found = []
    haystacks: list[tuple[str, bytes]] = [(k, v.encode()) for k, v in (texts or {}).items()]
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        haystacks += [(str(p), readable(p)) for p in files]
    for where, data in haystacks:
        folded = data.lower()
        for name, form in forms.items():
            if form.encode() in data or form.lower().encode() in folded:
                found.append(f"{name} in {where}")
    return found


def readable(path: Path) -> bytes:
    """The file's content as a credential would appear in it: decoded where compressed."""
    raw = path.read_bytes()
    if raw[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(raw))
        return repr(table.to_pylist()).encode() + raw
    if raw[:4] == b"Obj\x01":
        return _avro_blocks(raw) + raw
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return raw


def _avro_blocks(raw: bytes) -> bytes:
    """An Avro object container's blocks, decompressed (null, deflate or zstandard)."""
    pos = 4
    meta: dict[str, bytes] = {}
    while True:  # the header's metadata map: blocks of (key, value) pairs
        count, pos = _long(raw, pos)
        if count == 0:
            break
        if count < 0:
            _, pos = _long(raw, pos)
            count = -count
        for _ in range(count):
            key, pos = _bytes(raw, pos)
            meta[key.decode()], pos = _bytes(raw, pos)
    pos += 16  # sync marker
    codec = meta.get("avro.codec", b"null").decode()
    out = [repr(meta).encode()]
    while pos < len(raw):
        _, pos = _long(raw, pos)  # objects in the block
        block, pos = _bytes(raw, pos)
        pos += 16
        if codec == "deflate":
            block = zlib.decompress(block, -zlib.MAX_WBITS)
        elif codec == "zstandard":
            import zstandard

            block = zstandard.ZstdDecompressor().decompressobj().decompress(block)
        out.append(block)
    return b"\n".join(out)


def _long(raw: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos


def _bytes(raw: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _long(raw, pos)
    return raw[pos:pos + size], pos + size
