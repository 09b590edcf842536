"""Benchmark: a backfill as users run it, through the stack's Prefect server and worker.

    uv run python bench/worker_backfill.py [--days 365] [--chunk-days 30] [--node-tasks]

Needs the stack (``python3 scripts/cascade.py stack up``) and the deployments (``prefect
deploy --all``). Starts the bundled simulator for one site, then ``run_deployment`` of
``backfill/cascade-backfill`` with the embedded profile in a fresh ``CASCADE_HOME`` (the
deployment's default) and waits for it. Prints the wall time from submission to Completed
and how many flow runs and task runs the server recorded meanwhile (run it on an otherwise
idle server: every run started in that interval is counted).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STACK_ENV = REPO / ".cascade-stack" / "stack.env"
SECRET = "bench-secret-value"


def _stack_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in STACK_ENV.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip().strip("'\"") for k, v in pairs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--chunk-days", type=int, default=30)
    parser.add_argument("--node-tasks", action="store_true",
                        help="one Prefect task per dbt node (the deployment default)")
    args = parser.parse_args()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.simulator import SimulatorServer, SiteConfig

    stack = _stack_env()
    now = datetime.now(UTC).replace(microsecond=0)
    end = (now - timedelta(days=1)).date()
    start = end - timedelta(days=args.days - 1)
    site = SiteConfig(site_id="bench", seed=7, timezone="Europe/London", api_secret=SECRET)
    with SimulatorServer([site], now=now, history_days=args.days + 5) as server, \
            tempfile.TemporaryDirectory(prefix="cascade-worker-bench-") as home, \
            temporary_settings(updates={PREFECT_API_URL: stack["PREFECT_API_URL"]}):
        env = {"CASCADE_PROFILE": "embedded", "CASCADE_HOME": home,
               "NIGHTSCOUT_URL": server.url_for("bench"), "NIGHTSCOUT_API_SECRET": SECRET,
               "NIGHTSCOUT_SITE_ID": "bench", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        submitted = datetime.now(UTC)
        started = time.monotonic()
        run = run_deployment(
            "backfill/cascade-backfill",
            parameters={"start": start.isoformat(), "end": end.isoformat(),
                        "chunk_days": args.chunk_days, "dbt_node_tasks": args.node_tasks},
            job_variables={"env": env}, timeout=3600)
        seconds = time.monotonic() - started
        assert isinstance(run, FlowRun)
        # validated, so the filters hold Prefect's own datetime type, as annotated
        since = {"after_": submitted}
        with get_client(sync_client=True) as client:
            flows = client.count_flow_runs(flow_run_filter=FlowRunFilter(
                expected_start_time=FlowRunFilterExpectedStartTime.model_validate(since)))
            tasks, page = 0, 200  # the sync client has no count_task_runs: page through
            while True:
                got = len(client.read_task_runs(task_run_filter=TaskRunFilter(
                    start_time=TaskRunFilterStartTime.model_validate(since)),
                    limit=page, offset=tasks))
                tasks += got
                if got < page:
                    break
    state = run.state.name if run.state else "unknown"
    print(f"backfill {start}..{end} ({args.days} days, chunk {args.chunk_days}, "
          f"{'one task per dbt node' if args.node_tasks else 'plain dbt'}) through the worker: "
          f"{state} in {seconds:.1f} s; {flows} flow runs, {tasks} task runs")
    return 0 if run.state is not None and run.state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
