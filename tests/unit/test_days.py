"""DayRange: inclusive days, cut into chunks and turned into UTC bounds only at the edge."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tasks.days import DayRange
from tasks.errors import ConfigError

D = [date(2024, 3, d) for d in range(1, 9)]


def test_a_range_holds_both_ends() -> None:
    days = DayRange(D[0], D[2])
    assert list(days) == D[:3] and len(days) == 3
    assert D[2] in days and D[3] not in days
    assert days.stop == D[3]


def test_utc_bounds_are_half_open_from_midnight_to_the_day_after_last() -> None:
    assert DayRange(D[0], D[1]).utc_bounds() == (datetime(2024, 3, 1, tzinfo=UTC),
                                                 datetime(2024, 3, 3, tzinfo=UTC))


def test_chunks_cover_the_range_in_order_with_a_short_last_chunk() -> None:
    assert DayRange(D[0], D[4]).chunks(2) == [DayRange(D[0], D[1]), DayRange(D[2], D[3]),
                                              DayRange(D[4], D[4])]
    assert DayRange.one(D[5]).chunks(30) == [DayRange(D[5], D[5])]


def test_an_end_before_the_start_and_empty_chunks_are_refused() -> None:
    with pytest.raises(ConfigError, match="before it starts"):
        DayRange(D[2], D[1])
    with pytest.raises(ConfigError, match="chunk_days"):
        DayRange(D[0], D[1]).chunks(0)


def test_labels_name_one_day_or_both_ends() -> None:
    assert str(DayRange.one(D[0])) == "2024-03-01"
    assert DayRange(D[0], D[6]).label() == "2024-03-01..2024-03-07"
