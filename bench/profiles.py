"""Benchmark: the whole chain for the same days on the embedded and the stack profile.

    uv run python bench/profiles.py [--days 1] [--repeat 2]

Starts the bundled simulator, then runs ``python -m flows backfill`` (ingest → dbt build →
validate → promote → publish, dbt run plainly) in a fresh process per run, once per
profile and repeat, and prints min/median wall time. The stack profile needs the services
(``python3 scripts/cascade.py stack up``); its settings come from ``.cascade-stack/stack.env``.
Each stack run uses a site id of its own, so earlier data on the stack does not matter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tasks.simulator import SimulatorServer, SiteConfig

REPO = Path(__file__).resolve().parents[1]
STACK_ENV = REPO / ".cascade-stack" / "stack.env"


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _run(profile: str, url: str, site: str, start: date, end: date) -> float:
    env = {**os.environ, "NIGHTSCOUT_URL": url, "NIGHTSCOUT_API_SECRET": "s",
           "NIGHTSCOUT_SITE_ID": site, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if profile == "stack":
        env.update(_env_file(STACK_ENV))
    else:
        env.update(CASCADE_PROFILE="embedded",
                   CASCADE_HOME=tempfile.mkdtemp(prefix="cascade-bench-"))
        env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows", "backfill", str(start), str(end),
                           "--chunk-days", "1", "--plain-dbt"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{profile} run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    now = datetime(2024, 4, 10, 12, tzinfo=UTC)
    end = now.date() - timedelta(days=2)
    start = end - timedelta(days=args.days - 1)
    sites = [f"b{uuid.uuid4().hex[:6]}{i}" for i in range(args.repeat * 2)]
    configs = [SiteConfig(site_id=s, seed=7, timezone="Europe/London", api_secret="s")
               for s in sites]
    profiles = ["embedded"] + (["stack"] if STACK_ENV.exists() else [])
    times: dict[str, list[float]] = {p: [] for p in profiles}
    with SimulatorServer(configs, now=now, history_days=args.days + 5) as sim:
        for i in range(args.repeat):
            for j, profile in enumerate(profiles):
                site = sites[2 * i + j]
                times[profile].append(_run(profile, sim.url_for(site), site, start, end))
    print(f"whole chain, {args.days} day(s) of one site, dbt plain, "
          f"{os.cpu_count()} cores, {args.repeat} runs each (fresh process per run)")
    print("| profile | min s | median s |")
    print("| --- | ---: | ---: |")
    for profile, values in times.items():
        print(f"| {profile} | {min(values):.1f} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
