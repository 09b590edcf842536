"""Incremental builds on the stack (dbt-trino on Iceberg, inside Nessie branches) end where a
full rebuild ends: nightly runs across DST with late readings and a re-ingested day. The full
rebuild runs in two rounds of sites, so both ways a round writes a model on Trino are checked.

The stack's main is shared by every session, so only this session's site is compared.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime

import polars as pl
import pytest
from pyiceberg.catalog import Catalog

from flows.build_branch import build_branch
from flows.ingest_day import ingest_day
from flows.pipeline import backfill, daily
from tasks.build_log import builds_after, latest_build_seq
from tasks.build_rounds import ROUND_ROWS_ENV, plan_rounds, source_rows_by_site
from tasks.lakehouse import read_table
from tasks.profile import stack_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig
from tests._iceberg import eq
from tests.e2e.model_compare import MODEL_NAMESPACES, assert_same_tables, canonical
from tests.integration.conftest import NOW, SECRET

pytestmark = pytest.mark.stack


def _site_tables(catalog: Catalog, site_id: str) -> dict[str, pl.DataFrame]:
    """Every model table's rows of one site, in a canonical order."""
    out = {}
    for namespace in MODEL_NAMESPACES:
        for _, name in catalog.list_tables(namespace):
            identifier = f"{namespace}.{name}"
            if "site_id" not in catalog.load_table(identifier).schema().column_names:
                continue
            out[identifier] = canonical(read_table(catalog, identifier, eq("site_id", site_id)))
    return out


@pytest.fixture
def clock(stack_simulator: SimulatorServer) -> Iterator[SimulatorServer]:
    yield stack_simulator
    stack_simulator.now = NOW


def test_trino_incremental_builds_equal_a_full_rebuild(stack_site: str, clock: SimulatorServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    branches = stack_lakehouse().branches
    backfill(start=date(2024, 3, 24), end=date(2024, 3, 28), chunk_days=2,
             dbt_node_tasks=False)
    before = latest_build_seq(branches.catalog("main")) or 0
    clock.now = datetime(2024, 3, 30, 21, 0, tzinfo=UTC)  # the evening is uploaded later
    daily(day=date(2024, 3, 30), dbt_node_tasks=False)
    clock.now = datetime(2024, 4, 1, 4, 0, tzinfo=UTC)
    daily(day=date(2024, 3, 31), dbt_node_tasks=False)  # the spring DST day
    backfill(start=date(2024, 3, 25), end=date(2024, 3, 25), dbt_node_tasks=False)
    main = branches.catalog("main")
    # the three later runs, each an incremental build of this site's days only
    ours = [b for b in builds_after(main, before)
            if stack_site in b.rebuilt("marts.mrt_daily_glycaemia").sites()]
    assert len(ours) == 3 and not any(b.full_refresh for b in ours)
    assert all(b.rebuilt("marts.mrt_daily_glycaemia").sites() == {stack_site} for b in ours)

    # The full rebuild runs in two rounds of sites (tasks.build_rounds): the first creates
    # every model afresh with every site main holds (this one among them), the second adds
    # a day of another site, ingested on the branch and sorted last, in place.
    name = f"full-{stack_site}"
    branches.create_branch(name, "main")
    try:
        other = _ingest_another_site(name, monkeypatch)
        rows = source_rows_by_site(branches.catalog(name))
        budget = sum(rows.values()) - rows[other]
        assert plan_rounds(rows, budget)[-1] == (other,)
        monkeypatch.setenv(ROUND_ROWS_ENV, str(budget))
        report = build_branch(name, node_tasks=False, full_refresh=True)
        assert report.full_refresh and report.status == "success"
        assert report.rounds_written == 2
        assert_same_tables(_site_tables(main, stack_site),
                           _site_tables(branches.catalog(name), stack_site))
        added = _site_tables(branches.catalog(name), other)["marts.mrt_daily_glycaemia"]
        assert added.height >= 1 and added.get_column("n_readings").sum() > 200
    finally:
        branches.delete_branch(name)


def _ingest_another_site(branch: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """One day of a site no other test reads, onto ``branch``; its site id (sorted last)."""
    site = SiteConfig(site_id="zz" + uuid.uuid4().hex[:8], seed=43, timezone="Asia/Tokyo",
                      api_secret=SECRET)
    with SimulatorServer([site], now=NOW, history_days=40) as server, \
            monkeypatch.context() as env:
        env.setenv("NIGHTSCOUT_URL", server.url_for(site.site_id))
        env.setenv("NIGHTSCOUT_SITE_ID", site.site_id)
        ingest_day(day=date(2024, 3, 28), branch=branch)
    return site.site_id
