"""Hostile and broken Nightscout servers met by whole flow runs (the window-level cases, with
finer assertions and the trickling servers, are in ``tests/unit/test_hostile_sources.py``).

Every case runs ``ingest_day`` as a Prefect flow run and, when it succeeded, promotes its
branch into main: main then holds every entry the server had (unreadable ones in
``audit.rejects`` with the reason) or is unchanged, and no form of the credential (api-secret
plain, SHA-1, SHA-512; the token) is in Prefect's database, the lakehouse or the output. A site
that is down fails once, in one sentence, leaving no empty branch; a run killed hard does not
stay Running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogHandler
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
)

from flows.automations import ZOMBIE_NAME, apply_zombie_detection
from flows.ingest_day import ingest_day
from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import (
    CascadeError,
    NightscoutError,
    NightscoutRedirected,
    NightscoutTooLarge,
)
from tasks.lakehouse import read_table
from tasks.profile import current_profile
from tasks.simulator import SimulatorServer, SiteConfig, expected_records, hostile
from tests.leakscan import credential_forms, leaks

from .conftest import NOW, SECRET, SITE

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
    """Wait until every log and event sent so far is in the server's database.

    The server stores logs as they arrive, so sending this process's is enough. Events
    it writes in batches: a marker event sent after this process's own (over the same
    connection, stored in order) is readable only once everything before it is stored.
    A subprocess's logs and events were sent before it exited.
    """
    APILogHandler().flush()  # sends what the process's log worker holds, and waits
    marker = f"cascade.test.flush.{uuid.uuid4().hex}"
    assert emit_event("cascade.test.flushed", resource={"prefect.resource.id": marker})
    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    stored = EventFilter(resource=EventResourceFilter(id=[marker]))
    with get_client(sync_client=True) as client:
        # limit: the server refuses the client's default of 100
        while not client.read_events(stored, limit=1).events:
            assert time.monotonic() < deadline, "the server stored no flushed event in 60 s"
            time.sleep(0.1)


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


DAY = date(2024, 3, 14)
TOKEN = "e2e-hostile-token-81d3"  # sent as well as the secret (the site checks the secret)


def _entries_of_the_day() -> list[dict[str, object]]:
    first = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    low, high = first.timestamp() * 1000, (first + timedelta(days=1)).timestamp() * 1000
    docs = expected_records(SITE, DAY, DAY + timedelta(days=1), "entries")
    return [d for d in docs if low <= float(str(d["date"])) < high]


def _victim(position: int) -> str:
    return sorted({str(d["_id"]) for d in _entries_of_the_day()})[position]


def _newest() -> dict[str, object]:
    return max(_entries_of_the_day(), key=lambda d: float(str(d["date"])))


FAR = str(int(datetime(2150, 1, 1, tzinfo=UTC).timestamp() * 1000)).encode()
# name -> (the fault, given the simulator; what the run must end with: rejected ids and the
# start of their reason, or the error and a part of its message)
CASES: dict[str, tuple[Any, Any]] = {
    "page cap": (lambda sim: setattr(sim, "page_cap", 40), {}),
    "gzip bomb": (lambda sim: sim.inject(bomb=256 << 20, encoding="gzip", times=50,
                                         path="/a/api/v1/entries"),
                  (NightscoutTooLarge, "even for count=1")),
    "zstd bomb": (lambda sim: sim.inject(bomb=256 << 20, encoding="zstd", times=50,
                                         path="/a/api/v1/entries"),
                  (NightscoutTooLarge, "even for count=1")),
    "huge answer": (lambda sim: sim.inject(huge=96 << 20, times=50, path="/a/api/v1/entries"),
                    (NightscoutTooLarge, "or the server ignores count")),
    "deep document": (lambda sim: sim.inject(mutate=hostile.deepen(_victim(50), 50_000),
                                             times=50, path="/a/api/v1/entries"),
                      {_victim(50): "unreadable document: nested 50001 levels"}),
    "invalid UTF-8": (lambda sim: sim.inject(mutate=hostile.break_utf8(_victim(9)), times=50,
                                             path="/a/api/v1/entries"),
                      {_victim(9): "unreadable document: not valid UTF-8"}),
    "far-future date": (lambda sim: sim.inject(mutate=hostile.set_date(str(_newest()["_id"]), FAR),
                                               times=1, path="/a/api/v1/entries"),
                        {str(_newest()["_id"]): "entry_at 2150-01-01T00:00:00Z is outside"}),
    "redirect": (lambda sim: sim.inject(redirect=f"https://moved.example/?token={TOKEN}",
                                        times=50, path="/a/api/v1/entries"),
                 (NightscoutRedirected, "a redirect to https://moved.example/?token=***")),
    "header echo": (lambda sim: sim.inject(echo_status=400, times=50, path="/a/api/v1/entries"),
                    (NightscoutError, "answered 400")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hostile_server_in_a_flow_run(
    case: str, site_env: SimulatorServer, cascade_home: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NIGHTSCOUT_TOKEN", TOKEN)
    started = time.time()
    branches = current_profile().lakehouse.branches
    main_before = branches.ref("main").hash
    fault, expected = CASES[case]
    fault(site_env)
    error: CascadeError | None = None
    try:
        result = ingest_day(day=DAY)
        branches.merge(result.branch)
    except CascadeError as exc:
        error = exc
    finally:
        site_env.clear_faults()
        site_env.page_cap = None
    main = branches.catalog("main")
    if isinstance(expected, tuple):  # the run fails clearly; main is as it was
        kind, words = expected
        assert isinstance(error, kind) and words in str(error), error
        assert branches.ref("main").hash == main_before
    else:  # every entry the server had is on main, or rejected with its reason
        assert error is None, error
        landed = set(read_table(main, "raw.entries").get_column("entry_id"))
        duplicates = set(read_table(main, "audit.duplicates").get_column("record_id"))
        rejects = read_table(main, "audit.rejects").filter(
            read_table(main, "audit.rejects").get_column("table_name") == "entries")
        reasons = dict(rejects.select("record_id", "reason").iter_rows())
        served = {str(d["_id"]) for d in _entries_of_the_day()}
        assert landed | duplicates == served - set(expected)
        assert set(reasons) == set(expected)
        assert all(reasons[i].startswith(why) for i, why in expected.items()), reasons
    _flush_prefect()
    out = capfd.readouterr()
    texts = {"the error": f"{error}\n{error!r}", "stdout": out.out, "stderr": out.err}
    assert leaks(credential_forms(secret=SECRET, token=TOKEN),
                 roots=[cascade_home, *_prefect_files(started)], texts=texts) == []


def _state(run: FlowRun) -> State[Any]:
    assert run.state is not None
    return run.state


def _latest_run(flow: str, since: datetime) -> FlowRun:
    after = cast(Any, since)  # the filter's annotation names Prefect's own datetime type
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_=flow), start_time=FlowRunFilterStartTime(after_=after)))
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
        state = _state(run)
        assert state.type == StateType.RUNNING  # a zombie
        deadline = time.monotonic() + 240  # 45 s, the 5 s evaluation period, and a margin
        while time.monotonic() < deadline and state.type == StateType.RUNNING:
            time.sleep(3)
            with get_client(sync_client=True) as client:
                state = _state(client.read_flow_run(run.id))
        assert state.type == StateType.CRASHED
        assert "No heartbeat from this flow run for 45 s" in str(state.message)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation)
            assert client.read_automations_by_name(ZOMBIE_NAME) == []
