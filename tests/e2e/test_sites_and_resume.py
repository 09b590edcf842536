"""Several sites on one branch, marts by site, and a failed backfill resumed on its branch."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from pydantic import SecretStr

from blocks.nightscout import NightscoutSite
from flows.pipeline import backfill
from tasks.errors import CascadeError
from tasks.lakehouse import read_table
from tasks.profile import embedded_lakehouse
from tasks.settings import load_lakehouse_settings
from tasks.simulator import SimulatorServer, SiteConfig

from .conftest import NOW, register_site_blocks

pytestmark = pytest.mark.e2e

SECRET = "sites-secret-value"
SITES = [SiteConfig(site_id=s, seed=seed, timezone=tz, api_secret=SECRET)
         for s, seed, tz in (("clinic-a", 3, "Europe/London"), ("clinic-b", 5, "America/New_York"))]
START, END = date(2024, 3, 1), date(2024, 3, 3)


@pytest.fixture(scope="module")
def two_sites() -> Iterator[SimulatorServer]:
    with SimulatorServer(SITES, now=NOW,
                         history_days=60) as server:
        yield server


@pytest.fixture
def site_blocks(two_sites: SimulatorServer, cascade_home: object,
                monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One nightscout-site block per simulated site; no site in the environment."""
    return register_site_blocks(two_sites, SITES, monkeypatch)


def _entries_requests(server: SimulatorServer, site: str) -> int:
    return sum(1 for path, _, _ in server.request_log if path.startswith(f"/{site}/api/v1/entries"))


def test_failed_backfill_resumes_on_its_branch_and_lands_every_site(
    two_sites: SimulatorServer, site_blocks: list[str],
) -> None:
    # site b's Nightscout refuses its readings: a's partitions land, b's fail
    two_sites.inject(401, path="/clinic-b/api/v1/entries", times=10_000)
    with pytest.raises(CascadeError, match=r"3 of 6 partitions failed; branch (\S+) kept"):
        backfill(start=START, end=END, sites=site_blocks, chunk_days=1, max_concurrency=4,
                 dbt_node_tasks=False)
    branches = embedded_lakehouse().branches
    (kept,) = [r.name for r in branches.list_refs()
               if r.kind == "branch" and r.name.startswith("run-backfill-")]
    assert not branches.catalog("main").table_exists("raw.entries")  # nothing promoted
    first = read_table(branches.catalog(kept), "raw.entries")
    assert set(first.get_column("site_id").unique()) == {"clinic-a"}
    first_run = first.get_column("ingest_run_id").unique().to_list()

    two_sites.clear_faults()
    a_before = _entries_requests(two_sites, "clinic-a")
    result = backfill(start=START, end=END, sites=site_blocks, branch=kept, chunk_days=1,
                      max_concurrency=4, dbt_node_tasks=False)
    assert result.ingest.resumed == 3 and result.ingest.windows == 6
    assert _entries_requests(two_sites, "clinic-a") == a_before  # a was not fetched again
    assert result.ingest.sites == ["clinic-a", "clinic-b"]
    assert result.ingest.timezones == {"clinic-a": "Europe/London",
                                       "clinic-b": "America/New_York"}

    main = branches.catalog("main")
    entries = read_table(main, "raw.entries")
    per_site = entries.group_by("site_id").agg(
        pl.col("entry_at").dt.date().n_unique().alias("days"),
        pl.col("ingest_run_id").unique().alias("runs"))
    rows = {r["site_id"]: r for r in per_site.iter_rows(named=True)}
    assert rows["clinic-a"]["days"] == rows["clinic-b"]["days"] == 3
    assert rows["clinic-a"]["runs"] == first_run  # landed by the first attempt, kept
    assert rows["clinic-b"]["runs"] != first_run  # landed by the resumed run
    assert entries.unique(["site_id", "entry_id"]).height == entries.height  # no duplicate
    assert result.ingest.tables["entries"].committed == entries.height

    with sqlite3.connect(load_lakehouse_settings().marts_path) as db:
        by_site = dict(db.execute("select site_id, count(*) from mrt_daily_glycaemia "
                                  "group by site_id").fetchall())
    assert set(by_site) == {"clinic-a", "clinic-b"} and min(by_site.values()) >= 2


def test_run_names_say_what_and_which_sites(
    two_sites: SimulatorServer, site_blocks: list[str],
) -> None:
    result = backfill(start=START, end=START, sites=site_blocks, chunk_days=1,
                      promote_to_main=False)
    expected = f"backfill {START}..{START} sites=ns-clinic-a,ns-clinic-b"
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[expected])))
    assert len(runs) == 1 and runs[0].state is not None and runs[0].state.is_completed()
    assert result.ingest.windows == 2


def test_two_blocks_naming_one_site_id_are_refused(
    two_sites: SimulatorServer, site_blocks: list[str],
) -> None:
    NightscoutSite(url=two_sites.url_for("clinic-b"), site_id="clinic-a",
                   api_secret=SecretStr(SECRET)).save("ns-copy", overwrite=True)
    with pytest.raises(CascadeError, match="clinic-a named by more than one block"):
        backfill(start=START, end=START, sites=[site_blocks[0], "ns-copy"],
                 promote_to_main=False)


def test_a_timezone_on_a_sites_block_is_the_one_its_days_follow(
    two_sites: SimulatorServer, site_blocks: list[str],
) -> None:
    """clinic-b's profile says New York; its block says Tokyo, then names no zone again."""

    def block_b(timezone: str | None) -> None:
        NightscoutSite(url=two_sites.url_for("clinic-b"), site_id="clinic-b",
                       api_secret=SecretStr(SECRET), timezone=timezone).save(
                           "ns-clinic-b", overwrite=True)

    def facts() -> pl.DataFrame:
        main = embedded_lakehouse().branches.catalog("main")
        return read_table(main, "silver.fct_cgm_reading")

    def zones() -> dict[str, list[str]]:
        per_site = facts().group_by("site_id").agg(pl.col("timezone_name").unique().sort())
        return dict(per_site.iter_rows())

    block_b("Asia/Tokyo")
    result = backfill(start=START, end=START, sites=site_blocks, chunk_days=1,
                      dbt_node_tasks=False)
    assert result.ingest.timezones == {"clinic-a": "Europe/London", "clinic-b": "Asia/Tokyo"}
    assert zones() == {"clinic-a": ["Europe/London"], "clinic-b": ["Asia/Tokyo"]}
    b = facts().filter(pl.col("site_id") == "clinic-b")
    tokyo = b.get_column("reading_at").dt.convert_time_zone("Asia/Tokyo").dt.date()
    assert (b.get_column("local_date") == tokyo).all()
    with sqlite3.connect(load_lakehouse_settings().marts_path) as db:
        days = [d for (d,) in db.execute("select local_date from mrt_daily_glycaemia where "
                                         "site_id = 'clinic-b' order by local_date")]
    assert days == [str(START), str(date(START.year, START.month, START.day + 1))]  # +9 h

    block_b(None)  # the profile's zone again: every day of the site moves back
    backfill(start=START, end=START, sites=site_blocks, chunk_days=1, dbt_node_tasks=False)
    assert zones() == {"clinic-a": ["Europe/London"], "clinic-b": ["America/New_York"]}
