"""kill -9 at each step of the chain: main and the marts are as before or as after, never
between, and re-running the same parameters gives the data an undisturbed run gives."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from prefect.settings import PREFECT_API_URL

from tasks.branches import EmbeddedBranchCatalog
from tasks.faults import FAULT_POINTS
from tasks.lakehouse import read_table
from tasks.simulator import SimulatorServer

from .conftest import SECRET

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIRST, SECOND = "2024-03-01", "2024-03-02"
RUN_COLUMNS = ("ingest_run_id", "ingested_at")


def _backfill(home: Path, simulator: SimulatorServer, day: str,
              fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m flows backfill day day`` in a process of its own (on the session's API)."""
    env = {**os.environ, "CASCADE_HOME": str(home), "CASCADE_PROFILE": "embedded",
           "NIGHTSCOUT_URL": simulator.url_for("a"), "NIGHTSCOUT_API_SECRET": SECRET,
           "NIGHTSCOUT_SITE_ID": "a", "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env.pop("CASCADE_FAULT", None)
    if fault:
        env["CASCADE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "flows", "backfill", day, day,
                           "--chunk-days", "1", "--plain-dbt"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def _ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _branches(home: Path) -> EmbeddedBranchCatalog:
    return EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse")


def _marts(home: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every mart's rows, sorted (the publish log excluded: it records run ids)."""
    path = home / "marts.db"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute(
            "select name from sqlite_master where type = 'table' and name like 'mrt_%'")]
        return {n: sorted(db.execute(f'select * from "{n}"').fetchall()) for n in names}


def _same_marts(a: dict[str, list[tuple[object, ...]]],
                b: dict[str, list[tuple[object, ...]]]) -> bool:
    """Equal marts; floats within 1e-9 relative (DuckDB's parallel sums vary in the last bits)."""
    def close(x: object, y: object) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        return x == y

    return a.keys() == b.keys() and all(
        len(a[n]) == len(b[n]) and all(len(r) == len(q) and all(map(close, r, q))
                                       for r, q in zip(a[n], b[n], strict=True))
        for n in a)


def _entries(home: Path) -> pl.DataFrame:
    frame = read_table(_branches(home).catalog("main"), "raw.entries")
    return frame.drop(RUN_COLUMNS).sort("entry_id")


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory,
                simulator: SimulatorServer) -> Path:
    home = tmp_path_factory.mktemp("undisturbed")
    _ok(_backfill(home, simulator, FIRST))
    _ok(_backfill(home, simulator, SECOND))
    return home


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_9_is_all_or_nothing_and_a_rerun_heals(
    point: str, undisturbed: Path, site_env: SimulatorServer, tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _ok(_backfill(home, site_env, FIRST))
    main_before, marts_before = _branches(home).ref("main").hash, _marts(home)
    assert marts_before

    crashed = _backfill(home, site_env, SECOND, fault=point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.stdout + crashed.stderr)[-2000:]
    main_now = _branches(home).ref("main").hash
    if point == "publish-mid-transaction":
        assert main_now != main_before  # promote had finished: main is as after
    else:
        assert main_now == main_before  # exactly as before
    assert _marts(home) == marts_before  # the marts database never half-published (bytes)

    _ok(_backfill(home, site_env, SECOND))  # the same parameters again
    assert _entries(home).equals(_entries(undisturbed))
    assert _same_marts(_marts(home), _marts(undisturbed))
