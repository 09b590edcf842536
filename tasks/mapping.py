"""Bounded fan-out of a Prefect task over partitions, gathering every outcome."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prefect.futures import PrefectFuture, as_completed

__all__ = ["bounded_submit"]

T = TypeVar("T")


def bounded_submit(
    submit: Callable[[T], PrefectFuture[Any]], items: Iterable[T], limit: int
) -> Iterator[tuple[T, PrefectFuture[Any]]]:
    """Submit ``items`` keeping at most ``limit`` in flight; yield each as it finishes."""
    pending: deque[T] = deque(items)
    inflight: dict[PrefectFuture[Any], T] = {}
    while pending or inflight:
        while pending and len(inflight) < max(1, limit):
            item = pending.popleft()
            inflight[submit(item)] = item
        done = next(as_completed(list(inflight)))
        yield inflight.pop(done), done
