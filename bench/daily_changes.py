"""What following edits and deletions costs a ``daily``: requests to the site and seconds.

One simulated site (API secret and access token) is backfilled ``--days`` days into a
throw-away lakehouse; then ``daily`` runs for yesterday, each variant ``--repeat`` times:

* ``today``: the daily as it was before the change feed (``change_feed=False``,
  ``reconcile_days=0``; on a checkout without those parameters, the plain ``daily``);
* ``feed+reconcile``: the default daily (the API v3 feed, and the 14 UTC days before);
* ``feed+reconcile after 4 changes``: the same after a treatment 60 days back is edited and a
  reading 30 days back soft-deleted through v3, a late reading 10 days back uploaded
  through v1 and a reading 5 days back deleted for good (the next ``daily`` lands them).

Figures per run: wall seconds of the flow call, CPU seconds of this process, requests the
simulator answered (all, and v3/v2 among them), the peak RSS. The Prefect API is the
ephemeral one, started before the first measured run. Run under the bench lock:

    flock /tmp/cascade-bench.lock nice -n 10 .venv/bin/python bench/daily_changes.py \\
        --days 90 --repeat 3 --out bench/results/daily_changes.json

To measure another checkout's ``daily`` (say main's) with the same harness, run the script
from that checkout's root with ``PYTHONPATH=.`` and ``--variants today``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["main"]

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
SECRET = "bench-secret-value"
TOKEN = "bench-reader-token"
VARIANTS = ("today", "feed+reconcile", "feed+reconcile after 4 changes")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/daily_changes.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=90, help="days backfilled first")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    return parser.parse_args(argv)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _change_the_source(sim: Any, site: str) -> None:
    """The issue's four changes (see the module docstring)."""
    changes = sim.changes(site)
    today = NOW.date()
    meal = next(t for t in sim.documents(site, "treatments", today - timedelta(days=60))
                if t.get("carbs") not in (None, ""))
    changes.edit("treatments", meal, {"carbs": float(meal["carbs"]) + 17}, via="v3")
    changes.soft_delete("entries", sim.documents(site, "entries", today - timedelta(days=30))[40])
    near = sim.documents(site, "entries", today - timedelta(days=10))[60]
    changes.add("entries", {"type": "sgv", "sgv": 131, "date": near["date"] + 150_000,
                            "device": "xDrip-late"}, via="v1")
    changes.delete_permanently("entries",
                               sim.documents(site, "entries", today - timedelta(days=5))[100])


def _one_daily(daily: Any, sim: Any, variant: str, day: date) -> dict[str, Any]:
    params = inspect.signature(daily.fn).parameters
    kwargs: dict[str, Any] = {"day": day, "dbt_node_tasks": False}
    if variant == "today" and "change_feed" in params:
        kwargs.update(change_feed=False, reconcile_days=0)
    before = len(sim.request_log)
    cpu, wall = _cpu(), time.perf_counter()
    result = daily(**kwargs)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    asked = sim.request_log[before:]
    return {"variant": variant, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "requests": len(asked),
            "v3_requests": sum(1 for path, _, _ in asked if "/api/v3/" in path
                               or "/api/v2/" in path),
            "changes": _changes(result), "peak_rss_mib": round(_peak_mib(), 1)}


def _changes(result: Any) -> dict[str, Any] | None:
    """The run's change report (None from a daily without one)."""
    changes = getattr(getattr(result, "ingest", None), "changes", None)
    return asdict(changes) if changes is not None else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one line per run and a summary per variant."""
    args = _parse(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    work = Path(tempfile.mkdtemp(prefix="cascade-bench-daily-"))
    os.environ.update(CASCADE_HOME=str(work / "cascade"), CASCADE_PROFILE="embedded",
                      PREFECT_HOME=str(work / "prefect"), NIGHTSCOUT_SITE_ID="bench",
                      NIGHTSCOUT_API_SECRET=SECRET, NIGHTSCOUT_TOKEN=TOKEN,
                      PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    from flows.pipeline import backfill, daily
    from tasks.simulator import SimulatorServer, SiteConfig

    site = SiteConfig(site_id="bench", seed=13, timezone="Europe/London", api_secret=SECRET,
                      token=TOKEN)
    day = NOW.date() - timedelta(days=1)
    runs: list[dict[str, Any]] = []
    with SimulatorServer([site], now=NOW, history_days=args.days + 30) as sim:
        os.environ["NIGHTSCOUT_URL"] = sim.url_for("bench")
        started = time.perf_counter()
        backfill(start=NOW.date() - timedelta(days=args.days), end=NOW.date(),
                 dbt_node_tasks=False)
        print(f"backfill of {args.days} days: {time.perf_counter() - started:.1f} s",
              flush=True)
        for variant in variants:
            if variant.endswith("changes"):
                _change_the_source(sim, "bench")
            for _ in range(args.repeat):
                run = _one_daily(daily, sim, variant, day)
                runs.append(run)
                print(json.dumps(run), flush=True)
                if variant.endswith("changes"):
                    break  # the changes land once; the next run is the plain default
    summary = {v: {k: statistics.median(r[k] for r in runs if r["variant"] == v)
                   for k in ("seconds", "cpu_seconds", "requests", "v3_requests")}
               for v in variants if any(r["variant"] == v for r in runs)}
    load = os.getloadavg()
    figures = {"days": args.days, "load": [round(x, 2) for x in load], "runs": runs,
               "median": summary, "python": sys.version.split()[0]}
    for variant, median in summary.items():
        print(f"{variant:>28}: {median['seconds']:6.1f} s wall, {median['cpu_seconds']:6.1f} s "
              f"CPU, {median['requests']:4.0f} requests ({median['v3_requests']:.0f} v3)")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
