"""Incremental benchmark: what a recurring ``daily`` costs as the history grows.

    .venv/bin/python bench/incremental.py --history 1,10,30 --repeat 2 --label after

For each history size N (site-years: N simulated sites of ``--days`` days each), in a fresh
lakehouse: one ``backfill`` of all N sites through the whole chain (ingest, build,
validate, promote, publish), then ``--repeat`` runs of ``daily`` for one site (the last day
of the history, re-read as a nightly run does). Every run is a fresh process through
Prefect's ephemeral API with plain dbt; each records the process wall time (launch → the
flow returned), the parent flow run's wall time and stages as the API recorded them, CPU
seconds and the process's peak RSS, with the machine's load average at start and end.

The simulator runs in this process. It generates the scale sites' days when the backfill
asks for them (its day cache is bounded), so the backfill's wall time carries that work
on this machine's cores; the daily's days are generated before any timing. A watchdog
kills a run whose process tree passes ``--mem-limit-gib`` and records that it did.

Results go to ``--out-json`` (by label; sizes run now replace that label's earlier ones)
and a markdown table (``--out-md``) with the targets of issue 14.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["main"]

NOW: Final = datetime(2025, 1, 2, tzinfo=UTC)
END: Final = NOW.date() - timedelta(days=1)
SECRET: Final = "bench-secret"
_QUIET: Final = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/incremental.py", description=__doc__.split("\n")[0])
    p.add_argument("--history", default="1,10,30", help="site-years of history, e.g. 1,10,30")
    p.add_argument("--days", type=int, default=365, help="days per site (default 365)")
    p.add_argument("--repeat", type=int, default=2, help="daily runs per history size")
    p.add_argument("--label", default="after", help="names this code's results (before/after)")
    p.add_argument("--mem-limit-gib", type=float, default=12.0)
    p.add_argument("--timeout-s", type=float, default=3 * 3600)
    p.add_argument("--out-json", type=Path, default=REPO / "bench" / "results" / "incremental.json")
    p.add_argument("--out-md", type=Path, default=REPO / "bench" / "results" / "incremental.md")
    p.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.history = [int(x) for x in args.history.split(",") if x.strip()]
    return args


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return total / 1024


def _run_child(spec: dict[str, Any], env: dict[str, str], args: argparse.Namespace
               ) -> dict[str, Any]:
    """One run in a fresh interpreter, watched for memory; its last stdout line is JSON."""
    started_load = _load()
    spec = {**spec, "launched_at": time.time()}
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, str(Path(__file__)), "--child", json.dumps(spec)],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        peak_tree, killed = 0.0, ""
        done = threading.Event()

        def watch() -> None:
            nonlocal peak_tree, killed
            deadline = time.monotonic() + args.timeout_s
            while not done.wait(1.0):
                rss = _tree_rss_mib(child.pid)
                peak_tree = max(peak_tree, rss)
                if rss > args.mem_limit_gib * 1024:
                    killed = f"killed at {rss / 1024:.1f} GiB (limit {args.mem_limit_gib} GiB)"
                elif time.monotonic() > deadline:
                    killed = f"killed after {args.timeout_s:.0f} s"
                if killed:
                    child.kill()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out, _ = child.communicate()
        done.set()
        watcher.join()
        if child.returncode != 0:
            err.seek(0)
            tail = err.read()[-3000:]
            return {"failed": killed or f"exit {child.returncode}", "stderr": tail,
                    "peak_tree_rss_mib": peak_tree, "load": [started_load, _load()]}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result.update(peak_tree_rss_mib=peak_tree, load=[started_load, _load()])
    return result


def _env(home: Path, prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "NIGHTSCOUT_URL", "NIGHTSCOUT_BLOCK",
                        "CASCADE_TIMEZONE", "CASCADE_STACK_ENV")}
    return {**env, **_QUIET, "CASCADE_PROFILE": "embedded", "CASCADE_HOME": str(home),
            "PREFECT_HOME": str(prefect_home)}


def _migrate(prefect_home: Path) -> None:
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                   cwd=REPO, env={**os.environ, **_QUIET, "PREFECT_HOME": str(prefect_home)},
                   capture_output=True, text=True, timeout=900, check=True)


def _warm_daily_days(site: Any) -> None:
    from tasks.simulator import server

    for day in (END - timedelta(days=i) for i in range(-2, 4)):
        for name in ("entries", "treatments", "devicestatus"):
            server._day_index(site, day.toordinal(), name)


def _history_run(n: int, sim: Any, sites: list[Any], args: argparse.Namespace, work: Path,
                 prefect_home: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"history-{n}-", dir=work))
    env = _env(home, prefect_home)
    chosen = [{"site_id": s.site_id, "url": sim.url_for(s.site_id)} for s in sites[:n]]
    start = END - timedelta(days=args.days - 1)
    backfill = _run_child({"flow": "backfill", "sites": chosen, "secret": SECRET,
                           "start": start.isoformat(), "end": END.isoformat(),
                           "chunk_days": 30, "workers": 2}, env, args)
    print(f"  history {n}: backfill {_line(backfill)}", flush=True)
    dailies = []
    if "failed" not in backfill:
        _warm_daily_days(sites[0])
        for i in range(args.repeat):
            dailies.append(_run_child({"flow": "daily", "sites": chosen[:1], "secret": SECRET,
                                       "day": END.isoformat()}, env, args))
            print(f"  history {n}: daily {i + 1} {_line(dailies[-1])}", flush=True)
    return {"site_years": n, "backfill": backfill, "daily": dailies}


def _line(run: dict[str, Any]) -> str:
    if "failed" in run:
        return f"FAILED ({run['failed']}): {run['stderr'][-400:]}"
    stages = ", ".join(f"{k} {v['wall_s']:.1f} s"
                       + (f"/{v['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in v else "")
                       for k, v in run["stages"].items())
    return (f"process {run['seconds']:.1f} s, flow {run['parent_wall_s']:.1f} s ({stages}), "
            f"peak RSS {run['peak_rss_mib']:.0f} MiB, load {run['load'][0]}")


# ----------------------------------------------------------------------------- report


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def render_markdown(results: dict[str, Any]) -> str:
    """One table per label, then the targets against the label ``after`` (else the last)."""
    lines = ["# Incremental benchmark", ""]
    for label, block in results.items():
        lines += [f"## {label}", "",
                  f"code {block['commit']}, {block['started']}, {block['machine']}", "",
                  ("| history | run | runs | flow wall s (median) | process wall s | CPU s | "
                   "peak RSS MiB (max) | stages: s (median), peak RSS (max) | load at start |"),
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for h in block["history"]:
            for kind in ("backfill", "daily"):
                runs = h[kind] if kind == "daily" else [h[kind]]
                ok = [r for r in runs if "failed" not in r]
                if not ok:
                    why = runs[0]["failed"] if runs else "not run"
                    tree = max((r.get("peak_tree_rss_mib", 0) for r in runs), default=0)
                    lines.append(f"| {h['site_years']} site-years | {kind} | 0 | — | — | — | "
                                 f"{tree:.0f} (tree) | {why} | — |")
                    continue
                stage_names = list(ok[0]["stages"])
                stages = ", ".join(
                    f"{s} {statistics.median(r['stages'][s]['wall_s'] for r in ok):.1f}"
                    + (f" ({max(r['stages'][s]['peak_rss_mib'] for r in ok):.0f} MiB)"
                       if all("peak_rss_mib" in r["stages"][s] for r in ok) else "")
                    for s in stage_names)
                lines.append(
                    f"| {h['site_years']} site-years | {kind} | {len(ok)} | "
                    f"{_median(ok, 'parent_wall_s'):.1f} | {_median(ok, 'seconds'):.1f} | "
                    f"{_median(ok, 'cpu_s'):.1f} | {max(r['peak_rss_mib'] for r in ok):.0f} | "
                    f"{stages} | "
                    f"{ok[0]['load'][0]} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _machine() -> str:
    cores = os.cpu_count()
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), "0")
    return f"{cores} cores, {int(mem) / 1024 / 1024:.1f} GiB"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or os.environ.get("CASCADE_BENCH_COMMIT", "unknown")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        from bench._incremental import run_flow

        print("\n" + json.dumps(run_flow(json.loads(args.child))), flush=True)
        return 0
    from tasks.simulator import SimulatorServer, SiteConfig

    sites = [SiteConfig(site_id="a" if i == 0 else f"s{i}", seed=1 if i == 0 else 100 + i,
                        timezone="Europe/London", api_secret=SECRET)
             for i in range(max(args.history))]
    history: list[dict[str, Any]] = []
    block: dict[str, Any] = {"commit": _commit(), "machine": _machine(),
                             "started": datetime.now(UTC).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="cascade-incr-bench-") as tmp, \
            SimulatorServer(sites, now=NOW, history_days=args.days + 10) as sim:
        work = Path(tmp)
        prefect_home = work / "prefect-home"
        _migrate(prefect_home)
        for n in args.history:
            history.append(_history_run(n, sim, sites, args, work, prefect_home))
    results = json.loads(args.out_json.read_text()) if args.out_json.exists() else {}
    previous = results.get(args.label, {}).get("history", [])
    kept = [h for h in previous if h["site_years"] not in args.history]
    block["history"] = sorted(kept + history, key=lambda h: h["site_years"])
    results[args.label] = block  # sizes run now replace theirs; the others are kept
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(results, indent=1))
    args.out_md.write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
