"""Operating Cascade from Prefect: deployments from ``prefect.yaml`` run by the stack's worker.

``prefect deploy --all`` runs once per module against the stack's Prefect server; the
stack's process worker (pool ``cascade-process``, polling every second) runs what the
tests start. Every run gets its settings as job variables, as an operator would pass them.
The daily schedule is switched off after deploying, so the stack never runs it by itself.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentTaskRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled

from flows.automations import FAILED_NAME, apply_automations, delete_automations
from tasks.lakehouse import read_table
from tasks.profile import stack_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig
from tests._iceberg import eq
from tests.integration.conftest import NOW, REPO, STACK_ENV, read_env_file

pytestmark = pytest.mark.stack

SECRET = "deploy-secret-value"
# a site of its own, so the rows these runs promote never mix with other tests' sites
SITE_ID = "d" + uuid.uuid4().hex[:8]
SITE = SiteConfig(site_id=SITE_ID, seed=23, timezone="Europe/London", api_secret=SECRET)
RANGE = (date(2024, 2, 5), date(2024, 2, 6))
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@pytest.fixture(scope="module")
def deployed() -> dict[str, str]:
    """``prefect deploy --all`` from the repository, as a user would; the stack's env."""
    env = read_env_file(STACK_ENV)
    proc_env = {**_os_env(), "PREFECT_API_URL": env["PREFECT_API_URL"],
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.monotonic()
    prefect_cli = str(REPO / ".venv" / "bin" / "prefect")
    proc = subprocess.run([prefect_cli, "--no-prompt", "deploy", "--all"], check=False, cwd=REPO,
                          env=proc_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    print(f"prefect deploy --all: {time.monotonic() - started:.1f} s")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        daily = client.read_deployment_by_name("daily/cascade-daily")
        for schedule in daily.schedules:  # the stack must not run daily on its own
            client.update_deployment_schedule(daily.id, schedule.id, active=False)
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
            deployment_filter=_deployment_filter(daily.id),
        ):
            client.delete_flow_run(run.id)
    return env


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _deployment_filter(deployment_id: UUID) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


@pytest.fixture(scope="module")
def deploy_site() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=90) as server:
        yield server


def _job_env(stack: dict[str, str], server: SimulatorServer, home: Path,
             **extra: str) -> dict[str, str]:
    return {**stack, "CASCADE_PROFILE": "stack", "CASCADE_HOME": str(home),
            "NIGHTSCOUT_URL": server.url_for(SITE_ID), "NIGHTSCOUT_API_SECRET": SECRET,
            "NIGHTSCOUT_SITE_ID": SITE_ID, **extra}


def _run_tree(client: SyncPrefectClient, root: UUID) -> tuple[int, int]:
    """Flow runs (the root and its subflows, recursively) and task runs under ``root``."""
    flow_runs, task_runs, frontier = 1, 0, [root]
    while frontier:
        task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=frontier))
        tasks = _all(partial(client.read_task_runs, task_run_filter=task_filter))
        children: list[Any] = []
        if tasks:
            run_filter = FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(
                any_=[t.id for t in tasks]))
            children = _all(partial(client.read_flow_runs, flow_run_filter=run_filter))
        # a subflow appears as a (dummy) task run in its parent: count real tasks only
        task_runs += len(tasks) - len(children)
        flow_runs += len(children)
        frontier = [c.id for c in children]
    return flow_runs, task_runs


PAGE = 200  # the server's largest page


def _all(read: Any) -> list[Any]:
    rows: list[Any] = []
    while True:
        page = read(limit=PAGE, offset=len(rows))
        rows.extend(page)
        if len(page) < PAGE:
            return rows


def test_backfill_deployment_runs_through_the_worker_and_lands_on_main(
    deployed: dict[str, str], stack_env: dict[str, str], deploy_site: SimulatorServer,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    run = run_deployment(
        "backfill/cascade-backfill",
        parameters={"start": RANGE[0].isoformat(), "end": RANGE[1].isoformat(),
                    "chunk_days": 1, "dbt_node_tasks": False},
        job_variables={"env": _job_env(stack_env, deploy_site, tmp_path / "cascade")},
        timeout=1200,
    )
    seconds = time.monotonic() - started
    assert isinstance(run, FlowRun)
    assert run.state is not None and run.state.is_completed(), (run.state, run.name)
    assert run.name == f"backfill {RANGE[0]}..{RANGE[1]} site={SITE_ID}"
    assert "cascade" in run.tags
    with get_client(sync_client=True) as client:
        flow_runs, task_runs = _run_tree(client, run.id)
    print(f"\nbackfill {RANGE[0]}..{RANGE[1]} through the worker: {seconds:.1f} s, "
          f"{flow_runs} flow runs, {task_runs} task runs")
    assert flow_runs >= 5  # backfill + build_branch, validate, promote, publish

    main = stack_lakehouse().branches.catalog("main")
    entries = read_table(main, "raw.entries", eq("site_id", SITE_ID))
    assert set(entries.get_column("entry_at").dt.date().unique().to_list()) == set(RANGE)
    daily = read_table(main, "marts.mrt_daily_glycaemia", eq("site_id", SITE_ID))
    assert daily.height >= 2


def test_fan_out_runs_each_partition_as_a_deployment_run_bounded_by_the_site_limit(
    deployed: dict[str, str], stack_env: dict[str, str], deploy_site: SimulatorServer,
    tmp_path: Path,
) -> None:
    """Two partitions as cascade-ingest-window runs, the site's global limit set to one
    slot: both land under the parent, and their ingest windows never overlap in time."""
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    limit = f"nightscout-{SITE_ID}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
            client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(limit=1))
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit,
                                                                                limit=1))
    days = (date(2024, 2, 12), date(2024, 2, 13))
    run = run_deployment(
        "backfill/cascade-backfill",
        parameters={"start": days[0].isoformat(), "end": days[1].isoformat(),
                    "chunk_days": 1, "max_concurrency": 2, "fan_out": "deployments",
                    "promote_to_main": False},
        job_variables={"env": _job_env(stack_env, deploy_site, tmp_path / "cascade")},
        timeout=900,
    )
    assert isinstance(run, FlowRun)
    assert run.state is not None and run.state.is_completed(), (run.state, run.name)
    with get_client(sync_client=True) as client:
        tasks = _all(partial(client.read_task_runs, task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))))
        partitions = [t for t in tasks if t.name.startswith("partition ")]
        # each child hangs off a placeholder task run of the parent, whose parent is the
        # partition task that started it
        children = _all(partial(client.read_flow_runs, flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks]))))
        window_deployment = client.read_deployment_by_name("ingest_window/cascade-ingest-window")
        children = [c for c in children if c.deployment_id == window_deployment.id]
        windows = _all(partial(client.read_task_runs, task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[c.id for c in children]))))
        windows = [w for w in windows if w.name.startswith("ingest ")]
        assert client.read_global_concurrency_limit_by_name(limit).limit == 1  # kept as set
    assert len(partitions) == 2 and len(children) == 2
    assert all(c.state is not None and c.state.is_completed() for c in children)
    assert all(c.name.endswith(f"site={SITE_ID}") for c in children), [c.name for c in children]
    assert len(windows) == 2
    spans = sorted((w.start_time, w.end_time) for w in windows)
    assert spans[0][1] <= spans[1][0], spans  # one slot: the second waited for the first
    branches = stack_lakehouse().branches
    suffix = "-" + run.id.hex[:8]
    (name,) = [r.name for r in branches.list_refs() if r.name.endswith(suffix)]
    branch = branches.catalog(name)  # promote_to_main=False: the branch is kept
    entries = read_table(branch, "raw.entries", eq("site_id", SITE_ID))
    assert {d for d in entries.get_column("entry_at").dt.date().unique().to_list()
            if d in days} == set(days)


class _Receiver:
    """A local webhook endpoint recording the JSON bodies it receives."""

    def __init__(self) -> None:
        calls: list[dict[str, Any]] = []
        self.calls = calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    calls.append(json.loads(body or b"{}"))
                except ValueError:
                    calls.append({"raw": body.decode(errors="replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_failed_run_fires_the_failure_automation(
    deployed: dict[str, str], stack_env: dict[str, str], deploy_site: SimulatorServer,
    tmp_path: Path,
) -> None:
    block = "cascade-alerts-test-" + uuid.uuid4().hex[:8]
    missing = "run-does-not-exist-" + uuid.uuid4().hex[:8]
    with _Receiver() as receiver:
        try:
            applied = apply_automations(block_name=block, webhook_url=receiver.url)
            assert applied == apply_automations(block_name=block)  # idempotent: same ids
            with get_client(sync_client=True) as client:
                assert len(client.read_automations_by_name(FAILED_NAME)) == 1
            time.sleep(2)  # let the server's automation cache pick the automation up
            run = run_deployment(
                "validate/cascade-validate", parameters={"branch": missing},
                job_variables={"env": _job_env(stack_env, deploy_site, tmp_path / "c")},
                timeout=600,
            )
            assert isinstance(run, FlowRun) and run.state is not None
            assert run.state.is_failed(), run.state
            deadline = time.monotonic() + 90
            mine: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not mine:
                mine = [c for c in receiver.calls if run.name in json.dumps(c)]
                time.sleep(1)
            assert mine, f"no notification naming {run.name!r}: got {receiver.calls}"
            body = str(mine[0]["body"])
            assert "validate" in body and missing in body  # flow and its parameters
            assert f"/runs/flow-run/{run.id}" in body  # the link to the run
            assert "Failed" in str(mine[0]["subject"])
        finally:
            delete_automations()
            _delete_block(block)


def _delete_block(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, "custom-webhook")
        except Exception:  # nothing to clean up
            return
        client.delete_block_document(document.id)


class _SilentServer:
    """Accepts connections and never answers: a Nightscout that keeps a run busy."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _wait_for(client: SyncPrefectClient, run_id: UUID, ok: Any, seconds: float) -> FlowRun:
    deadline = time.monotonic() + seconds
    while True:
        run = client.read_flow_run(run_id)
        if (run.state is not None and ok(run.state)) or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def test_second_daily_run_waits_for_the_first(
    deployed: dict[str, str], stack_env: dict[str, str], tmp_path: Path,
) -> None:
    """While one daily run is busy (its Nightscout never answers), a second one is held
    back by the deployment's concurrency limit (AwaitingConcurrencySlot) instead of running."""
    with _SilentServer() as silent, get_client(sync_client=True) as client:
        env = {"CASCADE_PROFILE": "embedded", "CASCADE_HOME": str(tmp_path / "cascade"),
               "CASCADE_TIMEZONE": "Europe/London", "NIGHTSCOUT_URL": silent.url,
               "NIGHTSCOUT_API_SECRET": SECRET, "NIGHTSCOUT_SITE_ID": SITE_ID,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        params = {"day": "2024-02-10", "dbt_node_tasks": False}
        first = run_deployment("daily/cascade-daily", parameters=params,
                               job_variables={"env": env}, timeout=0)
        assert isinstance(first, FlowRun)
        second: FlowRun | None = None
        try:
            first = _wait_for(client, first.id, lambda s: s.is_running() or s.is_final(), 120)
            assert first.state is not None and first.state.is_running(), first.state
            queued = run_deployment("daily/cascade-daily", parameters=params,
                                    job_variables={"env": env}, timeout=0)
            assert isinstance(queued, FlowRun)
            second = queued  # known before the wait, so the finally cancels it
            second = _wait_for(client, queued.id,
                               lambda s: s.name == "AwaitingConcurrencySlot" or s.is_running(),
                               30)
            assert second.state is not None
            assert second.state.name == "AwaitingConcurrencySlot", second.state
            assert client.read_flow_run(first.id).state.is_running()  # type: ignore[union-attr]
            held = _wait_for(client, second.id, lambda s: s.is_running(), 5)
            assert held.state is not None and not held.state.is_running()
        finally:
            for run in (second, first):
                if run is not None:
                    _cancel(client, run.id)


def _cancel(client: SyncPrefectClient, run_id: UUID) -> None:
    """Cancel a run; a running one via Cancelling, so the worker stops its process."""
    from prefect.states import Cancelling

    run = client.read_flow_run(run_id)
    if run.state is None or run.state.type in FINAL:
        return
    if run.state.is_running():
        client.set_flow_run_state(run_id, Cancelling(), force=True)
        run = _wait_for(client, run_id, lambda s: s.type in FINAL, 60)
        if run.state is not None and run.state.type in FINAL:
            return
    client.set_flow_run_state(run_id, Cancelled(message="test clean-up"), force=True)


def test_deployments_carry_tags_descriptions_and_the_daily_limit(
    deployed: dict[str, str], stack_env: dict[str, str],
) -> None:
    with get_client(sync_client=True) as client:
        backfill = client.read_deployment_by_name("backfill/cascade-backfill")
        daily = client.read_deployment_by_name("daily/cascade-daily")
    schema = backfill.parameter_openapi_schema or {}
    assert schema["properties"]["start"]["description"] == "first UTC day."
    assert "cascade" in backfill.tags and "cascade" in daily.tags
    limit = daily.global_concurrency_limit
    assert limit is not None and limit.limit == 1
    assert str(daily.concurrency_options.collision_strategy).endswith("ENQUEUE")  # type: ignore[union-attr]
    assert [(s.schedule.cron, s.schedule.timezone) for s in daily.schedules] == [  # type: ignore[union-attr]
        ("0 2 * * *", "Europe/London")]
