"""Partitions of a run: planning across sites, what a branch already holds, totals."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from pyiceberg.expressions import And

from tasks.branches import EmbeddedBranchCatalog
from tasks.days import DayRange as R
from tasks.ingest import TableCounts
from tasks.lakehouse import ensure_table, replace_rows
from tasks.partitions import Partition, finished, ingest_totals, plan_partitions
from tasks.tables import AUDIT_TABLES, INGEST_LOG_SCHEMA
from tests._iceberg import isin

LOG = AUDIT_TABLES["ingest_log"]


def _log_rows(site: str, days: list[date], run_id: str, committed: int = 10) -> pl.DataFrame:
    return pl.DataFrame(
        [{"table_name": table, "site_id": site, "window_date": day, "n_fetched": committed + 2,
          "n_duplicates": 1, "n_rejected": 1, "n_committed": committed,
          "ingest_run_id": run_id, "ingested_at": datetime(2024, 5, 1, tzinfo=UTC)}
         for day in days for table in ("entries", "treatments")],
        schema=INGEST_LOG_SCHEMA,
    )


def _write(branches: EmbeddedBranchCatalog, ref: str, rows: pl.DataFrame) -> None:
    """Replace the logged days of ``rows`` on ``ref``, as a window's ingestion does."""
    sites = set(rows.get_column("site_id").to_list())
    days = {d.isoformat() for d in rows.get_column("window_date").to_list()}
    replace_rows(branches.catalog(ref), LOG, rows,
                 And(isin("site_id", sites), isin("window_date", days)))


@pytest.fixture
def branches(tmp_path: Path) -> EmbeddedBranchCatalog:
    catalog = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    main = catalog.catalog("main")
    main.create_namespace("audit")
    ensure_table(main, LOG)
    return catalog


D = [date(2024, 3, d) for d in range(1, 8)]


def test_plan_cuts_each_site_and_interleaves_sites() -> None:
    plan = plan_partitions({"a": R(D[0], D[4]), "b": R(D[0], D[1])}, chunk_days=2)
    assert plan == [Partition("a", R(D[0], D[1])), Partition("b", R(D[0], D[1])),
                    Partition("a", R(D[2], D[3])), Partition("a", R(D[4], D[4]))]
    assert list(plan[3].days) == [D[4]]
    assert plan[0].label() == "2024-03-01..2024-03-02 site=a"


def test_nothing_is_finished_on_a_fresh_branch_even_when_main_has_every_day(
    branches: EmbeddedBranchCatalog,
) -> None:
    _write(branches, "main", _log_rows("a", D[:4], "old"))
    branches.create_branch("run")
    plan = plan_partitions({"a": R(D[0], D[3])}, chunk_days=2)
    assert finished(branches.catalog("run"), branches.catalog("main"), plan) == set()


def test_a_partition_is_finished_only_when_every_day_is_logged_on_the_branch(
    branches: EmbeddedBranchCatalog,
) -> None:
    _write(branches, "main", _log_rows("a", D[:4], "old"))
    branches.create_branch("run")
    _write(branches, "run", _log_rows("a", D[:2], "new"))  # first chunk landed
    _write(branches, "run", _log_rows("a", D[2:3], "new"))  # half of the second
    _write(branches, "run", _log_rows("b", D[:2], "new"))  # another site's days
    plan = plan_partitions({"a": R(D[0], D[3]), "b": R(D[0], D[1])}, chunk_days=2)
    done = finished(branches.catalog("run"), branches.catalog("main"), plan)
    assert done == {Partition("a", R(D[0], D[1])), Partition("b", R(D[0], D[1]))}


def test_totals_sum_the_branch_log_over_the_partitions_only(
    branches: EmbeddedBranchCatalog,
) -> None:
    _write(branches, "main", _log_rows("a", D[:3], "r1", committed=5))
    _write(branches, "main", _log_rows("a", D[5:6], "r0", committed=1000))  # outside
    totals = ingest_totals(branches.catalog("main"),
                           plan_partitions({"a": R(D[0], D[2])}, chunk_days=2))
    assert totals == {t: TableCounts(fetched=21, duplicates=3, rejected=3, committed=15)
                      for t in ("entries", "treatments")}
    assert ingest_totals(branches.catalog("main"), []) == {}


def test_a_branch_without_an_ingest_log_has_nothing_finished(tmp_path: Path) -> None:
    bare = EmbeddedBranchCatalog(tmp_path / "bare.db", tmp_path / "bare")
    plan = plan_partitions({"a": R(D[0], D[1])}, chunk_days=1)
    assert finished(bare.catalog("main"), bare.catalog("main"), plan) == set()
    assert ingest_totals(bare.catalog("main"), plan) == {}
