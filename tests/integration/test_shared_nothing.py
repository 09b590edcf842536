"""Flow runs share nothing through local disk: each works from an empty directory.

Like pods of a Kubernetes work pool, every run here starts in a working directory of its own
that is empty (and removed as soon as the run ends), with an empty ``CASCADE_HOME`` in it;
the code comes from ``PYTHONPATH`` (module entrypoints, no pull step), as in the flow-run
image. Endpoints and credentials come from block documents, flow results go to the
object store (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``), exactly as the deployment files
set them. The workers are process workers this module starts on pools of its own, each in
its own empty directory, and stops again.

* the chain split into its steps: ingest_day, build_branch, validate, promote, publish as
  five deployment runs, each one's directory deleted before the next starts; validate's
  result (main's hash) is read back from result storage and handed to promote;
* a two-site backfill with ``fan_out="deployments"`` whose partitions spread over two workers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentTaskRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from pydantic import SecretStr

from blocks.nightscout import NightscoutSite
from blocks.register import register_blocks
from tasks.events import MAIN_RESOURCE, PROMOTED
from tasks.lakehouse import read_table
from tasks.profile import stack_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig
from tests._iceberg import eq
from tests.integration.conftest import NOW, REPO, STACK_ENV, read_env_file

pytestmark = pytest.mark.stack

SECRET = "shared-nothing-secret"
TAG = uuid.uuid4().hex[:8]
SITES = [SiteConfig(site_id=f"n{TAG}{i}", seed=31 + i, timezone="Europe/London",
                    api_secret=SECRET) for i in range(2)]
FLOWS = {"ingest_day": "flows.ingest_day.ingest_day",
         "ingest_window": "flows.ingest_window.ingest_window",
         "build_branch": "flows.build_branch.build_branch",
         "validate": "flows.validate.validate",
         "promote": "flows.promote.promote",
         "publish": "flows.publish.publish",
         "backfill": "flows.pipeline.backfill"}


@dataclass
class Worker:
    """A process worker of this module, in its own (empty) working directory."""

    name: str
    directory: Path
    log: Path
    process: subprocess.Popen[bytes]

    def submitted(self) -> set[str]:
        """Flow run ids this worker started (from its own log): two workers may both try to
        submit a run, and the one the server turns away says so."""
        text = self.log.read_text(errors="replace")
        tried = set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", text))
        return tried - set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))


def _start_worker(pool: str, directory: Path, env: dict[str, str], limit: int) -> Worker:
    directory.mkdir(parents=True)
    name = f"{pool}-{directory.name}"
    log = directory.parent / f"{directory.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "prefect"), "worker", "start", "--pool", pool,
             "--type", "process", "--name", name, "--limit", str(limit)],
            cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Worker(name, directory, log, process)


def _stop(worker: Worker) -> None:
    worker.process.terminate()
    try:
        worker.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.process.kill()
        worker.process.wait(timeout=10)


def _worker_env(stack: dict[str, str], home: Path) -> dict[str, str]:
    """What a worker's machine has: the API, the code on PYTHONPATH, no Cascade settings."""
    home.mkdir(parents=True)
    return {"PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": stack["PREFECT_API_URL"], "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(SITES, now=NOW, history_days=60) as server:
        yield server


@pytest.fixture(scope="module")
def run_env(simulator: SimulatorServer) -> Iterator[dict[str, str]]:
    """Block documents of this module (stack endpoints, results storage, both sites) and the
    job environment that names them, as prefect-kubernetes.yaml's does."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = read_env_file(STACK_ENV)
    prefix = f"cascade-sn-{TAG}"
    with temporary_settings(updates={PREFECT_API_URL: stack["PREFECT_API_URL"]}):
        selectors = register_blocks({**stack, "NIGHTSCOUT_URL": simulator.url_for(SITES[0].site_id),
                                     "NIGHTSCOUT_API_SECRET": SECRET,
                                     "NIGHTSCOUT_SITE_ID": SITES[0].site_id},
                                    prefix=prefix, profile="stack")
        NightscoutSite(url=simulator.url_for(SITES[1].site_id), site_id=SITES[1].site_id,
                       api_secret=SecretStr(SECRET)).save(f"{prefix}-site-1", overwrite=True)
        yield {**selectors, "CASCADE_PROFILE": "stack",
               "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
               "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        with get_client(sync_client=True) as client:
            for document in client.read_block_documents():
                if document.name and document.name.startswith(prefix):
                    client.delete_block_document(document.id)


def _pool(client: SyncPrefectClient, name: str) -> str:
    client.create_work_pool(WorkPoolCreate(name=name, type="process"), overwrite=True)
    return name


def _deploy(client: SyncPrefectClient, flow: str, name: str, pool: str,
            env: dict[str, str]) -> str:
    """A deployment of ``flow`` on ``pool`` importing its code from PYTHONPATH (no pull step)."""
    flow_id = client.create_flow_from_name(flow)
    client.create_deployment(flow_id=flow_id, name=name, entrypoint=FLOWS[flow],
                             work_pool_name=pool, job_variables={"env": env},
                             pull_steps=[], tags=["cascade", "test-shared-nothing"])
    return f"{flow}/{name}"


def _in_pool(pool: str) -> WorkPoolFilter:
    return WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))


def _clean_up(client: SyncPrefectClient, pools: list[str]) -> None:
    for pool in pools:
        for deployment in client.read_deployments(work_pool_filter=_in_pool(pool)):
            client.delete_deployment(deployment.id)
        client.delete_work_pool(pool)


def _run(deployment: str, parameters: dict[str, Any], job_variables: dict[str, Any],
         timeout: float = 900) -> FlowRun:
    run = run_deployment(deployment, parameters=parameters, job_variables=job_variables,
                         timeout=timeout)
    assert isinstance(run, FlowRun) and run.state is not None
    assert run.state.is_completed(), f"{deployment}: {run.name} {run.state.name}: " \
        f"{run.state.message}"
    return run


def _result(run: FlowRun) -> Any:
    """The run's result, read back from the object store by this (another) process."""
    assert run.state is not None
    return run.state.result()


def _step(deployment: str, parameters: dict[str, Any], workdir: Path,
          env: dict[str, str]) -> FlowRun:
    """One step in an empty directory of its own, with an empty CASCADE_HOME inside, gone
    as soon as the run has ended: no later step can read what this one left."""
    workdir.mkdir(parents=True)
    assert not any(workdir.iterdir())
    try:
        return _run(deployment, parameters, {
            "working_dir": str(workdir),
            "env": {**env, "CASCADE_HOME": str(workdir / "cascade-home")}})
    finally:
        shutil.rmtree(workdir)


def _delete_if_kept(branch: str) -> None:
    branches = stack_lakehouse().branches
    if branch in {r.name for r in branches.list_refs()}:
        branches.delete_branch(branch)


def _promoted_events(api_url: str, branch: str, since: datetime) -> list[dict[str, Any]]:
    body = {"filter": {"event": {"name": [PROMOTED]}, "resource": {"id": [MAIN_RESOURCE]},
                       "occurred": {"since": since.isoformat()}}, "limit": 50}
    response = httpx.post(f"{api_url}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return [e for e in events if e["payload"].get("branch") == branch]


def test_chain_steps_run_as_separate_deployment_runs_from_empty_directories(
    stack_env: dict[str, str], run_env: dict[str, str], tmp_path: Path,
) -> None:
    pool = f"cascade-split-{TAG}"
    site = SITES[0].site_id
    branch = f"run-split-{TAG}"
    day = date(2024, 3, 6)
    started = datetime.now(UTC) - timedelta(seconds=5)
    env = {**run_env, "NIGHTSCOUT_BLOCK": f"cascade-sn-{TAG}-nightscout"}
    with get_client(sync_client=True) as client, ExitStack() as stack:
        stack.callback(_clean_up, client, [_pool(client, pool)])
        stack.callback(_delete_if_kept, branch)  # promote deletes it; a failed step keeps it
        names = {flow: _deploy(client, flow, f"split-{flow.replace('_', '-')}-{TAG}", pool, env)
                 for flow in ("ingest_day", "build_branch", "validate", "promote", "publish")}
        worker = _start_worker(pool, tmp_path / "worker", _worker_env(stack_env, tmp_path / "h"),
                               limit=1)
        stack.callback(_stop, worker)

        ingested = _step(names["ingest_day"], {"day": day.isoformat(), "branch": branch},
                         tmp_path / "ingest", env)
        assert _result(ingested).committed > 0
        _step(names["build_branch"], {"branch": branch, "node_tasks": False},
              tmp_path / "build", env)
        audit = _result(_step(names["validate"], {"branch": branch}, tmp_path / "validate", env))
        assert audit.branch == branch
        promoted = _result(_step(names["promote"], {
            "branch": branch, "expected_main_hash": audit.main_hash},
            tmp_path / "promote", env))
        published = _result(_step(names["publish"], {"ref": "main"}, tmp_path / "publish", env))

        # every run came from this module's worker, each in the directory given to it
        runs = client.read_flow_runs(work_pool_filter=_in_pool(pool))
        assert len(runs) == 5 and {str(r.id) for r in runs} <= worker.submitted()
        assert not any(worker.directory.iterdir())  # the worker's own directory stays empty

    main = stack_lakehouse().branches.catalog("main")
    entries = read_table(main, "raw.entries", eq("site_id", site))
    assert day in set(entries.get_column("entry_at").dt.date().to_list())
    marts = read_table(main, "marts.mrt_daily_glycaemia", eq("site_id", site))
    assert marts.height >= 1 and published.rows["mrt_daily_glycaemia"] >= marts.height
    assert promoted.main_after != promoted.main_before
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        events = _promoted_events(stack_env["PREFECT_API_URL"], branch, started)
        time.sleep(1)
    (event,) = events
    assert event["payload"]["tag"] == promoted.tag
    assert event["payload"]["main_after"] == promoted.main_after
    assert event["resource"]["cascade.promoted-by"] == "promote"


def test_fan_out_spreads_a_two_site_backfill_over_two_workers(
    stack_env: dict[str, str], run_env: dict[str, str], tmp_path: Path,
) -> None:
    parents, windows = f"cascade-fan-parent-{TAG}", f"cascade-fan-windows-{TAG}"
    days = (date(2024, 3, 10), date(2024, 3, 11))
    sites = [f"cascade-sn-{TAG}-nightscout", f"cascade-sn-{TAG}-site-1"]
    with get_client(sync_client=True) as client, ExitStack() as stack:
        stack.callback(_clean_up, client, [_pool(client, parents), _pool(client, windows)])
        window = _deploy(client, "ingest_window", f"fan-window-{TAG}", windows, run_env)
        env = {**run_env, "CASCADE_INGEST_WINDOW_DEPLOYMENT": window}
        parent = _deploy(client, "backfill", f"fan-backfill-{TAG}", parents, env)
        workers = [_start_worker(windows, tmp_path / f"worker-{i}",
                                 _worker_env(stack_env, tmp_path / f"h{i}"), limit=1)
                   for i in range(2)]
        workers.append(_start_worker(parents, tmp_path / "parent-worker",
                                     _worker_env(stack_env, tmp_path / "hp"), limit=1))
        for worker in workers:
            stack.callback(_stop, worker)

        run = _run(parent, {"start": days[0].isoformat(), "end": days[1].isoformat(),
                            "sites": sites, "chunk_days": 1, "max_concurrency": 2,
                            "fan_out": "deployments", "promote_to_main": False}, {},
                   timeout=1200)
        result = _result(run)
        stack.callback(stack_lakehouse().branches.delete_branch, result.branch)
        children = _children(client, run.id)
        branch = stack_lakehouse().branches.catalog(result.branch)  # kept: no promote
        for site in SITES:
            entries = read_table(branch, "raw.entries", eq("site_id", site.site_id))
            assert set(days) <= set(entries.get_column("entry_at").dt.date().to_list())

    assert len(children) == 4  # 2 sites × 2 days, one partition each
    assert all(c.state is not None and c.state.is_completed() for c in children)
    by_worker = [{str(c.id) for c in children} & w.submitted() for w in workers[:2]]
    assert all(by_worker), f"one worker ran every partition: {by_worker}"
    assert set().union(*by_worker) == {str(c.id) for c in children}
    assert all(not any(w.directory.iterdir()) for w in workers)


def _children(client: SyncPrefectClient, parent: UUID) -> list[FlowRun]:
    tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
        flow_run_id=TaskRunFilterFlowRunId(any_=[parent])))
    return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks]))))
