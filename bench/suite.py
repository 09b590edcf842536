"""Benchmark suite: Cascade's ingestion and pipeline speed, side by side with dlt.

    UV_PROJECT_ENVIRONMENT=.venv-bench uv run --frozen --group bench python bench/suite.py
    ... python bench/suite.py --quick                       # a few minutes
    ... python bench/suite.py --only ingest,shape --repeat 5 --ingest-days 1,30

Benchmarks (``--only``, default all):

- ``ingest``: one site from the local simulator into Iceberg (fetch → shape → contract →
  commit) for each of ``--ingest-days``, Cascade and dlt (REST API source → filesystem
  destination, Iceberg table format); rows/s and the ratio.
- ``shape``: shaping + contract alone on ``--shape-rows`` pre-fetched readings, one core.
- ``scale``: Cascade ingesting ``--scale`` site-years (that many sites, one after another,
  into one lakehouse): wall time, CPU and peak memory, plotted, and each site's cost as
  the tables accumulate snapshots.
- ``chain``: the whole chain (ingest → dbt build → validate → promote → publish) through
  Prefect's ephemeral API, embedded profile: the ``daily`` flow for one day and a
  ``backfill`` of each of ``--chain-days`` (``--chain-flows``), dbt plain and/or one task
  per node (``--chain-dbt``). Each run's flow runs and task runs are read back from the
  API: stage wall times and shares, runs created, start-up and Prefect overhead
  (``bench/_overhead.py`` defines each figure).

Every run is a fresh process (``seconds`` excludes imports and start-up, except for
``chain``: process launch → the flow call returning); the simulator runs in this process, with
every day it serves generated before any timing starts, except the scale benchmark's extra
sites: a warming process generates site k + 1 while the child ingests site k, the child
waits (untimed) until its next site is held, and finished sites are dropped
(``bench/_sitecache.py``). Iceberg hygiene (snapshots, data files, average file size) comes
from the last run of the largest ingest. Prints the tables, writes them as markdown
(``--out-md``) and JSON (``--out-json``), and the scaling plot (``--plot``); ``--merge``
merges this run into the results already in ``--out-json`` (the benchmarks run now replace
theirs; each benchmark keeps when, under what load and from what commit it ran). Traffic
goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from bench._overhead import DEFINITIONS as CHAIN_DEFINITIONS
from bench._report import (
    machine_facts,
    merge_results,
    per_site_runs,
    render_markdown,
    to_json,
)

__all__ = ["main", "parse_args"]

REPO: Final = Path(__file__).resolve().parents[1]
BENCHMARKS: Final = ("ingest", "shape", "scale", "chain")
CHAIN_FLOWS: Final = ("daily", "backfill")
CHAIN_DBT: Final = {"plain": False, "nodes": True}
ALL3: Final = ("entries", "treatments", "devicestatus")
NOW: Final = datetime(2025, 1, 2, tzinfo=UTC)
END: Final = NOW.date() - timedelta(days=1)
SECRET: Final = "bench-secret"
_CHILD_TIMEOUT_S: Final = 1800


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The suite's options; ``--quick`` shrinks every size for a smoke run."""
    p = argparse.ArgumentParser(prog="bench/suite.py", description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--systems", default="cascade,dlt", help="ingest: cascade, dlt or both")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--ingest-days", type=_ints, default=[1, 30, 365])
    p.add_argument("--chunk-days", type=int, default=30, help="days per window (both systems)")
    p.add_argument("--workers", type=int, default=2, help="Cascade windows in flight")
    p.add_argument("--shape-rows", type=int, default=1_000_000)
    p.add_argument("--scale", type=_ints, default=[1, 10], help="site-years, e.g. 1,10,100")
    p.add_argument("--scale-repeat", type=int, default=1,
                   help="runs per scaling point (default 1: each is minutes)")
    p.add_argument("--chain-days", type=_ints, default=[365],
                   help="backfill sizes in days, e.g. 1,365 (daily is always one day)")
    p.add_argument("--chain-flows", default=",".join(CHAIN_FLOWS),
                   help="chain: daily, backfill or both")
    p.add_argument("--chain-dbt", default="plain",
                   help="chain: plain (dbt_node_tasks=False), nodes (a task per dbt node) "
                        "or both")
    p.add_argument("--quick", action="store_true",
                   help="1-day ingest, 50k rows, 1 site-year, no chain, 1 run each")
    p.add_argument("--out-json", type=Path, default=REPO / "docs" / "bench-results.json")
    p.add_argument("--out-md", type=Path, default=REPO / "bench" / "results" / "suite.md")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "bench-scaling.png")
    p.add_argument("--merge", action="store_true",
                   help="merge into the results already in --out-json: the benchmarks run "
                        "now replace theirs, the others are kept; markdown and plot are "
                        "written from the whole")
    p.add_argument("--merge-results", type=Path, metavar="JSON",
                   help="run nothing: merge the benchmarks of this results file (written by "
                        "the suite) into --out-json, as --merge would have, and rewrite the "
                        "markdown and plot")
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.ingest_days, args.shape_rows, args.scale = [1], 50_000, [1]
        args.repeat = args.scale_repeat = 1
        args.only = ",".join(b for b in args.only.split(",") if b != "chain")
    args.only = [b for b in args.only.split(",") if b]
    args.systems = [s for s in args.systems.split(",") if s]
    args.chain_flows = [f for f in args.chain_flows.split(",") if f]
    args.chain_dbt = [d for d in args.chain_dbt.split(",") if d]
    for given, allowed in ((args.only, BENCHMARKS), (args.chain_flows, CHAIN_FLOWS),
                           (args.chain_dbt, tuple(CHAIN_DBT))):
        unknown = set(given) - set(allowed)
        if unknown:
            p.error(f"unknown choice(s) {sorted(unknown)}; pick from {allowed}")
    return args


# ----------------------------------------------------------------------------- children

_CHILDREN: Final[dict[str, str]] = {
    "cascade-ingest": "bench._cascade:ingest_sites",
    "cascade-shape": "bench._cascade:shape_and_check",
    "dlt-ingest": "bench._dlt:ingest_site",
    "cascade-chain": "bench._chain:run_chain",
}


def _child_main(kind: str, spec_json: str) -> None:
    module, name = _CHILDREN[kind].split(":")
    func: Callable[[dict[str, Any]], dict[str, Any]] = getattr(
        __import__(module, fromlist=[name]), name)
    print("\n" + json.dumps(func(json.loads(spec_json))), flush=True)


def _child_argv(kind: str, spec: dict[str, Any]) -> list[str]:
    """The command line of one child run of ``kind`` with ``spec``."""
    return [sys.executable, "-m", "bench.suite", "--child", kind, json.dumps(spec)]


def _child_env(env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """A child run's environment: this one, quietened, with ``env`` over it, less ``unset``."""
    return {k: v for k, v in {**os.environ, **_QUIET_ENV, **(env or {})}.items()
            if k not in unset}


def _run_child(kind: str, spec: dict[str, Any], env: dict[str, str] | None = None,
               unset: tuple[str, ...] = ()) -> dict[str, Any]:
    """One timed run in a fresh interpreter; its last stdout line is its JSON result."""
    done = subprocess.run(_child_argv(kind, spec), cwd=REPO, env=_child_env(env, unset),
                          capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


_QUIET_ENV: Final = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                     "RUNTIME__DLTHUB_TELEMETRY": "false"}


# ----------------------------------------------------------------------------- simulator


def _sites(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.simulator import SiteConfig

    def site(site_id: str, seed: int, interval: int = 5) -> SiteConfig:
        return SiteConfig(site_id=site_id, seed=seed, timezone="Europe/London",
                          api_secret=SECRET, interval_min=interval)

    sites = {"a": site("a", 1)}
    if "scale" in args.only:
        sites |= {f"s{i}": site(f"s{i}", 100 + i) for i in range(1, max(args.scale))}
    if "shape" in args.only:
        sites["libre"] = site("libre", 7, interval=1)  # one reading a minute
    return sites


def _shape_days(rows: int) -> int:
    return rows // 1300 + 2  # a 1-minute site yields ~1,400 readings a day, less gaps


def _warm(server_module: Any, plan: list[tuple[Any, list[date], tuple[str, ...]]]) -> int:
    """Generate every (site, day, collection) the runs will ask for, before any timing."""
    count = 0
    for site, days, collections in plan:
        for day in days:
            for name in collections:
                server_module._day_index(site, day.toordinal(), name)
                count += 1
    return count


def _days(n: int, margin: int = 1) -> list[date]:
    """The ``n`` days up to END and ``margin`` more each side (local-time filters reach
    a day further)."""
    return [END - timedelta(days=i) for i in range(-margin, n + margin)]


def _scale_only(site_id: str) -> bool:
    """Sites only the scale benchmark asks for: warmed one at a time while it runs."""
    return site_id.startswith("s") and site_id[1:].isdigit()


def _warm_plan(args: argparse.Namespace, sites: dict[str, Any]) -> list[Any]:
    days = _days

    chain = args.chain_days if "chain" in args.only else []
    year = max([*args.ingest_days, *chain, 365 if "scale" in args.only else 0])
    plan: list[tuple[Any, list[date], tuple[str, ...]]] = [
        (s, days(year), ALL3) for k, s in sites.items() if k != "libre" and not _scale_only(k)]
    if "libre" in sites:
        plan.append((sites["libre"], days(_shape_days(args.shape_rows)), ("entries",)))
    return plan


_LAB: Final[dict[str, Any]] = {}  # the running simulator's sites and day cache


@contextmanager
def _simulator(args: argparse.Namespace) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The simulator with every site the runs need; all but the scale benchmark's extra
    sites generated up front and held (``bench._sitecache``)."""
    from bench._sitecache import SiteDayCache
    from tasks.simulator import SimulatorServer
    from tasks.simulator import server as server_module

    # The server keeps 1,500 days per process; a site-year is ~1,100 (about 150 MB).
    cache = SiteDayCache(server_module._day_index.__wrapped__)
    server_module._day_index = cache  # type: ignore[assignment]  # same call signature
    sites = _sites(args)
    history = max([*args.ingest_days, *args.chain_days, 365, _shape_days(args.shape_rows)]) + 10
    started = time.perf_counter()
    count = _warm(server_module, _warm_plan(args, sites))
    cache.reset_misses()
    print(f"simulator: {len(sites)} sites, {count:,} site-days generated up front in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    _LAB.update(sites=sites, cache=cache)
    with SimulatorServer(list(sites.values()), now=NOW, history_days=history) as sim:
        yield sim, sites


# ----------------------------------------------------------------------------- benchmarks


def _figure(benchmark: str, system: str, size: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    keep = [{k: v for k, v in r.items() if k != "hygiene"} for r in runs]
    return {"benchmark": benchmark, "system": system, "size": size,
            "rows": runs[-1].get("rows", 0), "seconds": [r["seconds"] for r in runs],
            "peak_rss_mib": [r["peak_rss_mib"] for r in runs if "peak_rss_mib" in r],
            "runs": keep}


def _ingest_spec(sim: Any, site_ids: list[str], days: int, args: argparse.Namespace,
                 work: Path, hygiene: bool) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    return {"sites": [{"site_id": s, "url": sim.url_for(s)} for s in site_ids],
            "url": sim.url_for(site_ids[0]), "secret": SECRET, "end": END.isoformat(),
            "days": days, "chunk_days": args.chunk_days, "workers": args.workers,
            "home": str(home), "hygiene": hygiene}


def _dlt_available() -> bool:
    try:
        import dlt  # noqa: F401
    except ImportError:
        return False
    return True


def run_ingest(sim: Any, args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    """Cascade and dlt, each size, ``--repeat`` runs each, interleaved run by run."""
    systems = list(args.systems)
    if "dlt" in systems and not _dlt_available():
        systems.remove("dlt")
        result["notes"].append("dlt is not installed here: sync the bench group "
                               "(UV_PROJECT_ENVIRONMENT=.venv-bench uv sync --group bench)")
    largest = max(args.ingest_days)
    for days in args.ingest_days:
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for i in range(args.repeat):
            for system in systems:
                last = days == largest and i == args.repeat - 1
                spec = _ingest_spec(sim, ["a"], days, args, work, hygiene=last)
                runs[system].append(_run_child(f"{system}-ingest", spec))
                print(f"  ingest {days} d {system} run {i + 1}: "
                      f"{runs[system][-1]['seconds']:.1f} s", flush=True)
                if last:
                    result["hygiene"][f"{system}, {days} d"] = runs[system][-1]["hygiene"]
        for system in systems:
            result["figures"].append(_figure("ingest", system, f"{days} d", runs[system]))


def _prefetch_entries(sim: Any, rows: int, work: Path) -> dict[str, Any]:
    """Fetch ``rows`` readings of the 1-minute site with Cascade's client, as Parquet."""
    from pydantic import SecretStr

    from tasks.days import utc_midnight
    from tasks.nightscout import NightscoutClient
    from tasks.settings import NightscoutSettings

    start = utc_midnight(END - timedelta(days=_shape_days(rows) - 1))
    end = utc_midnight(END + timedelta(days=1))
    settings = NightscoutSettings(sim.url_for("libre"), "libre", SecretStr(SECRET))
    with NightscoutClient(settings, page_size=50_000) as client:
        docs = client.fetch_window("entries", start, end).frame.head(rows)
    if docs.height < rows:
        raise RuntimeError(f"the simulator served {docs.height:,} readings, not {rows:,}")
    path = work / f"entries-{rows}.parquet"
    docs.write_parquet(path)
    return {"parquet": str(path), "site_id": "libre", "timezone": "Europe/London",
            "start": start.isoformat(), "end": end.isoformat()}


def run_shape(sim: Any, args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    """Shaping + contract of pre-fetched readings, one core, ``--repeat`` runs."""
    spec = _prefetch_entries(sim, args.shape_rows, work)
    runs = []
    for i in range(args.repeat):
        runs.append(_run_child("cascade-shape", spec, {"POLARS_MAX_THREADS": "1"}))
        print(f"  shape+contract run {i + 1}: {runs[-1]['seconds']:.2f} s", flush=True)
    result["figures"].append(_figure("shape+contract", "cascade",
                                     f"{args.shape_rows:,} readings, 1 core", runs))


def _run_synced_child(kind: str, spec: dict[str, Any], on_next: Callable[[dict[str, Any]], None],
                      work: Path, timeout_s: float) -> dict[str, Any]:
    """A timed run that talks to the suite: before each site it writes a ``SYNC_PREFIX``
    line on stdout and waits for ``go`` on stdin; ``on_next`` handles the line first."""
    from bench._cascade import SYNC_PREFIX

    with tempfile.TemporaryFile("w+", dir=work) as err:
        child = subprocess.Popen(
            _child_argv(kind, spec), cwd=REPO, env=_child_env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            child.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        last = ""
        try:
            assert child.stdin is not None and child.stdout is not None
            for line in child.stdout:
                if line.startswith(SYNC_PREFIX):
                    on_next(json.loads(line[len(SYNC_PREFIX):]))
                    child.stdin.write("go\n")
                    child.stdin.flush()
                elif line.strip():
                    last = line.strip()
            code = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:
            timer.cancel()
        if code != 0:
            err.seek(0)
            stderr = err.read()
            if timed_out.is_set():
                raise subprocess.TimeoutExpired(kind, timeout_s, stderr=stderr[-3000:])
            raise RuntimeError(f"{kind} run failed ({code}):\n{stderr[-3000:]}")
    out: dict[str, Any] = json.loads(last)
    return out


class _ScaleRun:
    """The suite's side of one scale run: on the child's word that site k is next, make
    sure k is held by the simulator, drop the sites before it, start warming k + 1; log."""

    def __init__(self, warmer: Any, sites: list[Any], label: str) -> None:
        self.warmer, self.sites, self.label = warmer, sites, label
        self.started = time.perf_counter()
        self.sim_rss_max = 0.0
        self.held_max = 0
        self.per_site: list[dict[str, Any]] = []  # as the child reports them, for a partial run

    def __call__(self, msg: dict[str, Any]) -> None:
        from bench._cascade import rss_mib

        k = int(msg["next"])
        last = msg.get("last")
        if last:
            self.per_site.append(last)
            print(f"  {self.label}: site {last['site']}/{len(self.sites)} {last['seconds']:.1f} s, "
                  f"CPU {last['cpu_s']:.1f} s, RSS {last['rss_mib']:.0f} MiB "
                  f"(peak {last['peak_rss_mib']:.0f}), {last.get('snapshots_entries', 0)} "
                  f"snapshots, metadata {last.get('metadata_kib', 0):.0f} KiB; "
                  f"{time.perf_counter() - self.started:.0f} s in", flush=True)
        self.warmer.ensure(self.sites[k])
        for done in self.sites[:k]:
            self.warmer.evict(done.site_id)
        if k + 1 < len(self.sites):
            self.warmer.prefetch(self.sites[k + 1])
        self.held_max = max(self.held_max, len(self.warmer.cache.sites()))
        self.sim_rss_max = max(self.sim_rss_max, rss_mib()[0])

    def finish(self) -> dict[str, Any]:
        """Drop the sites this run warmed; what the simulator's side cost."""
        from bench._cascade import rss_mib

        self.sim_rss_max = max(self.sim_rss_max, rss_mib()[0])
        for site in self.sites:
            self.warmer.evict(site.site_id)
        return {"rss_max_mib": self.sim_rss_max, "sites_held_max": self.held_max}


def _scale_notes(result: dict[str, Any], misses: int) -> None:
    result["notes"].append(
        "scale: every site is ingested into the same lakehouse, one after another; the "
        "simulator generates site k + 1's year in a separate warming process while the child "
        "ingests site k, and drops the sites the child has finished (it holds the sites "
        "warmed up front, the current one and the next). The child waits for the site it "
        "is about to ingest (`waited_s`, ~0 but for the first); its seconds and CPU seconds "
        "are the sum of its per-site ingests and leave that wait and the between-site "
        "reading of the tables' snapshot counts out. On this 2-core machine the warming "
        "process (`generate_cpu_s` in the figure's `simulator` entry, ~1/5 of the ingest's "
        "time) competes with the child for the cores, so the child's wall time includes "
        "some of that contention; its CPU seconds and peak RSS are its own")
    if misses:
        result["notes"].append(f"scale: {misses:,} site-days were not warmed in time and "
                               "were generated while the child waited for them (timed)")


def run_scale(sim: Any, args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    """Cascade ingesting N site-years (N sites, 365 days each, one lakehouse): wall time,
    CPU and peak memory, and each site's cost as the tables grow."""
    from bench._cascade import rss_mib
    from bench._sitecache import SiteWarmer

    year = next((f for f in result["figures"] if f["benchmark"] == "ingest"
                 and f["system"] == "cascade" and f["size"] == "365 d"), None)
    cache, sites = _LAB["cache"], _LAB["sites"]
    # margin 2: the client asks treatments and devicestatus from two days before the year
    warmer = SiteWarmer(cache, _days(365, margin=2), ALL3, pinned=cache.sites())
    misses = 0
    try:
        for n in args.scale:
            ids = ["a", *(f"s{i}" for i in range(1, n))]
            label = f"{n} site-year{'s' if n > 1 else ''}"
            if n == 1 and year is not None:  # the same workload as the 365-day ingest
                result["figures"].append(_figure("scale", "cascade", label, year["runs"]))
                continue
            runs = []
            for i in range(args.scale_repeat):
                spec = {**_ingest_spec(sim, ids, 365, args, work, hygiene=False), "sync": True}
                before, missed = warmer.stats(), sum(cache.misses.values())
                coord = _ScaleRun(warmer, [sites[k] for k in ids], f"scale {label}")
                if len(ids) > 1:
                    warmer.prefetch(sites[ids[1]])  # while the child starts up
                try:
                    run = _run_synced_child("cascade-ingest", spec, coord, work,
                                            _CHILD_TIMEOUT_S + 120 * n)
                except (RuntimeError, subprocess.TimeoutExpired):
                    coord.finish()
                    if coord.per_site:  # what the child reported before it stopped
                        result.setdefault("partial", {})[label] = coord.per_site
                    raise
                after = warmer.stats()
                run["simulator"] = {
                    **{k: after[k] - before[k] for k in after if k != "worker_peak_rss_mib"},
                    "worker_peak_rss_mib": after["worker_peak_rss_mib"],
                    "misses": sum(cache.misses.values()) - missed, **coord.finish(),
                    "rss_hwm_mib": rss_mib()[1]}
                misses += run["simulator"]["misses"]
                runs.append(run)
                print(f"  scale {label} run {i + 1}: {run['seconds']:.1f} s, CPU "
                      f"{run['cpu_s']:.1f} s, {run['peak_rss_mib']:.0f} MiB; simulator "
                      f"{run['simulator']['rss_max_mib']:.0f} MiB, warming process "
                      f"{run['simulator']['worker_peak_rss_mib']:.0f} MiB, "
                      f"{run['simulator']['generate_cpu_s']:.0f} CPU s", flush=True)
            result["figures"].append(_figure("scale", "cascade", label, runs))
    finally:
        warmer.close()
    _scale_notes(result, misses)
    if 100 not in args.scale:
        result["notes"].append(
            f"100 site-years not run (--scale {','.join(map(str, args.scale))}); see the "
            "extrapolation in the plot")
    result["notes"].append(f"scaling plot: {args.plot}")


def _chain_runs(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(flow, days, dbt mode) of every chain figure: daily once, backfill per size."""
    sizes = {"daily": [1], "backfill": args.chain_days}
    return [(flow, days, dbt) for dbt in args.chain_dbt for flow in args.chain_flows
            for days in sizes[flow]]


def _chain_spec(flow: str, days: int, dbt: str, args: argparse.Namespace) -> dict[str, Any]:
    start = END - timedelta(days=days - 1)
    return {"flow": flow, "day": END.isoformat(), "start": start.isoformat(),
            "end": END.isoformat(), "chunk_days": args.chunk_days, "workers": args.workers,
            "node_tasks": CHAIN_DBT[dbt]}


def _chain_once(sim: Any, spec: dict[str, Any], work: Path, prefect_home: Path) -> dict[str, Any]:
    env = {"NIGHTSCOUT_URL": sim.url_for("a"), "NIGHTSCOUT_API_SECRET": SECRET,
           "NIGHTSCOUT_SITE_ID": "a", "CASCADE_PROFILE": "embedded",
           "PREFECT_HOME": str(prefect_home),
           "CASCADE_HOME": tempfile.mkdtemp(prefix="chain-", dir=work),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}  # slow on a busy machine
    return _run_child("cascade-chain", {**spec, "launched_at": time.time()}, env,
                      unset=("PREFECT_API_URL",))


def _chain_label(flow: str, days: int, dbt: str) -> str:
    return f"{flow} {days} d, {'plain dbt' if dbt == 'plain' else 'a task per dbt node'}"


def _migrate_prefect_db(prefect_home: Path, result: dict[str, Any]) -> None:
    """Create Prefect's database before any timed run, as an installed Prefect has it:
    otherwise the first run's start-up would include the schema migrations."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade",
                           "-y"], cwd=REPO, env={**os.environ, **_QUIET_ENV,
                                                 "PREFECT_HOME": str(prefect_home)},
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"prefect database upgrade failed:\n{done.stderr[-2000:]}")
    result["notes"].append(f"chain: Prefect's SQLite database created and migrated before "
                           f"the timed runs ({time.perf_counter() - started:.0f} s, not "
                           "counted); every run starts its own ephemeral API server on it")


def run_chain(sim: Any, args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    """Whole chain through Prefect, a fresh process per run, read back from its API."""
    prefect_home = work / "prefect-home"
    _migrate_prefect_db(prefect_home, result)
    for flow, days, dbt in _chain_runs(args):
        spec, label, runs = _chain_spec(flow, days, dbt, args), _chain_label(flow, days, dbt), []
        for i in range(args.repeat):
            runs.append(_chain_once(sim, spec, work, prefect_home))
            b = runs[-1]["breakdown"]
            print(f"  chain {label} run {i + 1}: process {runs[-1]['seconds']:.1f} s, parent "
                  f"{b['parent_wall_s']:.1f} s, {b['flow_runs']} flow runs, "
                  f"{b['task_runs']} task runs", flush=True)
        result["figures"].append(_figure("chain", "cascade", label, runs))
    if CHAIN_DEFINITIONS[0] not in result["notes"]:
        result["notes"] += list(CHAIN_DEFINITIONS)


_RUNNERS: Final = {"ingest": run_ingest, "shape": run_shape, "scale": run_scale,
                   "chain": run_chain}


# ----------------------------------------------------------------------------- output


def plot_scaling(figures: list[dict[str, Any]], path: Path,
                 per_site: list[tuple[str, list[dict[str, Any]]]] | None = None) -> bool:
    """Wall time and peak memory against site-years, with a linear extrapolation to 100;
    beside it, with ``per_site``, the largest run's cost of each site in turn."""
    points = sorted((int(f["size"].split()[0]), f) for f in figures if f["benchmark"] == "scale")
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [n for n, _ in points]
    secs = [statistics.median(f["seconds"]) for _, f in points]
    mem = [max(f["peak_rss_mib"]) for _, f in points]
    longest = max(per_site or [], key=lambda run: len(run[1]), default=None)
    if longest is None:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    else:
        fig, (ax, right) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=110)
    ax.plot(xs, secs, "o-", color="tab:blue", label="wall time (median)")
    if len(xs) > 1 and max(xs) < 100:
        rate = (secs[-1] - secs[0]) / (xs[-1] - xs[0])
        ax.plot([xs[-1], 100], [secs[-1], secs[-1] + rate * (100 - xs[-1])], ":",
                color="tab:blue", label="wall time, extrapolated")
    if longest is not None:  # the largest run, site by site: its own cost curve
        label, records = longest
        site = [r["site"] for r in records]
        cpu = list(itertools.accumulate(r["cpu_s"] for r in records))
        ax.plot(site, list(itertools.accumulate(r["seconds"] for r in records)), "-",
                color="tab:blue", alpha=0.45, label=f"wall time so far ({label} run)")
        ax.plot(site, cpu, "-", color="tab:green", alpha=0.7,
                label=f"CPU time so far ({label} run)")
        first = min(10, len(cpu))
        ax.plot([1, site[-1]], [cpu[first - 1] / first, cpu[first - 1] / first * site[-1]],
                ":", color="tab:gray", label=f"linear at the first {first} sites' CPU rate")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("site-years ingested (one process)"), ax.set_ylabel("seconds")
    twin = ax.twinx()
    twin.plot(xs, mem, "s--", color="tab:red", label="peak RSS")
    twin.axhline(2048, color="tab:red", alpha=0.3, lw=1, label="2 GiB target (100 site-years)")
    twin.set_ylabel("peak RSS, MiB"), twin.set_ylim(0, max(2300, max(mem) * 1.1))
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [str(ln.get_label()) for ln in lines], loc="upper left", fontsize=8)
    ax.set_title("Cascade ingestion cost growth (embedded profile, 2 windows in flight)",
                 fontsize=9)
    if longest is not None:
        right.plot(site, [r["seconds"] for r in records], ".", color="tab:blue", alpha=0.5,
                   label="wall s")
        right.plot(site, [r["cpu_s"] for r in records], ".", color="tab:green", alpha=0.7,
                   label="CPU s")
        right.set_ylim(0, max(r["seconds"] for r in records) * 1.15)
        right.set_xlabel("site, in ingest order (the tables grow by one site-year each)")
        right.set_ylabel("seconds for the site")
        rss = right.twinx()
        rss.plot(site, [r["rss_mib"] for r in records], "-", color="tab:red", lw=1,
                 label="RSS after the site")
        rss.set_ylabel("RSS, MiB"), rss.set_ylim(0, max(r["rss_mib"] for r in records) * 1.3)
        both = right.get_legend_handles_labels()[0] + rss.get_legend_handles_labels()[0]
        right.legend(both, [str(ln.get_label()) for ln in both], loc="lower right", fontsize=8)
        right.set_title(f"Per-site cost as the lakehouse grows ({label})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _git_head() -> str | None:
    """The commit the suite runs from, ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, check=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _load_previous(args: argparse.Namespace) -> dict[str, Any] | None:
    """With ``--merge``: the results already in ``--out-json`` (None when there are none)."""
    if not args.merge:
        return None
    if not args.out_json.exists():
        print(f"--merge: {args.out_json} does not exist yet; writing this run alone",
              flush=True)
        return None
    previous: dict[str, Any] = json.loads(args.out_json.read_text())
    return previous


def _write(result: dict[str, Any], args: argparse.Namespace,
           previous: dict[str, Any] | None = None) -> str:
    """Write markdown, JSON and the plot as they stand (after each benchmark, and at the
    end); with ``previous``, this run's benchmarks replace theirs in it."""
    whole = merge_results(previous, result) if previous is not None else result
    if any(n.startswith("scaling plot:") for n in whole["notes"]):  # the plot written now
        whole = {**whole, "notes": [n for n in whole["notes"] if not n.startswith(
            "scaling plot:")] + [f"scaling plot: {args.plot}"]}
    plot_scaling(whole["figures"], args.plot, per_site_runs(whole))
    markdown = render_markdown(whole)
    for path, text in ((args.out_md, markdown), (args.out_json, to_json(whole))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return markdown


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; print and write the results."""
    args = parse_args(argv)
    if args.child:
        _child_main(*args.child)
        return 0
    if args.merge_results:
        args.merge = True
        done: dict[str, Any] = json.loads(args.merge_results.read_text())
        if not done["meta"].get("benchmarks"):
            raise SystemExit(f"{args.merge_results} records no per-benchmark runs to merge")
        print(_write(done, args, _load_previous(args)))
        return 0
    previous = _load_previous(args)
    git = _git_head()
    result: dict[str, Any] = {
        "meta": {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "machine": machine_facts(), "git": git,
                 "options": {k: v for k, v in vars(args).items() if k != "child"},
                 "benchmarks": {}},
        "figures": [], "hygiene": {}, "notes": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade-suite-") as tmp, _simulator(args) as (sim, _):
        for name in args.only:
            print(f"{name} …", flush=True)
            notes, t0 = len(result["notes"]), time.perf_counter()
            bench_meta = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                          "load_average_start": [round(x, 2) for x in os.getloadavg()]}
            try:
                _RUNNERS[name](sim, args, Path(tmp), result)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(exc, file=sys.stderr)
                text = str(exc).strip() or repr(exc)
                result["notes"].append(f"{name} failed: {text.splitlines()[0]} "
                                       f"(last line: {text.splitlines()[-1]})")
            result["meta"]["benchmarks"][name] = {
                **bench_meta, "wall_s": time.perf_counter() - t0,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "python": result["meta"]["machine"]["python"],
                "versions": result["meta"]["machine"]["versions"], "git": git,
                "notes": result["notes"][notes:]}
            _write(result, args, previous)
    result["meta"]["wall_s"] = time.perf_counter() - started
    result["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n" + _write(result, args, previous))
    return 0


if __name__ == "__main__":
    sys.exit(main())
