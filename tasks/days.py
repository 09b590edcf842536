"""Day ranges: the one form a range of days takes inside Cascade.

Users, the command line and deployment parameters speak of inclusive days
(``backfill 2024-01-01 2024-12-31``); a ``DayRange`` is built from those at the edge and
handed on unchanged, and only the code that queries a server or bounds a table turns it
into the half-open UTC interval it needs (``utc_bounds``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from tasks.errors import ConfigError

__all__ = ["DayRange", "utc_midnight"]

_ONE_DAY = timedelta(days=1)


def utc_midnight(day: date) -> datetime:
    """00:00 UTC of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class DayRange:
    """The days ``first`` to ``last``, both included."""

    first: date
    last: date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ConfigError(f"day range ends ({self.last}) before it starts ({self.first})")

    @classmethod
    def one(cls, day: date) -> DayRange:
        """The range of a single day."""
        return cls(day, day)

    def __len__(self) -> int:
        return (self.last - self.first).days + 1

    def __iter__(self) -> Iterator[date]:
        return (self.first + timedelta(days=i) for i in range(len(self)))

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.first <= day <= self.last

    @property
    def stop(self) -> date:
        """The day after the last one (the exclusive end)."""
        return self.last + _ONE_DAY

    def utc_bounds(self) -> tuple[datetime, datetime]:
        """``[00:00 UTC of first, 00:00 UTC of the day after last)``."""
        return utc_midnight(self.first), utc_midnight(self.stop)

    def chunks(self, days: int) -> list[DayRange]:
        """Consecutive ranges of at most ``days`` days covering this one."""
        if days < 1:
            raise ConfigError(f"chunk_days must be at least 1, got {days}")
        out, lo = [], self.first
        while lo <= self.last:
            hi = min(lo + timedelta(days=days - 1), self.last)
            out.append(DayRange(lo, hi))
            lo = hi + _ONE_DAY
        return out

    def label(self) -> str:
        """``2024-03-01..2024-03-07`` (or one day's date)."""
        return str(self.first) if self.first == self.last else f"{self.first}..{self.last}"

    def __str__(self) -> str:
        return self.label()
