"""kill -9 mid-commit, mid-dbt, mid-merge and mid-publish on the stack: Nessie main and the
Postgres marts are as before or as after, never between, and re-running the same parameters
completes with every day once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from tasks.lakehouse import read_table
from tasks.nessie import NO_ANCESTOR
from tasks.profile import stack_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig
from tests._iceberg import eq
from tests.integration.conftest import NOW, REPO, SECRET, use_site
from tests.integration.test_stack_pipeline import MARTS, _postgres_mart

pytestmark = pytest.mark.stack

DAYS = {"ingest-mid-commit": "2024-04-01", "publish-mid-transaction": "2024-04-02",
        "build-mid-dbt": "2024-04-03", "promote-mid-merge": "2024-04-04"}
# Nessie merges in one call and tags in another: killed between, main is as after
PROMOTED = ("publish-mid-transaction", "promote-mid-merge")


def _backfill(day: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_FAULT"}
    if fault:
        env["CASCADE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "flows", "backfill", day, day, "--chunk-days",
                           "1", "--plain-dbt"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200, check=False)


def _marts(site: str) -> dict[str, pl.DataFrame]:
    """The site's rows of every mart in Postgres (none yet on a stack never published to)."""
    out = {}
    for name in MARTS:
        try:
            out[name] = _postgres_mart(name, site)
        except sa.exc.ProgrammingError:
            out[name] = pl.DataFrame()
    return out


def _same(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> bool:
    return a.keys() == b.keys() and all(a[n].sort(a[n].columns).equals(b[n].sort(b[n].columns))
                                        for n in a)


# a site of its own: the days these runs promote never reach other tests' marts
SITE = SiteConfig(site_id="k" + uuid.uuid4().hex[:8], seed=13, timezone="Europe/London",
                  api_secret=SECRET)


@pytest.fixture(scope="module")
def crash_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=30) as server:
        yield server


@pytest.fixture
def crash_site(stack_env: dict[str, str], crash_simulator: SimulatorServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> str:
    """Cascade on the stack profile, reading this module's own simulated site."""
    return use_site(monkeypatch, crash_simulator, SITE.site_id, tmp_path / "cascade")


@pytest.mark.parametrize("point", sorted(DAYS))
def test_kill_9_on_the_stack_is_all_or_nothing_and_a_rerun_heals(
    point: str, crash_site: str,
) -> None:
    stack_site = crash_site
    branches = stack_lakehouse().branches
    if branches.ref("main").hash == NO_ANCESTOR:  # a first promote fast-forwards: no merge
        assert _backfill("2024-03-31").returncode == 0
    main_before, marts_before = branches.ref("main").hash, _marts(stack_site)
    tags_before = {r.name for r in branches.list_refs() if r.kind == "tag"}

    crashed = _backfill(DAYS[point], fault=point)
    assert crashed.returncode == -signal.SIGKILL, (crashed.stdout + crashed.stderr)[-2000:]
    main_crashed = branches.ref("main").hash
    if point in PROMOTED:
        assert main_crashed != main_before  # merged: main is as after
    else:
        assert main_crashed == main_before  # exactly as before
    assert _same(_marts(stack_site), marts_before)  # Postgres rolled the transaction back

    done = _backfill(DAYS[point])  # the same parameters again
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    if point == "promote-mid-merge":  # the lost tag is put back where the merge landed
        tags = {r.name: r.hash for r in branches.list_refs() if r.kind == "tag"}
        lost = [n for n in tags.keys() - tags_before if tags[n] == main_crashed]
        assert len(lost) == 1, sorted(tags.keys() - tags_before)
    entries = read_table(branches.catalog("main"), "raw.entries", eq("site_id", stack_site))
    day = entries.filter(pl.col("entry_at").dt.date() == date.fromisoformat(DAYS[point]))
    assert day.height > 200
    assert entries.get_column("entry_id").n_unique() == entries.height  # nothing twice
    daily = _marts(stack_site)["mrt_daily_glycaemia"]
    local_dates = daily.get_column("local_date").cast(pl.Date).to_list()
    assert date.fromisoformat(DAYS[point]) in local_dates  # the marts caught up
