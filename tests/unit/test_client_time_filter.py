"""A server that ignores the time filter: the client says so and stops, against the simulator.

The simulator answers with a fixed body (fault injection) the way such a server does: the
same newest documents whatever ``find[...]`` asks for. Every test caps the requests the
client may make, so a client that paged on forever fails instead of hanging.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import polars as pl
import pytest

from tasks.errors import NightscoutBadResponse
from tasks.nightscout import NightscoutClient, RetryPolicy
from tasks.settings import NightscoutSettings
from tasks.simulator import SimulatorServer, SiteConfig, expected_records

NOW = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
SITE = SiteConfig("a", seed=3)
PAGE = 40
CAP = 25  # requests; a handful is enough for any window here


class _Capped(httpx.HTTPTransport):
    """A real transport that refuses to send more than ``cap`` requests."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.sent, self.cap = 0, cap

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent > self.cap:
            raise AssertionError(f"the client kept paging past {self.cap} requests")
        return super().handle_request(request)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=5) as server:
        yield server


@pytest.fixture
def transport(sim: SimulatorServer) -> _Capped:
    sim.clear_faults()
    return _Capped(CAP)


def _fetch(sim: SimulatorServer, transport: _Capped, collection: str, start: datetime,
           end: datetime) -> pl.DataFrame:
    with NightscoutClient(NightscoutSettings(sim.url_for("a"), "a"), page_size=PAGE,
                          retry=RetryPolicy(attempts=1), transport=transport,
                          sleep=lambda s: None) as client:
        return client.fetch_window(collection, start, end).frame


def _newest(collection: str, n: int) -> list[dict[str, Any]]:
    """The site's ``n`` newest documents up to NOW, newest first, as Nightscout sends them."""
    docs = expected_records(SITE, NOW.date() - timedelta(days=1), NOW.date() + timedelta(days=1),
                            collection, now=NOW)
    return docs[:n]


def _ignore_filters(sim: SimulatorServer, docs: list[dict[str, Any]], collection: str) -> None:
    """From now on the simulator answers ``collection`` with ``docs``, whatever is asked."""
    sim.inject(body=json.dumps(docs), times=CAP + 5, path=f"/a/api/v1/{collection}")


@pytest.mark.parametrize("collection", ["entries", "treatments"])
def test_a_page_of_documents_after_the_window_is_refused_at_once(
    sim: SimulatorServer, transport: _Capped, collection: str,
) -> None:
    _ignore_filters(sim, _newest(collection, PAGE), collection)
    start = datetime(2024, 4, 8, tzinfo=UTC)
    with pytest.raises(NightscoutBadResponse, match="ignores the time filter") as raised:
        _fetch(sim, transport, collection, start, start + timedelta(days=1))
    assert transport.sent == 1
    assert "proxy or cache" in str(raised.value) and "nothing was written" in str(raised.value)


def test_the_same_newest_page_again_is_refused_instead_of_paged_forever(
    sim: SimulatorServer, transport: _Capped,
) -> None:
    # the window holds the newest documents: the first page is right, the second repeats it
    _ignore_filters(sim, _newest("entries", PAGE), "entries")
    start = datetime(2024, 4, 10, tzinfo=UTC)
    with pytest.raises(NightscoutBadResponse, match=r"ignores the time filter: asked for date "
                                                    r"in \[\d+, \d+\]"):
        _fetch(sim, transport, "entries", start, start + timedelta(days=1))
    assert transport.sent == 2


def test_a_server_ignoring_count_too_is_refused(
    sim: SimulatorServer, transport: _Capped,
) -> None:
    # three pages' worth for a page's count, every one inside the two-day window asked for
    _ignore_filters(sim, _newest("entries", 3 * PAGE), "entries")
    start = datetime(2024, 4, 9, tzinfo=UTC)
    with pytest.raises(NightscoutBadResponse, match="ignores the time filter"):
        _fetch(sim, transport, "entries", start, start + timedelta(days=2))
    assert transport.sent == 2


def test_a_short_answer_is_the_last_page_and_kept_once(
    sim: SimulatorServer, transport: _Capped,
) -> None:
    # fewer documents than a page: nothing more is asked, so nothing can repeat; those
    # outside the window go on to shaping, which sets them aside with the reason
    docs = _newest("entries", PAGE // 2)
    _ignore_filters(sim, docs, "entries")
    start = datetime(2024, 4, 9, tzinfo=UTC)
    frame = _fetch(sim, transport, "entries", start, start + timedelta(days=1))
    assert sorted(frame.get_column("_id").to_list()) == sorted(d["_id"] for d in docs)
    assert transport.sent == 1


def test_a_server_that_honours_the_filter_pages_as_before(
    sim: SimulatorServer, transport: _Capped,
) -> None:
    start = datetime(2024, 4, 9, tzinfo=UTC)
    frame = _fetch(sim, transport, "entries", start, start + timedelta(days=1))
    source = expected_records(SITE, start.date(), start.date() + timedelta(days=1), "entries")
    assert sorted(frame.get_column("_id").to_list()) == sorted(d["_id"] for d in source)
    assert len(source) > 5 * PAGE and transport.sent <= CAP  # several full pages
