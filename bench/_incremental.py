"""One ``backfill`` or ``daily`` run for the incremental benchmark, in this fresh process.

The suite side (``bench/incremental.py``) starts this process with the embedded profile,
a ``CASCADE_HOME`` that holds the history so far and a migrated ``PREFECT_HOME``; this side
registers a ``nightscout-site`` block per simulated site in Prefect's ephemeral API, runs
the flow with plain dbt, and reads the parent's stages back from the API (as the chain
benchmark does, ``bench._chain``).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

from bench._cascade import cpu_seconds, peak_rss_mib, rss_mib

__all__ = ["run_flow"]


def _register_sites(sites: list[dict[str, str]], secret: str) -> list[str]:
    from pydantic import SecretStr

    from blocks.nightscout import NightscoutSite

    names = []
    for site in sites:
        name = f"bench-{site['site_id']}"
        NightscoutSite(url=site["url"], site_id=site["site_id"],
                       api_secret=SecretStr(secret)).save(name, overwrite=True)
        names.append(name)
    return names


def _call(spec: dict[str, Any], blocks: list[str]) -> Any:
    from flows.pipeline import backfill, daily

    flow = daily if spec["flow"] == "daily" else backfill
    kwargs: dict[str, Any] = {"sites": blocks, "dbt_node_tasks": False, "return_state": True}
    if spec.get("full_refresh") is not None:  # only where the flow has the parameter
        if "full_refresh" not in inspect.signature(flow.fn).parameters:
            raise RuntimeError(f"{spec['flow']} has no full_refresh parameter in this code")
        kwargs["full_refresh"] = spec["full_refresh"]
    if spec["flow"] == "daily":
        return daily(day=date.fromisoformat(spec["day"]), **kwargs)
    return backfill(start=date.fromisoformat(spec["start"]), end=date.fromisoformat(spec["end"]),
                    chunk_days=spec["chunk_days"], max_concurrency=spec["workers"], **kwargs)


@contextmanager
def _rss_timeline(every_s: float = 0.2) -> Iterator[list[tuple[float, float]]]:
    """This process's resident memory every ``every_s`` while the block runs: [(POSIX s,
    MiB)], so each stage's peak can be told apart (the process's high-water mark cannot)."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while True:
            samples.append((time.time(), rss_mib()[0]))
            if done.wait(every_s):
                return

    sampler = threading.Thread(target=sample, name="rss-timeline", daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


def run_flow(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the flow of ``spec`` and return its wall times, stages and peak memory.

    ``spec``: flow (``daily``/``backfill``), sites ([{site_id, url}]), secret, day or
    start/end (ISO), chunk_days, workers, optional full_refresh, launched_at (POSIX s).
    """
    from bench._chain import _read_back
    from bench._overhead import chain_breakdown

    blocks = _register_sites(spec["sites"], spec["secret"])
    imported_at = time.time()
    cpu = cpu_seconds()
    with _rss_timeline() as rss:
        state = _call(spec, blocks)
    returned_at = time.time()
    cpu = cpu_seconds() - cpu
    if not state.is_completed():
        raise RuntimeError(f"{spec['flow']} ended {state.name}: {state.message}")
    runs = _read_back(str(state.state_details.flow_run_id))
    breakdown = chain_breakdown({**runs, "launched_at": spec["launched_at"],
                                 "imported_at": imported_at, "returned_at": returned_at,
                                 "samples": [], "rss": rss})
    result = state.result()
    build: dict[str, Any] = {}
    if isinstance(result, dict):  # the code before typed flow results
        build = {"seconds": result.get("build_seconds", {})}
    elif getattr(result, "build", None) is not None:
        report = result.build
        build = {"seconds": report.seconds, "full_refresh": getattr(report, "full_refresh", None),
                 "changes": getattr(report, "changes", None)}
    return {"seconds": returned_at - spec["launched_at"], "cpu_s": cpu,
            "peak_rss_mib": peak_rss_mib(), "parent_wall_s": breakdown["parent_wall_s"],
            "stages": breakdown["stages"], "build": build}
