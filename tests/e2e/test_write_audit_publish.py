"""The whole chain on the embedded profile: build, validate, promote, publish, time travel."""

from __future__ import annotations

import re
import sqlite3
from datetime import date

import polars as pl
import pytest

from flows.build_branch import build_branch
from flows.pipeline import backfill, daily
from flows.promote import promote
from flows.validate import validate
from tasks.errors import BranchConflict, ValidationFailed
from tasks.lakehouse import read_table
from tasks.profile import embedded_lakehouse
from tasks.query import open_ref
from tasks.settings import load_lakehouse_settings
from tasks.simulator import SimulatorServer
from tests._iceberg import eq

pytestmark = pytest.mark.e2e


def _marts_db() -> sqlite3.Connection:
    return sqlite3.connect(load_lakehouse_settings().marts_path)


def test_chain_promotes_publishes_and_keeps_history(site_env: SimulatorServer) -> None:
    branches = embedded_lakehouse().branches
    first = backfill(start=date(2024, 3, 1), end=date(2024, 3, 3), chunk_days=2)
    tag_one = str(first.tag)
    assert branches.ref(tag_one).hash == branches.ref("main").hash
    assert [r.name for r in branches.list_refs() if r.kind == "branch"] == ["main"]
    with _marts_db() as db:
        days_one = db.execute("select count(*) from mrt_daily_glycaemia").fetchone()[0]
        logged = db.execute("select distinct ref, ref_hash from cascade_publish_log").fetchall()
    assert days_one >= 3
    assert logged == [("main", branches.ref(tag_one).hash)]

    second = backfill(start=date(2024, 3, 4), end=date(2024, 3, 5), chunk_days=2)
    main = branches.catalog("main")
    before = branches.catalog(tag_one)
    entries_main = read_table(main, "raw.entries").height
    entries_tag = read_table(before, "raw.entries").height
    assert entries_main > entries_tag > 0  # the tag before the last promote: old data
    daily_main = read_table(main, "marts.mrt_daily_glycaemia")
    daily_tag = read_table(before, "marts.mrt_daily_glycaemia")
    assert daily_main.height > daily_tag.height
    assert second.tag is not None and second.tag != tag_one
    with _marts_db() as db:
        assert db.execute("select count(*) from mrt_daily_glycaemia").fetchone()[0] \
            == daily_main.height
    # snapshot time travel on main itself: the previous snapshot of raw.entries
    table = main.load_table("raw.entries")
    snapshots = table.snapshots()
    assert len(snapshots) >= 2
    assert table.scan(snapshot_id=snapshots[0].snapshot_id).to_arrow().num_rows < entries_main
    # the same data through DuckDB's iceberg reader
    main = embedded_lakehouse().branches.catalog("main")
    count = open_ref(main).sql("select count(*) from raw.entries").fetchone()
    assert count == (entries_main,)


def test_daily_runs_the_chain_for_a_local_day(site_env: SimulatorServer) -> None:
    result = daily(day=date(2024, 4, 5))
    assert result.days == {"a": date(2024, 4, 5)}
    daily_mart = read_table(embedded_lakehouse().branches.catalog("main"),
                            "marts.mrt_daily_glycaemia")
    row = daily_mart.filter(pl.col("local_date") == date(2024, 4, 5)).row(0, named=True)
    assert row["n_readings"] > 250
    assert 99.99 < row["tir_pct"] + row["tbr_pct"] + row["tar_pct"] < 100.01


def test_failing_validation_leaves_main_untouched_and_branch_kept(
    site_env: SimulatorServer,
) -> None:
    branches = embedded_lakehouse().branches
    result = backfill(start=date(2024, 3, 10), end=date(2024, 3, 11), promote_to_main=False)
    branch = result.branch
    # lose a day's rows on the branch behind ingestion's back: reconciliation must catch it
    table = branches.catalog(branch).load_table("raw.entries")
    table.delete(eq("site_id", "a"))
    main_before = branches.ref("main").hash
    build_branch(branch)
    with pytest.raises(ValidationFailed, match=re.escape("reconcile raw.entries")):
        validate(branch)
    assert branches.ref("main").hash == main_before
    assert branches.ref(branch).kind == "branch"


def test_promote_refuses_when_main_moved_since_validation(site_env: SimulatorServer) -> None:
    branches = embedded_lakehouse().branches
    one = str(backfill(start=date(2024, 3, 12), end=date(2024, 3, 12),
                       promote_to_main=False).branch)
    two = str(backfill(start=date(2024, 3, 13), end=date(2024, 3, 13),
                       promote_to_main=False).branch)
    seen = branches.ref("main").hash
    promote(one, expected_main_hash=seen)
    after_one = branches.ref("main").hash
    with pytest.raises(BranchConflict):
        promote(two, expected_main_hash=seen)
    assert branches.ref("main").hash == after_one
    assert branches.ref(two).kind == "branch"  # kept for a re-run
    entries = read_table(branches.catalog("main"), "raw.entries")
    days = entries.get_column("entry_at").dt.date().unique().to_list()
    assert date(2024, 3, 13) not in days
