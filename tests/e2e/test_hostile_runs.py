"""Hostile and broken Nightscout servers met by whole flow runs (the window-level cases are
in ``tests/unit/test_hostile_sources.py``): a site that is down fails once, in one sentence,
leaving no empty branch; an error page echoing the credential leaves no form of it in
Prefect's database, the lakehouse or the output; a run killed hard does not stay Running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.logging.handlers import APILogHandler
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
)

from flows.automations import ZOMBIE_NAME, apply_zombie_detection
from flows.ingest_day import ingest_day
from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import NightscoutError
from tasks.simulator import SimulatorServer, SiteConfig
from tests.leakscan import credential_forms, leaks

from .conftest import NOW, SECRET

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DOWN_SECRET = "down-site-api-secret-91c4"
DOWN_TOKEN = "down-site-token-5e0f2b"
DOWN = SiteConfig("down", seed=2, api_secret=DOWN_SECRET, token=DOWN_TOKEN)


@pytest.fixture(scope="module")
def down_site() -> Iterator[SimulatorServer]:
    with SimulatorServer([DOWN], now=NOW, history_days=10) as server:
        yield server


def _cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m flows <args>`` in a process of its own, on the session's Prefect API."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("NIGHTSCOUT_", "CASCADE_"))}
    full |= {"CASCADE_HOME": str(home), "CASCADE_PROFILE": "embedded",
             "PREFECT_API_URL": str(PREFECT_API_URL.value()), **env}
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=900, check=False)


def _prefect_files(since: float) -> list[Path]:
    """The session's Prefect database (and its journal files) and the results written
    since ``since``."""
    database = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split(":///", 1)[1])
    files = [p for p in database.parent.glob(database.name + "*")]
    storage = Path(str(PREFECT_LOCAL_STORAGE_PATH.value()))
    if storage.exists():
        files += [p for p in storage.rglob("*") if p.is_file() and p.stat().st_mtime >= since]
    return files


def _flush_prefect() -> None:
    """Let this process's logs and events reach the server before its database is read."""
    APILogHandler().flush()  # sends what the process's log worker holds, and waits
    time.sleep(3)  # the server writes what it received in its own batches


def test_a_site_that_is_down_fails_once_in_one_sentence_and_leaves_no_branch(
    down_site: SimulatorServer, tmp_path: Path,
) -> None:
    down_site.clear_faults()
    down_site.request_log.clear()
    down_site.inject(503, times=1000)
    started = time.time()
    home = tmp_path / "home"
    done = _cli(home, {"NIGHTSCOUT_URL": down_site.url_for("down"),
                       "NIGHTSCOUT_API_SECRET": DOWN_SECRET, "NIGHTSCOUT_TOKEN": DOWN_TOKEN,
                       "NIGHTSCOUT_SITE_ID": "down"},
                "backfill", "2024-03-05", "2024-03-05", "--chunk-days", "1")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cascade: Nightscout at {down_site.url_for('down')} kept failing "
                           "for /api/v1/profile.json (HTTP 503) after 5 attempts: check the "
                           "site is up, then re-run"), last
    assert "Traceback" not in output
    assert len(down_site.request_log) == 5  # the client's five attempts; no task retry on top
    refs = EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse").list_refs()
    assert [r.name for r in refs] == ["main"]  # the empty run branch was deleted
    _flush_prefect()
    forms = credential_forms(secret=DOWN_SECRET, token=DOWN_TOKEN)
    assert leaks(forms, roots=[home, *_prefect_files(started)],
                 texts={"stdout": done.stdout, "stderr": done.stderr}) == []


def test_an_error_page_echoing_the_credential_leaves_it_nowhere(
    site_env: SimulatorServer, cascade_home: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    started = time.time()
    site_env.inject(echo_status=400, times=50, path="/api/v1/entries")
    with pytest.raises(NightscoutError, match="answered 400") as failure:
        ingest_day(day=date(2024, 3, 12))
    site_env.clear_faults()
    _flush_prefect()
    out = capfd.readouterr()
    texts = {"the error": f"{failure.value}\n{failure.value!r}", "stdout": out.out,
             "stderr": out.err}
    assert leaks(credential_forms(secret=SECRET), roots=[cascade_home, *_prefect_files(started)],
                 texts=texts) == []


def _latest_run(flow: str, since: datetime) -> FlowRun:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_=flow),
            start_time=FlowRunFilterStartTime(after_=since)))
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0]


def test_a_run_killed_hard_is_marked_crashed_when_its_heartbeats_stop(
    site_env: SimulatorServer, tmp_path: Path,
) -> None:
    # heartbeats every 30 s (Prefect's minimum); the automation allows 45 s without one
    automation = apply_zombie_detection(after=timedelta(seconds=45))
    try:
        since = datetime.now(UTC)
        killed = _cli(tmp_path / "home", {
            "NIGHTSCOUT_URL": site_env.url_for("a"), "NIGHTSCOUT_API_SECRET": SECRET,
            "NIGHTSCOUT_SITE_ID": "a", "CASCADE_FAULT": "ingest-mid-commit",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"},
            "backfill", "2024-03-20", "2024-03-20", "--chunk-days", "1", "--no-promote")
        assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-2000:]
        run = _latest_run("backfill 2024-03-20..2024-03-20%", since)
        assert run.state is not None and run.state.type == StateType.RUNNING  # a zombie
        deadline = time.monotonic() + 240  # 45 s, the 5 s evaluation period, and a margin
        while time.monotonic() < deadline and run.state.type == StateType.RUNNING:
            time.sleep(3)
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run.id)
            assert run.state is not None
        assert run.state.type == StateType.CRASHED
        assert "No heartbeat from this flow run for 45 s" in str(run.state.message)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation)
            assert client.read_automations_by_name(ZOMBIE_NAME) == []
