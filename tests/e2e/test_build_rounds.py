"""A build of everything in rounds of sites ends where one build of every site ends.

``CASCADE_BUILD_ROUND_ROWS=1`` makes every site a round of its own. The tests compare
every model table with a build of the same raw data in one round: after a first backfill
in rounds (each model created by the first round, the later rounds adding their sites),
after a full refresh in rounds of a lakehouse built in one, and after a build killed in
its first round (the branch is refused, and the next build rebuilds everything).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from prefect.settings import PREFECT_API_URL

from flows.build_branch import build_branch
from flows.pipeline import backfill
from flows.validate import validate
from tasks.build_log import builds_after, latest_build
from tasks.build_plan import INCOMPLETE
from tasks.build_rounds import ROUND_ROWS_ENV
from tasks.errors import ValidationFailed
from tasks.lakehouse import read_table
from tasks.profile import embedded_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig
from tests.e2e.model_compare import MODEL_NAMESPACES, assert_same_tables, tables_of

from .conftest import NOW, register_site_blocks

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SECRET = "rounds-secret-value"
SITES = [SiteConfig(site_id=s, seed=seed, timezone=tz, api_secret=SECRET)
         for s, seed, tz in (("r-london", 31, "Europe/London"),
                             ("r-newyork", 37, "America/New_York"),
                             ("r-auckland", 41, "Pacific/Auckland"))]
START, END = date(2024, 3, 1), date(2024, 3, 4)


@pytest.fixture(scope="module")
def three_sites() -> Iterator[SimulatorServer]:
    with SimulatorServer(SITES, now=NOW, history_days=60) as server:
        yield server


@pytest.fixture
def site_blocks(three_sites: SimulatorServer, cascade_home: object,
                monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One nightscout-site block per simulated site; no site in the environment, and the
    default round size."""
    monkeypatch.delenv(ROUND_ROWS_ENV, raising=False)
    return register_site_blocks(three_sites, SITES, monkeypatch)


def _built_in_one_round(branch: str) -> dict[str, pl.DataFrame]:
    """Every model table after a full build of ``branch``'s raw data in one round, on a
    branch of its own."""
    branches = embedded_lakehouse().branches
    branches.create_branch("one-round", branch)
    os.environ.pop(ROUND_ROWS_ENV, None)
    report = build_branch("one-round", node_tasks=False, full_refresh=True)
    assert report.status == "success" and report.rounds_written == 1
    tables = tables_of(branches.catalog("one-round"))
    branches.delete_branch("one-round")
    return tables


def _sites(tables: dict[str, pl.DataFrame], name: str) -> set[str]:
    return set(tables[name].get_column("site_id").unique())


def test_a_first_backfill_in_rounds_equals_one_build_of_every_site(
        site_blocks: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROUND_ROWS_ENV, "1")
    result = backfill(start=START, end=END, sites=site_blocks, chunk_days=2,
                      dbt_node_tasks=False)
    assert result.build is not None
    assert result.build.full_refresh and result.build.rounds_written == len(SITES)
    main = embedded_lakehouse().branches.catalog("main")
    (build,) = builds_after(main, 0)  # the started record was replaced by the real one
    assert build.status == "success" and build.models_checksum != INCOMPLETE

    in_rounds = tables_of(main)
    expected = {s.site_id for s in SITES}
    for name in ("silver.fct_cgm_reading", "marts.mrt_daily_glycaemia",
                 "marts.mrt_period_summary"):
        assert _sites(in_rounds, name) == expected, name
    # what the next build compares its sites against holds every site too
    kept = read_table(main, "build.site_parameters")
    assert set(kept.get_column("site_id")) == expected
    assert_same_tables(in_rounds, _built_in_one_round("main"))


def test_a_full_refresh_in_rounds_equals_one_round_and_passes_validation(
        site_blocks: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    backfill(start=START, end=END, sites=site_blocks, chunk_days=2, dbt_node_tasks=False)
    branches = embedded_lakehouse().branches
    assert latest_build(branches.catalog("main")) is not None
    branches.create_branch("in-rounds", "main")
    monkeypatch.setenv(ROUND_ROWS_ENV, "1")
    report = build_branch("in-rounds", node_tasks=False, full_refresh=True)
    assert report.status == "success" and report.rounds_written == len(SITES)
    validate("in-rounds")
    assert_same_tables(tables_of(branches.catalog("in-rounds")), tables_of(
        branches.catalog("main")))


def test_a_build_killed_in_its_rounds_is_refused_and_the_next_build_rebuilds_everything(
        site_blocks: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    backfill(start=START, end=END, sites=site_blocks, chunk_days=2, dbt_node_tasks=False)
    branches = embedded_lakehouse().branches
    expected = tables_of(branches.catalog("main"))
    branches.create_branch("killed", "main")

    env = {**os.environ, ROUND_ROWS_ENV: "1", "CASCADE_FAULT": "build-mid-export",
           "CASCADE_PROFILE": "embedded", "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run([sys.executable, "-m", "flows", "build", "killed", "--full-refresh"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == -signal.SIGKILL, (done.stdout + done.stderr)[-3000:]
    catalog = branches.catalog("killed")
    # the first model landed with the first round's site only: the branch is half-built
    landed = {name: frame.get_column("site_id").n_unique()
              for name, frame in tables_of(catalog, ("build", *MODEL_NAMESPACES)).items()
              if "site_id" in frame.columns and frame.height}
    assert min(landed.values()) == 1, landed
    record = latest_build(catalog)
    assert record is not None and record.status == "error"
    assert record.models_checksum == INCOMPLETE
    with pytest.raises(ValidationFailed, match="did not finish its 3 rounds"):
        validate("killed")

    report = build_branch("killed", node_tasks=False)  # nothing asked: it must see why
    assert report.full_refresh and "stopped part-way" in report.reason
    validate("killed")
    assert_same_tables(tables_of(catalog), expected)
    assert read_table(catalog, "raw.entries").height == read_table(
        branches.catalog("main"), "raw.entries").height


def test_a_build_out_of_duckdb_memory_says_which_settings_to_change(
        site_blocks: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_DUCKDB_MEMORY_LIMIT", "4MB")
    with pytest.raises(ValidationFailed) as refused:
        backfill(start=START, end=START, sites=site_blocks[:1], dbt_node_tasks=False)
    assert "Out of Memory" in str(refused.value)
    assert "raise CASCADE_DUCKDB_MEMORY_LIMIT" in str(refused.value)
    assert ROUND_ROWS_ENV in str(refused.value)
    assert not embedded_lakehouse().branches.catalog("main").table_exists("raw.entries")
