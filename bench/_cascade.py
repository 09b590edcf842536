"""Cascade's side of the suite: each function is one timed run, in its own process.

The plain functions the Prefect tasks wrap (no orchestrator), as bench/ingest_year.py
does. Each returns a dict of figures: ``seconds`` covers the work only (not the imports
or the process start), ``peak_rss_mib`` the process's high-water mark.
"""

from __future__ import annotations

import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "SYNC_PREFIX",
    "cpu_seconds",
    "ingest_sites",
    "peak_rss_mib",
    "rss_mib",
    "shape_and_check",
    "table_hygiene",
]

SYNC_PREFIX = "@bench-sync "  # a line the scale child writes to the suite before each site


def rss_mib() -> tuple[float, float]:
    """(current, high-water) resident memory of this process, MiB (0, 0 where unknown)."""
    now = peak = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    except OSError:
        pass
    return now / 1024, peak / 1024


def peak_rss_mib() -> float:
    """High-water resident memory of this process or any child it waited for, MiB.

    The process's own figure is ``VmHWM``: ``ru_maxrss`` survives ``exec`` and so would
    report the parent's size (the suite, holding the simulator) for a fresh child.
    """
    own = rss_mib()[1] or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return max(own, kids)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def table_hygiene(catalog: Any, namespaces: tuple[str, ...] = ("raw", "audit")
                  ) -> list[dict[str, Any]]:
    """Snapshots, data files and average data-file size of every table in ``namespaces``."""
    out = []
    for ns in namespaces:
        for ident in sorted(catalog.list_tables(ns)):
            table = catalog.load_table(ident)
            sizes = table.inspect.files().column("file_size_in_bytes").to_pylist()
            out.append({"table": ".".join(ident), "snapshots": len(table.snapshots()),
                        "data_files": len(sizes),
                        "avg_file_kib": sum(sizes) / max(1, len(sizes)) / 1024})
    return out


def _window(settings: Any, catalog: Any, timezone: str, lo: datetime, hi: datetime) -> int:
    from tasks.ingest import ingest_window
    from tasks.nightscout import NightscoutClient
    from tasks.shaping import ShapeContext

    ctx = ShapeContext(settings.site_id, timezone, lo, hi, "bench", datetime.now(UTC))
    with NightscoutClient(settings) as client:
        return ingest_window(client, catalog, ctx).committed


def _ingest_site(settings: Any, catalog: Any, windows: list[tuple[datetime, datetime]],
                 workers: int) -> int:
    """Profiles, then every window (``workers`` in flight, as the backfill flow runs them)."""
    from tasks.ingest import ingest_profiles, resolve_timezone
    from tasks.nightscout import NightscoutClient
    from tasks.shaping import ShapeContext

    now = datetime.now(UTC)
    with NightscoutClient(settings) as client:
        profiles = ingest_profiles(client, catalog, ShapeContext(
            settings.site_id, "UTC", now, now, "bench", now))
    timezone = resolve_timezone(None, profiles)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda w: _window(settings, catalog, timezone, *w), windows)
        return sum(done)


def _lakehouse_facts(catalog: Any) -> dict[str, Any]:
    """Snapshots of each raw table and the size of ``raw.entries``'s metadata JSON (what a
    commit reads, copies and rewrites), read between sites, outside the timed work."""
    from urllib.parse import unquote, urlsplit

    facts: dict[str, Any] = {}
    for ident in sorted(catalog.list_tables("raw")):
        table = catalog.load_table(ident)
        facts[f"snapshots_{ident[-1]}"] = len(table.snapshots())
        if ident[-1] == "entries":
            path = Path(unquote(urlsplit(table.metadata_location).path))
            facts["metadata_kib"] = path.stat().st_size / 1024 if path.exists() else 0.0
    return facts


def _ask_parent(index: int, site_id: str, last: dict[str, Any] | None) -> None:
    """Tell the suite the next site is due (with the last site's figures) and wait for its
    go-ahead: it warms that site's days in the simulator and drops the ones behind."""
    import json
    import sys

    print(SYNC_PREFIX + json.dumps({"next": index, "site_id": site_id, "last": last}),
          flush=True)
    answer = sys.stdin.readline()
    if answer.strip() != "go":
        raise RuntimeError(f"the suite answered {answer!r}, not 'go'")


def ingest_sites(spec: dict[str, Any]) -> dict[str, Any]:
    """Ingest ``days`` days of every site in ``spec["sites"]`` into a fresh lakehouse.

    ``spec``: sites ([{"site_id", "url"}]), secret, end (ISO date, last day), days,
    chunk_days, workers, home (an empty directory); optional ``per_site`` (record each
    site's seconds, CPU, rows, RSS and the tables' snapshot count after it) and ``sync``
    (before each site, ask the suite on stdout and wait for ``go`` on stdin; implies
    ``per_site``). With ``sync``, ``seconds`` and ``cpu_s`` are the sum over the sites'
    ingests: waiting for the suite and reading the tables' facts are left out (``wall_s``
    includes them).
    """
    from pydantic import SecretStr

    from tasks.branches import EmbeddedBranchCatalog
    from tasks.days import DayRange
    from tasks.settings import NightscoutSettings

    home = Path(spec["home"])
    catalog = EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse").catalog("main")
    end = datetime.fromisoformat(spec["end"]).date()
    days = DayRange(end - timedelta(days=spec["days"] - 1), end).chunks(spec["chunk_days"])
    windows = [chunk.utc_bounds() for chunk in days]
    sync = bool(spec.get("sync"))
    per_site: list[dict[str, Any]] | None = [] if sync or spec.get("per_site") else None
    started, cpu, rows = time.perf_counter(), cpu_seconds(), 0
    timed_s = timed_cpu = waited = 0.0
    for i, site in enumerate(spec["sites"]):
        if sync:
            w0 = time.perf_counter()
            _ask_parent(i, site["site_id"], per_site[-1] if per_site else None)
            waited += time.perf_counter() - w0
        settings = NightscoutSettings(site["url"], site["site_id"], SecretStr(spec["secret"]))
        t0, c0 = time.perf_counter(), cpu_seconds()
        got = _ingest_site(settings, catalog, windows, spec["workers"])
        dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
        rows, timed_s, timed_cpu = rows + got, timed_s + dt, timed_cpu + dc
        if per_site is not None:
            per_site.append({"site": i + 1, "site_id": site["site_id"], "seconds": dt,
                             "cpu_s": dc, "rows": got, "rss_mib": rss_mib()[0],
                             "peak_rss_mib": peak_rss_mib(), **_lakehouse_facts(catalog)})
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    hygiene = table_hygiene(catalog) if spec.get("hygiene") else []
    out: dict[str, Any] = {
        "seconds": timed_s if sync else wall, "cpu_s": timed_cpu if sync else cpu,
        "rows": rows, "peak_rss_mib": peak_rss_mib(), "windows": len(windows),
        "hygiene": hygiene}
    if sync:
        out |= {"wall_s": wall, "wall_cpu_s": cpu, "waited_s": waited}
    if per_site is not None:
        out["per_site"] = per_site
    return out


def shape_and_check(spec: dict[str, Any]) -> dict[str, Any]:
    """Shape + contract of pre-fetched entries (a Parquet file of the client's frame).

    Runs on one core: the process is pinned to one CPU and Polars to one thread (the
    caller sets ``POLARS_MAX_THREADS=1`` before Polars is imported).
    """
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import polars as pl

    from tasks.contracts import check
    from tasks.shaping import ShapeContext, shape

    docs = pl.read_parquet(spec["parquet"])
    ctx = ShapeContext(spec["site_id"], spec["timezone"],
                       datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"]),
                       "bench", datetime.now(UTC))
    t0, c0 = time.perf_counter(), cpu_seconds()
    shaped = shape("entries", docs, ctx)
    t1, c1 = time.perf_counter(), cpu_seconds()
    checked = check("entries", shaped.rows, ctx)
    t2, c2 = time.perf_counter(), cpu_seconds()
    return {"seconds": t2 - t0, "cpu_s": c2 - c0, "rows": docs.height,
            "peak_rss_mib": peak_rss_mib(), "shape_s": t1 - t0, "contract_s": t2 - t1,
            "shape_cpu_s": c1 - c0, "contract_cpu_s": c2 - c1, "valid": checked.valid.height,
            "polars_threads": pl.thread_pool_size()}
