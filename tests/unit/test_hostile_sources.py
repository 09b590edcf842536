"""Hostile and broken Nightscout servers, each one the simulator on 127.0.0.1 misbehaving.

Every case runs as a run does: the window is ingested onto a run branch and, when that
succeeded, promoted into main. Each case asserts that main holds every document the server
had (a document that cannot be read is in ``audit.rejects`` with the reason) or is
unchanged, and that no form of the credential (the plain api-secret, its SHA-1 and SHA-512
hex, the token) is in any file the run left (the lakehouse, decoded), in its log or in its
error. Every loop is bounded: few attempts, short deadlines, small size caps. The
flow-level cases (a site that is down, a killed run, Prefect's database) are in
``tests/e2e/test_hostile_runs.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import SecretStr

from tasks.bounded_http import BodyLimits
from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import (
    CascadeError,
    NightscoutError,
    NightscoutRedirected,
    NightscoutTooLarge,
    NightscoutUnavailable,
)
from tasks.ingest import WindowReport, ingest_window
from tasks.json_documents import parse_documents
from tasks.lakehouse import read_table
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext
from tasks.simulator import SimulatorServer, SiteConfig, expected_records, hostile
from tests.leakscan import credential_forms, leaks

NOW = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
SECRET = "hostile-api-secret-4f2a9c"
TOKEN = "hostile-token-7d1e33b0"
SITE = SiteConfig("h", seed=5, api_secret=SECRET, token=TOKEN)
START = datetime(2024, 4, 5, tzinfo=UTC)
END = START + timedelta(days=1)
ENTRIES = "/h/api/v1/entries"
FORMS = credential_forms(secret=SECRET, token=TOKEN)
MANY = 1000  # a fault for every request of a case


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=20) as server:
        yield server


@pytest.fixture
def lake(tmp_path: Path, sim: SimulatorServer) -> EmbeddedBranchCatalog:
    sim.clear_faults()
    sim.page_cap = None
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")


@dataclass
class Run:
    """What one window's run did: its report or its error, and main before and after."""

    report: WindowReport | None
    error: CascadeError | None
    main_before: str
    main_after: str
    requests: int


def _client(sim: SimulatorServer, *, attempts: int = 2, **options: Any) -> NightscoutClient:
    settings = NightscoutSettings(sim.url_for("h"), "h", api_secret=SecretStr(SECRET),
                                  token=SecretStr(TOKEN))
    return NightscoutClient(settings, retry=RetryPolicy(attempts, base_s=0.01, max_s=0.05),
                            sleep=lambda s: None, **options)


def _run(lake: EmbeddedBranchCatalog, client: NightscoutClient, start: datetime = START,
         end: datetime = END) -> Run:
    """Ingest entries of ``[start, end)`` onto a run branch; promote it when that worked."""
    lake.create_branch("run-hostile")
    before = lake.ref("main").hash
    ctx = ShapeContext("h", "UTC", start, end, "hostile", NOW)
    report, error = None, None
    try:
        with client:
            report = ingest_window(client, lake.catalog("run-hostile"), ctx,
                                   tables=("entries",))
        lake.merge("run-hostile")
    except CascadeError as exc:
        error = exc
    return Run(report, error, before, lake.ref("main").hash, client.requests_made)


def _served(start: datetime = START, end: datetime = END) -> list[dict[str, Any]]:
    """The simulator's entries in ``[start, end)`` (an ``_id`` may come twice)."""
    docs = expected_records(SITE, start.date(), end.date(), "entries")
    first, last = start.timestamp() * 1000, end.timestamp() * 1000
    return [d for d in docs if first <= d["date"] < last]


def _ids(start: datetime = START, end: datetime = END) -> list[str]:
    return sorted({d["_id"] for d in _served(start, end)})


def _assert_main_holds_everything(lake: EmbeddedBranchCatalog, run: Run,
                                  rejected: dict[str, str] | None = None,
                                  start: datetime = START, end: datetime = END) -> None:
    """Main holds every entry the server had, once: in raw.entries, or in audit.duplicates
    (the simulator sends some near-duplicates), or, for those in ``rejected`` (id → the
    start of the reason), in audit.rejects with that reason; no other rejects."""
    assert run.error is None, run.error
    assert run.main_after != run.main_before
    main = lake.catalog("main")
    landed = read_table(main, "raw.entries").get_column("entry_id")
    duplicates = read_table(main, "audit.duplicates").get_column("record_id")
    rejects = read_table(main, "audit.rejects")
    reasons = dict(rejects.select("record_id", "reason").iter_rows())
    rejected = rejected or {}
    assert landed.n_unique() == landed.len(), "an entry landed twice"
    assert set(landed) | set(duplicates) == set(_ids(start, end)) - set(rejected)
    assert landed.len() + duplicates.len() + rejects.height == len(_served(start, end))
    assert set(reasons) == set(rejected)
    for record_id, reason in rejected.items():
        assert reasons[record_id].startswith(reason), reasons[record_id]


def _assert_main_unchanged(lake: EmbeddedBranchCatalog, run: Run,
                           error: type[CascadeError], match: str) -> None:
    assert isinstance(run.error, error), run.error
    assert match in str(run.error), str(run.error)
    assert "nothing was written" in str(run.error)
    assert run.main_after == run.main_before
    assert lake.diff("run-hostile") == []  # not even the branch was written


def _assert_no_leak(tmp_path: Path, run: Run, caplog: pytest.LogCaptureFixture,
                    capsys: pytest.CaptureFixture[str]) -> None:
    out = capsys.readouterr()
    texts = {"the error": f"{run.error}\n{run.error!r}", "the log": caplog.text,
             "stdout": out.out, "stderr": out.err}
    assert leaks(FORMS, roots=[tmp_path], texts=texts) == []


@pytest.fixture(autouse=True)
def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL (token included) at INFO


# ----------------------------------------------------------------------------- short pages


@pytest.mark.parametrize("cap", [7, 50, 261])
def test_short_pages_are_paged_on_until_an_empty_page(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path, cap: int,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # a server (a proxy, a hosting plan) answering at most `cap` documents to count=5000;
    # 261 is the whole day, so its one short page is the end, and one more request says so
    sim.page_cap = cap
    run = _run(lake, _client(sim))
    _assert_main_holds_everything(lake, run)
    assert len(_served()) == 261
    assert run.requests >= -(-261 // cap) + 1  # every page, then the one that is empty
    if cap < 261:
        assert f"asked for 5000 documents a page, the server answered at most {cap}" \
            in caplog.text
    _assert_no_leak(tmp_path, run, caplog, capsys)


# ----------------------------------------------------------------------------- slow servers


def test_a_trickled_body_is_cut_at_the_overall_deadline(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # 16 bytes every 50 ms: each read is quick, the whole answer (~70 KB) would take minutes
    sim.inject(trickle_s=0.05, times=MANY, path=ENTRIES)
    started = time.monotonic()
    run = _run(lake, _client(sim, limits=BodyLimits(deadline_s=1.0), timeout_s=5.0))
    _assert_main_unchanged(lake, run, NightscoutUnavailable,
                           "no complete answer within the 1 s deadline) after 2 attempts")
    assert time.monotonic() - started < 60  # not the minutes the trickle would last
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_a_trickled_header_is_cut_at_the_deadline(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # the status line and headers one byte every 0.2 s: no read ever waits its timeout,
    # so only a deadline held on the socket itself stops it (bounded_transport's pool)
    sim.inject(trickle_s=0.2, trickle_headers=True, times=MANY, path=ENTRIES)
    started = time.monotonic()
    run = _run(lake, _client(sim, attempts=1, limits=BodyLimits(deadline_s=1.0),
                             timeout_s=5.0))
    _assert_main_unchanged(lake, run, NightscoutUnavailable, "1 s deadline")
    assert time.monotonic() - started < 15  # the headers alone would take ~20 s
    _assert_no_leak(tmp_path, run, caplog, capsys)


# ----------------------------------------------------------------------------- size


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_compressed_answers_are_decoded_by_cascade(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path, encoding: str,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    sim.inject(encoding=encoding, times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim))
    _assert_main_holds_everything(lake, run)
    _assert_no_leak(tmp_path, run, caplog, capsys)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compression_bomb_is_refused_at_the_size_cap(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path, encoding: str,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # 256 MiB of JSON once decoded, whatever count asks; the client holds at most 4 MiB
    sim.inject(bomb=256 << 20, encoding=encoding, times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim, limits=BodyLimits(max_body_bytes=4 << 20)))
    _assert_main_unchanged(lake, run, NightscoutTooLarge,
                           "more than 4,194,304 bytes even for count=1")
    assert "the answer to count=5000 is over 4,194,304 bytes; asking for 1250" in caplog.text
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_a_page_over_the_size_cap_is_asked_again_smaller(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # three days of entries are ~200 KB: with a 48 KiB cap the pages shrink until they fit
    end = START + timedelta(days=3)
    run = _run(lake, _client(sim, limits=BodyLimits(max_body_bytes=48 << 10)), START, end)
    _assert_main_holds_everything(lake, run, start=START, end=end)
    assert "asking for 78 at a time" in caplog.text
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_a_huge_answer_that_ignores_count_is_refused(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # 64 MiB of documents streamed for any count (no Content-Length): read up to 2 MiB only
    sim.inject(huge=64 << 20, times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim, limits=BodyLimits(max_body_bytes=2 << 20)))
    _assert_main_unchanged(lake, run, NightscoutTooLarge, "or the server ignores count")
    _assert_no_leak(tmp_path, run, caplog, capsys)


# ----------------------------------------------------------------------------- documents


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_a_deeply_nested_document_is_set_aside_and_the_rest_land(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path, depth: int,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # Polars' reader segfaults from ~5,000 levels: reaching it would kill this process
    victim = _ids()[100]
    sim.inject(mutate=hostile.deepen(victim, depth), times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim, page_size=100))  # the document is on several pages
    _assert_main_holds_everything(
        lake, run, {victim: f"unreadable document: nested {depth + 1} levels deep"})
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_a_document_with_invalid_utf8_is_set_aside_and_the_rest_land(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    victim = _ids()[7]
    sim.inject(mutate=hostile.break_utf8(victim), times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim))
    _assert_main_holds_everything(
        lake, run, {victim: "unreadable document: not valid UTF-8 (byte 0xff"})
    payload = read_table(lake.catalog("main"), "audit.rejects").get_column("payload")[0]
    assert victim in payload and "caf\\\\xff" in payload  # the text kept, the byte shown
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_a_valid_far_future_date_is_rejected_as_outside_the_window(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # the newest document comes back dated 2150 once (a clock gone wrong on the uploader)
    victim = max(_served(), key=lambda d: d["date"])["_id"]
    far = int(datetime(2150, 1, 1, tzinfo=UTC).timestamp() * 1000)
    sim.inject(mutate=hostile.set_date(victim, str(far).encode()), times=1, path=ENTRIES)
    run = _run(lake, _client(sim))
    _assert_main_holds_everything(
        lake, run, {victim: "entry_at 2150-01-01T00:00:00Z is outside the requested window"})
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_an_iso_text_date_is_read_whatever_its_neighbours(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    # one document's `date` comes as ISO text; every other document has a numeric `date`
    # (before, such a document was kept only if a neighbour lacked `date` altogether)
    victim = max(_served(), key=lambda d: d["date"])
    iso = datetime.fromtimestamp(victim["date"] / 1000, UTC).isoformat().encode()
    sim.inject(mutate=hostile.set_date(victim["_id"], b'"' + iso + b'"'), times=1,
               path=ENTRIES)
    run = _run(lake, _client(sim))
    _assert_main_holds_everything(lake, run)
    _assert_no_leak(tmp_path, run, caplog, capsys)


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize("location", [
    "https://other.example/api/v1/entries.json?token=hostile-token-7d1e33b0",
    "/login?next=/api/v1/entries.json",
])
def test_a_redirect_is_reported_with_its_location(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path, location: str,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    sim.inject(redirect=location, times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim))
    shown = location.replace(TOKEN, "***") if location.startswith("https") \
        else f"{sim.url}{location}"
    _assert_main_unchanged(lake, run, NightscoutRedirected, f"a redirect to {shown}")
    assert isinstance(run.error, NightscoutRedirected) and run.error.location == shown
    assert run.requests == 1  # not retried, not followed
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_an_error_page_echoing_the_credentials_leaks_none(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    sim.inject(echo_status=400, times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim))
    assert isinstance(run.error, NightscoutError)
    assert "answered 400" in str(run.error) and '"token": "***"' in str(run.error)
    assert run.main_after == run.main_before
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_documents_echoing_the_credentials_land_without_them(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    victim = _ids()[3]
    sha1 = FORMS["api-secret (SHA-1)"]
    echo = f'"notes":"sent {sha1} and {TOKEN} and {SECRET}"'.encode()
    sim.inject(mutate=hostile.edit_document(victim, insert=echo), times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim))
    _assert_main_holds_everything(lake, run)
    extra = read_table(lake.catalog("main"), "raw.entries").filter(
        pl.col("entry_id") == victim).get_column("extra")[0]
    assert "sent *** and *** and ***" in extra
    _assert_no_leak(tmp_path, run, caplog, capsys)


def test_a_site_that_is_down_is_tried_by_one_retry_layer_only(
    sim: SimulatorServer, lake: EmbeddedBranchCatalog, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    sim.inject(503, times=MANY, path=ENTRIES)
    run = _run(lake, _client(sim, attempts=5))
    _assert_main_unchanged(lake, run, NightscoutUnavailable, "(HTTP 503) after 5 attempts")
    assert run.requests == 5
    _assert_no_leak(tmp_path, run, caplog, capsys)


# ----------------------------------------------------------------------------- the reader


def test_a_document_a_million_levels_deep_never_reaches_the_json_reader() -> None:
    deep = b'{"_id":"x","date":1,"v":' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}"
    parsed = parse_documents(b'[{"_id":"a","date":2},' + deep + b"]")
    assert parsed.frame.get_column("_id").to_list() == ["a"]
    assert parsed.set_aside[0].record_id == "x"
    assert parsed.set_aside[0].reason.startswith("unreadable document: nested 1000001 levels")
