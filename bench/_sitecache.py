"""The simulator's day cache for the suite: whole sites generated ahead, in another process.

The simulator serves each (site, day, collection) from ``server._day_index``. For the
``ingest``, ``shape`` and ``chain`` benchmarks the suite generates every day they ask for
before any timing (a few site-years at most). The ``scale`` benchmark asks for up to 100
site-years, ~150 MB each once serialised: too many to hold. So its sites are generated one
at a time by a warming process (``SiteWarmer``), while the ingest child works on the site
before, and dropped once the child has moved past them (``SiteDayCache.evict``): the
simulator holds the sites warmed up front, the site being ingested and the next one.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import date
from typing import Any

from bench._cascade import rss_mib

__all__ = ["SiteDayCache", "SiteWarmer", "build_site"]

Key = tuple[int, str]  # (day ordinal, collection)


class SiteDayCache:
    """A drop-in for ``server._day_index``: days kept per site until evicted.

    A day asked for and not held is generated on the spot (in the serving thread) and
    kept; ``misses`` counts those per site since ``reset_misses``.
    """

    def __init__(self, generate: Callable[[Any, int, str], Any]) -> None:
        self._generate = generate
        self._days: dict[str, dict[Key, Any]] = {}
        self.misses: Counter[str] = Counter()

    def __call__(self, site: Any, ordinal: int, collection: str) -> Any:
        held = self._days.get(site.site_id)
        index = None if held is None else held.get((ordinal, collection))
        if index is None:
            index = self._generate(site, ordinal, collection)
            self._days.setdefault(site.site_id, {})[(ordinal, collection)] = index
            self.misses[site.site_id] += 1
        return index

    def load(self, site_id: str, days: dict[Key, Any]) -> None:
        """Hold ``days`` (generated elsewhere) for ``site_id``."""
        self._days.setdefault(site_id, {}).update(days)

    def evict(self, site_id: str) -> int:
        """Drop every day held for ``site_id``; how many there were."""
        return len(self._days.pop(site_id, {}))

    def holds(self, site_id: str) -> bool:
        """Whether any day of ``site_id`` is held."""
        return bool(self._days.get(site_id))

    def sites(self) -> list[str]:
        """Site ids with days held."""
        return [s for s, days in self._days.items() if days]

    def reset_misses(self) -> None:
        """Start counting misses afresh (after warming up front)."""
        self.misses.clear()


def build_site(site: Any, ordinals: list[int], collections: tuple[str, ...]
               ) -> tuple[dict[Key, Any], float, float, float]:
    """Generate every (day, collection) of one site (runs in the warming process).

    Returns the days, the seconds and CPU seconds it took, and the process's peak RSS (MiB).
    """
    from tasks.simulator import server

    generate = server._day_index.__wrapped__  # not the process's own LRU cache
    started, cpu = time.perf_counter(), time.process_time()
    days = {(o, c): generate(site, o, c) for o in ordinals for c in collections}
    return days, time.perf_counter() - started, time.process_time() - cpu, rss_mib()[1]


class SiteWarmer:
    """Generates whole sites in one spawned process and loads them into a ``SiteDayCache``.

    ``prefetch`` starts a site in the background; ``ensure`` waits for it (or generates it
    there and then) and loads it; ``evict`` drops it. Sites in ``pinned`` (warmed up front)
    are never generated nor evicted here.
    """

    def __init__(self, cache: SiteDayCache, days: Iterable[date], collections: tuple[str, ...],
                 pinned: Iterable[str] = ()) -> None:
        self.cache = cache
        self.ordinals = [d.toordinal() for d in days]
        self.collections = collections
        self.pinned = set(pinned)
        self._pool = ProcessPoolExecutor(max_workers=1,
                                         mp_context=multiprocessing.get_context("spawn"))
        self._pending: dict[str, Future[tuple[dict[Key, Any], float, float, float]]] = {}
        self.generated = 0  # sites generated
        self.generate_s = 0.0  # seconds inside the warming process
        self.generate_cpu_s = 0.0
        self.load_s = 0.0  # seconds in this process receiving and loading them
        self.waited_s = 0.0  # seconds ``ensure`` waited for a site not yet generated
        self.worker_peak_rss_mib = 0.0

    def prefetch(self, site: Any) -> None:
        """Start generating ``site`` unless it is held, pinned or already under way."""
        sid = site.site_id
        if sid in self.pinned or sid in self._pending or self.cache.holds(sid):
            return
        self._pending[sid] = self._pool.submit(build_site, site, self.ordinals,
                                               self.collections)

    def ensure(self, site: Any) -> float:
        """Make sure ``site`` is held; the seconds spent waiting for it."""
        sid = site.site_id
        if sid in self.pinned or self.cache.holds(sid):
            return 0.0
        self.prefetch(site)
        started = time.perf_counter()
        days, seconds, cpu, peak = self._pending.pop(sid).result()
        waited = time.perf_counter() - started
        loading = time.perf_counter()
        self.cache.load(sid, days)
        del days
        self.load_s += time.perf_counter() - loading
        self.waited_s += waited
        self.generated += 1
        self.generate_s += seconds
        self.generate_cpu_s += cpu
        self.worker_peak_rss_mib = max(self.worker_peak_rss_mib, peak)
        return waited

    def evict(self, site_id: str) -> int:
        """Drop ``site_id``'s days unless pinned; how many were dropped."""
        return 0 if site_id in self.pinned else self.cache.evict(site_id)

    def stats(self) -> dict[str, float]:
        """What warming cost so far (generation happens in the warming process)."""
        return {"sites_generated": self.generated, "generate_s": self.generate_s,
                "generate_cpu_s": self.generate_cpu_s, "load_s": self.load_s,
                "waited_s": self.waited_s, "worker_peak_rss_mib": self.worker_peak_rss_mib}

    def close(self) -> None:
        """Stop the warming process (pending sites are dropped)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
