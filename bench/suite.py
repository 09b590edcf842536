"""Benchmark suite: Cascade's ingestion and pipeline speed, side by side with dlt.

    UV_PROJECT_ENVIRONMENT=.venv-bench uv run --frozen --group bench python bench/suite.py
    ... python bench/suite.py --quick                       # a few minutes
    ... python bench/suite.py --only ingest,shape --repeat 5 --ingest-days 1,30

Benchmarks (``--only``, default all):

- ``ingest``: one site from the local simulator into Iceberg (fetch → shape → contract →
  commit) for each of ``--ingest-days``, Cascade and dlt (REST API source → filesystem
  destination, Iceberg table format); rows/s and the ratio.
- ``shape``: shaping + contract alone on ``--shape-rows`` pre-fetched readings, one core.
- ``scale``: Cascade ingesting ``--scale`` site-years: wall time and peak memory, plotted.
- ``chain``: the whole chain (ingest → dbt build → validate → promote → publish) through
  Prefect's ephemeral API, embedded profile: the ``daily`` flow for one day and a
  ``backfill`` of each of ``--chain-days`` (``--chain-flows``), dbt plain and/or one task
  per node (``--chain-dbt``). Each run's flow runs and task runs are read back from the
  API: stage wall times and shares, runs created, start-up and Prefect overhead
  (``bench/_overhead.py`` defines each figure).

Every run is a fresh process (``seconds`` excludes imports and start-up, except for
``chain``: process launch → the flow call returning); the simulator runs in this process, with
every day it serves generated before any timing starts. Iceberg hygiene (snapshots, data
files, average file size) comes from the last run of the largest ingest. Prints the
tables, writes them as markdown (``--out-md``) and JSON (``--out-json``), and the scaling
plot (``--plot``). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(REPO))

from bench._overhead import DEFINITIONS as CHAIN_DEFINITIONS
from bench._report import machine_facts, render_markdown, to_json

__all__ = ["main", "parse_args"]

BENCHMARKS: Final = ("ingest", "shape", "scale", "chain")
CHAIN_FLOWS: Final = ("daily", "backfill")
CHAIN_DBT: Final = {"plain": False, "nodes": True}
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


def _run_child(kind: str, spec: dict[str, Any], env: dict[str, str] | None = None,
               unset: tuple[str, ...] = ()) -> dict[str, Any]:
    """One timed run in a fresh interpreter; its last stdout line is its JSON result."""
    full = {k: v for k, v in {**os.environ, **_QUIET_ENV, **(env or {})}.items()
            if k not in unset}
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--child", kind, json.dumps(spec)],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S,
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


def _warm_plan(args: argparse.Namespace, sites: dict[str, Any]) -> list[Any]:
    def days(n: int, margin: int = 1) -> list[date]:
        return [END - timedelta(days=i) for i in range(-margin, n + margin)]

    all3 = ("entries", "treatments", "devicestatus")
    chain = args.chain_days if "chain" in args.only else []
    year = max([*args.ingest_days, *chain, 365 if "scale" in args.only else 0])
    plan: list[tuple[Any, list[date], tuple[str, ...]]] = [(s, days(year), all3) for k, s in sites.items() if k != "libre"]
    if "libre" in sites:
        plan.append((sites["libre"], days(_shape_days(args.shape_rows)), ("entries",)))
    return plan


@contextmanager
def _simulator(args: argparse.Namespace) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The simulator with every site the runs need, its day cache unbounded and warm."""
    from tasks.simulator import SimulatorServer
    from tasks.simulator import server as server_module

    # The server keeps 1,500 days per process; 10 site-years are ~11,000 (about 1.5 GB).
    server_module._day_index = lru_cache(maxsize=None)(server_module._day_index.__wrapped__)
    sites = _sites(args)
    history = max([*args.ingest_days, *args.chain_days, 365, _shape_days(args.shape_rows)]) + 10
    started = time.perf_counter()
    count = _warm(server_module, _warm_plan(args, sites))
    print(f"simulator: {len(sites)} sites, {count:,} site-days generated in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
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

    from tasks.ingest import utc_midnight
    from tasks.nightscout import NightscoutClient
    from tasks.settings import NightscoutSettings

    start = utc_midnight(END - timedelta(days=_shape_days(rows) - 1))
    end = utc_midnight(END + timedelta(days=1))
    settings = NightscoutSettings(sim.url_for("libre"), "libre", SecretStr(SECRET))
    with NightscoutClient(settings, page_size=50_000) as client:
        docs = client.fetch_window("entries", start, end).head(rows)
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


def run_scale(sim: Any, args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    """Cascade ingesting N site-years (N sites, 365 days each): wall time and peak memory."""
    year = next((f for f in result["figures"] if f["benchmark"] == "ingest"
                 and f["system"] == "cascade" and f["size"] == "365 d"), None)
    for n in args.scale:
        ids = ["a", *(f"s{i}" for i in range(1, n))]
        label = f"{n} site-year{'s' if n > 1 else ''}"
        if n == 1 and year is not None:  # the same workload as the 365-day ingest
            result["figures"].append(_figure("scale", "cascade", label, year["runs"]))
            continue
        runs = []
        for i in range(args.scale_repeat):
            runs.append(_run_child("cascade-ingest",
                                   _ingest_spec(sim, ids, 365, args, work, hygiene=False)))
            print(f"  scale {n} site-years run {i + 1}: {runs[-1]['seconds']:.1f} s, "
                  f"{runs[-1]['peak_rss_mib']:.0f} MiB", flush=True)
        result["figures"].append(_figure("scale", "cascade", label, runs))
    if 100 not in args.scale:
        result["notes"].append(
            "100 site-years not run (--scale "
            f"{','.join(map(str, args.scale))}): at the measured rate it would take well "
            "over the suite's 15-minute budget; see the extrapolation in the plot")


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


def plot_scaling(figures: list[dict[str, Any]], path: Path) -> bool:
    """Wall time and peak memory against site-years, with a linear extrapolation to 100."""
    points = sorted((int(f["size"].split()[0]), f) for f in figures if f["benchmark"] == "scale")
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [n for n, _ in points]
    secs = [statistics.median(f["seconds"]) for _, f in points]
    mem = [max(f["peak_rss_mib"]) for _, f in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(xs, secs, "o-", color="tab:blue", label="wall time (median)")
    if len(xs) > 1 and max(xs) < 100:
        rate = (secs[-1] - secs[0]) / (xs[-1] - xs[0])
        ax.plot([xs[-1], 100], [secs[-1], secs[-1] + rate * (100 - xs[-1])], ":",
                color="tab:blue", label="wall time, extrapolated")
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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _write(result: dict[str, Any], args: argparse.Namespace) -> str:
    """Write markdown, JSON and the plot as they stand (after each benchmark, and at the end)."""
    plot_scaling(result["figures"], args.plot)
    markdown = render_markdown(result)
    for path, text in ((args.out_md, markdown), (args.out_json, to_json(result))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return markdown


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; print and write the results."""
    args = parse_args(argv)
    if args.child:
        _child_main(*args.child)
        return 0
    result: dict[str, Any] = {
        "meta": {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "machine": machine_facts(),
                 "options": {k: v for k, v in vars(args).items() if k != "child"}},
        "figures": [], "hygiene": {}, "notes": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade-suite-") as tmp, _simulator(args) as (sim, _):
        for name in args.only:
            print(f"{name} …", flush=True)
            try:
                _RUNNERS[name](sim, args, Path(tmp), result)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(exc, file=sys.stderr)
                result["notes"].append(f"{name} failed: {str(exc).splitlines()[0]} "
                                       f"(last line: {str(exc).strip().splitlines()[-1]})")
            _write(result, args)
    if "scale" in args.only:
        result["notes"].append(f"scaling plot: {args.plot}")
    result["meta"]["wall_s"] = time.perf_counter() - started
    result["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print("\n" + _write(result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
