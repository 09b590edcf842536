"""The pieces a hostile server meets: redaction, bounded HTTP reading, the JSON depth scan."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.bounded_http import (
    BodyLimits,
    BodyTooLarge,
    BodyUndecodable,
    DeadlineExceeded,
    deadline,
    read_body,
)
from tasks.errors import NightscoutError
from tasks.json_documents import MAX_DEPTH, NotDocuments, _max_depth, _Shape, parse_documents
from tasks.redaction import (
    redact,
    redact_bytes,
    register_secret,
    register_token,
    sanitize_url,
)

SECRET = "unit-redaction-secret-1"
TOKEN = "unit-redaction-token-1"
register_secret(SECRET)
register_token(TOKEN)
SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
SHA512 = hashlib.sha512(SECRET.encode()).hexdigest()

# ----------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("form", [SECRET, SHA1, SHA1.upper(), SHA512, SHA512.upper(), TOKEN])
def test_every_registered_form_is_redacted(form: str) -> None:
    assert redact(f"before {form} after") == "before *** after"
    assert redact_bytes(f'["{form}"]'.encode()) == b'["***"]'


@pytest.mark.parametrize(("text", "clean"), [
    ("api-secret: 0123abcd", "api-secret: ***"),
    ('{"api-secret": "0123abcd"}', '{"api-secret": "***"}'),
    ("GET /x?count=5&token=abc123&y=1", "GET /x?count=5&token=***&y=1"),
    ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer ***"),
    ("{'authorization': 'Basic dXNlcjpwYXNz'}", "{'authorization': 'Basic ***'}"),
    ("postgresql://cascade:hunter22@db:5432/marts", "postgresql://***@db:5432/marts"),
])
def test_credential_shapes_are_redacted_whatever_the_value(text: str, clean: str) -> None:
    assert redact(text) == clean


def test_ordinary_text_is_left_alone() -> None:
    text = ("check the API secret or token (NIGHTSCOUT_API_SECRET / NIGHTSCOUT_TOKEN); "
            "2024-03-01 entries: fetched 288, committed 286 to run-7f3a")
    assert redact(text) == text


def test_a_short_plain_secret_is_not_registered_but_its_hashes_are() -> None:
    register_secret("abc")
    assert redact("abc def") == "abc def"
    assert redact(hashlib.sha1(b"abc").hexdigest()) == "***"


def test_sanitize_url_masks_query_credentials_and_user_info() -> None:
    assert sanitize_url(f"https://u:p@ns.example/api/v1?token={TOKEN}&count=3") == \
        "https://ns.example/api/v1?token=***&count=3"
    assert sanitize_url("https://ns.example/login?next=/api/v1") == \
        "https://ns.example/login?next=/api/v1"  # nothing to mask: the query as it was


def test_errors_redact_their_own_message() -> None:
    error = NightscoutError(f"echo {SHA1} and {TOKEN}")
    assert str(error) == "echo *** and ***"
    assert SHA1 not in repr(error)


def test_log_records_are_redacted_with_their_arguments_and_tracebacks(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("cascade.test-redaction")
    with caplog.at_level(logging.INFO):
        logger.info("sent %s to %s", SHA1, f"https://ns.example/?token={TOKEN}")
        try:
            raise ValueError(f"the server said {SECRET}")
        except ValueError:
            logger.exception("failed")
    assert SHA1 not in caplog.text and TOKEN not in caplog.text and SECRET not in caplog.text
    assert "sent *** to https://ns.example/?token=***" in caplog.text
    assert "the server said ***" in caplog.text


def test_a_cascade_error_is_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("cascade.test-redaction")
    with caplog.at_level(logging.INFO):
        try:
            raise NightscoutError("the site is down: check it")
        except NightscoutError:
            logger.exception("run failed")
    (record,) = [r for r in caplog.records if r.getMessage() == "run failed"]
    assert record.exc_info is None and "Traceback" not in caplog.text


# ----------------------------------------------------------------------------- bounded HTTP


def _stream(chunks: Iterator[bytes], headers: dict[str, str] | None = None,
            ) -> httpx.Client:
    class Stream(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield from chunks

    return httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, headers=headers or {}, stream=Stream())))


def _read(client: httpx.Client, limits: BodyLimits | None = None) -> bytes:
    limits = limits or BodyLimits()
    with deadline(limits.deadline_s) as at, client.stream("GET", "http://x/") as response:
        return read_body(response, limits, at)


BODY = json.dumps([{"_id": str(i), "sgv": i} for i in range(2000)]).encode()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "zstd", "gzip, gzip"])
def test_compressed_bodies_are_decoded(encoding: str) -> None:
    raw = BODY
    if encoding == "raw-deflate":  # "deflate" sent without its zlib header, as some do
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw, encoding = packer.compress(raw) + packer.flush(), "deflate"
    else:
        packers: dict[str, Callable[[bytes], bytes]] = {
            "gzip": gzip.compress, "deflate": zlib.compress,
            "zstd": lambda b: bytes(zstandard.ZstdCompressor().compress(b))}
        for step in encoding.split(", "):
            raw = packers[step](raw)
    chunks = iter([raw[i:i + 1000] for i in range(0, len(raw), 1000)])
    assert _read(_stream(chunks, {"content-encoding": encoding})) == BODY


def test_concatenated_gzip_members_are_all_read() -> None:
    raw = gzip.compress(BODY[:5000]) + gzip.compress(BODY[5000:])
    assert _read(_stream(iter([raw]), {"content-encoding": "gzip"})) == BODY


def test_decoding_stops_at_the_cap_without_holding_the_whole_bomb() -> None:
    bomb = zstandard.ZstdCompressor().compress(b" " * (200 << 20))  # ~6 KB on the wire
    with pytest.raises(BodyTooLarge, match="larger than 1,048,576 bytes"):
        _read(_stream(iter([bomb]), {"content-encoding": "zstd"}),
              BodyLimits(max_body_bytes=1 << 20))


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    read: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        read.append(b"x")
        yield b"[]"

    with pytest.raises(BodyTooLarge, match="Content-Length 5,000,000"):
        _read(_stream(chunks(), {"content-length": "5000000"}), BodyLimits(max_body_bytes=1000))
    assert read == []


# ids spelled out: test ids must be the same in every xdist worker, and a gzip header
# carries the second it was made in
@pytest.mark.parametrize(("encoding", "raw"), [("br", b"\x1b"), ("gzip", b"not gzip at all"),
                                               ("gzip", gzip.compress(BODY, mtime=0)[:-40])],
                         ids=["unknown-encoding", "not-gzip", "truncated-gzip"])
def test_an_unknown_encoding_or_broken_data_is_undecodable(encoding: str, raw: bytes) -> None:
    with pytest.raises(BodyUndecodable):
        _read(_stream(iter([raw]), {"content-encoding": encoding}))


def test_the_deadline_holds_between_chunks() -> None:
    def slow() -> Iterator[bytes]:
        for _ in range(100):
            time.sleep(0.05)
            yield b" "

    with pytest.raises(DeadlineExceeded, match=re.escape("within 0.2 s")):
        _read(_stream(slow()), BodyLimits(deadline_s=0.2))


# ----------------------------------------------------------------------------- JSON depth

_leaf = st.one_of(st.integers(), st.booleans(), st.none(),
                  st.text(alphabet='[]{}"\\,:ab é\n', max_size=8))
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner,
                                       max_size=3), max_leaves=25)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(docs=st.lists(st.dictionaries(st.text(alphabet='ab"\\[', max_size=3), _json,
                                     max_size=3), min_size=1, max_size=5),
       ascii_only=st.booleans())
def test_the_vectorised_scan_finds_each_documents_true_depth(
        docs: list[dict[str, object]], ascii_only: bool) -> None:
    body = json.dumps(docs, ensure_ascii=ascii_only).encode()
    shape = _Shape.of(body)
    assert shape.max_doc_depth == max(_depth(d) for d in docs)
    assert _max_depth(body) == 1 + max(_depth(d) for d in docs)  # the check every body gets
    starts, ends, depths = shape.documents(body)
    assert [json.loads(body[s:e]) for s, e in zip(starts, ends, strict=True)] == docs
    assert depths.tolist() == [_depth(d) for d in docs]


def test_a_document_at_the_depth_limit_is_read_and_one_past_it_set_aside() -> None:
    def nested(levels: int) -> str:  # a document `levels` deep: the object and its arrays
        return f'{{"_id":"d{levels}","v":{"[" * (levels - 1)}{"]" * (levels - 1)}}}'

    parsed = parse_documents(f"[{nested(MAX_DEPTH)},{nested(MAX_DEPTH + 1)}]".encode())
    assert parsed.frame.get_column("_id").to_list() == [f"d{MAX_DEPTH}"]
    assert [s.record_id for s in parsed.set_aside] == [f"d{MAX_DEPTH + 1}"]


@pytest.mark.parametrize("body", [b'[{"a":1}, 5]', b'[{"a":1}', b'{"status":500}', b"[[]]",
                                  b'[{"a":"' + b"[" * 10_000 + b'"}, 7]'])
def test_bodies_that_are_not_arrays_of_objects_are_refused(body: bytes) -> None:
    with pytest.raises(NotDocuments):
        parse_documents(body)
