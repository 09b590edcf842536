"""Publishing only what changed: partition updates in the marts database, and the plan that
decides, from the ref's build log and what the database holds, what a publish writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from prefect_sqlalchemy import SqlAlchemyConnector
from pyiceberg.catalog import Catalog

from tasks.branches import EmbeddedBranchCatalog
from tasks.build_log import BuildRecord, ModelBuild, TouchedRange, TouchedSet, write_build
from tasks.lakehouse import replace_rows
from tasks.profile import sqlite_marts
from tasks.publish import (
    MartRows,
    PublishedState,
    publish_marts,
    published_columns,
    published_state,
    read_mart,
)
from tasks.publish_plan import plan_publish
from tasks.settings import LakehouseSettings
from tasks.tables import TableLayout

D0 = date(2024, 3, 1)
MART = "marts.mrt_daily_glycaemia"


def _days(site: str, first: int, n: int, value: float) -> pl.DataFrame:
    return pl.DataFrame({"site_id": [site] * n,
                         "local_date": [D0 + timedelta(days=first + i) for i in range(n)],
                         "tir_pct": [value + i for i in range(n)]})


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[SqlAlchemyConnector]:
    block = sqlite_marts(LakehouseSettings(home=tmp_path))
    with block:
        yield block


def _publish(connector: SqlAlchemyConnector, marts: dict[str, pl.DataFrame | MartRows],
             seq: int) -> None:
    publish_marts(connector, marts, ref="main", ref_hash="h", run_id="r", build_seq=seq,
                  build_id=f"b{seq}")


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(sorted(frame.columns)).sort("site_id", "local_date")


def test_a_partition_update_equals_publishing_the_whole_mart(
        connector: SqlAlchemyConnector) -> None:
    before = pl.concat([_days("a", 0, 10, 50.0), _days("b", 0, 10, 60.0)])
    _publish(connector, {"daily": before}, 1)
    # days 3..4 of a rebuilt (day 4 now has no row), all of b rebuilt with fewer days
    changed = pl.concat([_days("a", 3, 1, 99.0), _days("b", 0, 5, 70.0)])
    scope = TouchedSet((TouchedRange("a", False, D0 + timedelta(days=3),
                                     D0 + timedelta(days=4)), TouchedRange("b", True)))
    _publish(connector, {"daily": MartRows(changed, scope, "site_day")}, 2)
    expected = pl.concat([
        before.filter((pl.col("site_id") == "a")
                      & ~pl.col("local_date").is_between(D0 + timedelta(days=3),
                                                         D0 + timedelta(days=4))),
        changed])
    got = read_mart(connector, "daily", expected.schema)
    assert_frame_equal(_sorted(got), _sorted(expected))


def test_a_site_update_replaces_the_rebuilt_sites_rows(connector: SqlAlchemyConnector) -> None:
    hourly = pl.DataFrame({"site_id": ["a", "a", "b"], "local_hour": [0, 1, 0],
                           "p50": [100.0, 110.0, 120.0]})
    _publish(connector, {"agp": hourly}, 1)
    new_a = pl.DataFrame({"site_id": ["a"], "local_hour": [5], "p50": [130.0]})
    _publish(connector, {"agp": MartRows(new_a, TouchedSet((TouchedRange("a", True),)),
                                         "site")}, 2)
    got = read_mart(connector, "agp", hourly.schema).sort("site_id", "local_hour")
    assert got.rows() == [("a", 5, 130.0), ("b", 0, 120.0)]


def test_the_database_remembers_the_build_it_holds(connector: SqlAlchemyConnector) -> None:
    assert published_state(connector) is None
    _publish(connector, {"daily": _days("a", 0, 3, 50.0)}, 4)
    assert published_state(connector) == PublishedState("main", "h", 4, "b4")
    assert published_columns(connector) == {"daily": ["site_id", "local_date", "tir_pct"]}


def test_an_older_publish_log_gains_the_build_columns(connector: SqlAlchemyConnector,
                                                      tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "marts.db") as db:
        db.execute("create table cascade_publish_log (mart text not null, ref text not null, "
                   "ref_hash text not null, run_id text not null, n_rows bigint not null, "
                   "published_at timestamp not null)")
    assert published_state(connector) is None  # no build recorded: publish everything
    _publish(connector, {"daily": _days("a", 0, 3, 50.0)}, 2)
    assert published_state(connector) == PublishedState("main", "h", 2, "b2")


# ------------------------------------------------------------------------------ plan


@pytest.fixture
def main(tmp_path: Path) -> Catalog:
    branches = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    catalog = branches.catalog("main")
    layout = TableLayout(MART, _days("a", 0, 1, 1.0).schema, "local_date", "")
    replace_rows(catalog, layout, _days("a", 0, 5, 1.0), TouchedSet(None).iceberg_filter("table"))
    return catalog


def _build(catalog: Catalog, seq: int, *, full: bool = False,
           first: int = 0, last: int = 0) -> None:
    touched = TouchedSet(None) if full else TouchedSet((TouchedRange(
        "a", False, D0 + timedelta(days=first), D0 + timedelta(days=last)),))
    write_build(catalog, BuildRecord(
        build_seq=seq, build_id=f"b{seq}", branch="main", built_at=datetime.now(UTC),
        full_refresh=full, reason="asked" if full else "", project_checksum="p",
        models_checksum="p", status="success",
        models={MART: ModelBuild("site_day", "t", full)}, touched={"t": touched}))


COLUMNS = {"mrt_daily_glycaemia": ["site_id", "local_date", "tir_pct"]}


def test_a_publish_writes_the_partitions_built_since_the_one_held(main: Catalog) -> None:
    for seq, (first, last) in enumerate([(0, 4), (2, 2), (4, 5)], start=1):
        _build(main, seq, full=seq == 1, first=first, last=last)
    plan = plan_publish(main, "main", PublishedState("main", "h", 1, "b1"), COLUMNS)
    mart = plan.marts["mrt_daily_glycaemia"]
    assert not mart.whole and plan.build_seq == 3
    assert [(r.first_date, r.last_date) for r in mart.scope.ranges or ()] == [
        (D0 + timedelta(days=2), D0 + timedelta(days=2)),
        (D0 + timedelta(days=4), D0 + timedelta(days=5))]
    assert plan.sites() == frozenset({"a"})


def test_publishing_the_same_build_again_writes_nothing(main: Catalog) -> None:
    _build(main, 1, full=True)
    plan = plan_publish(main, "main", PublishedState("main", "h", 1, "b1"), COLUMNS)
    assert plan.marts["mrt_daily_glycaemia"].scope.ranges == ()
    assert plan.sites() == frozenset()


@pytest.mark.parametrize(("state", "columns", "why"), [
    (None, COLUMNS, "no record"),
    (PublishedState("promoted-x", "h", 1, "b1"), COLUMNS, "holds promoted-x"),
    (PublishedState("main", "h", 9, "b9"), COLUMNS, "rollback"),
    (PublishedState("main", "h", 1, "other"), COLUMNS, "does not hold"),
    (PublishedState("main", "h", 1, "b1"), {}, "new to the database"),
    (PublishedState("main", "h", 1, "b1"),
     {"mrt_daily_glycaemia": ["site_id", "local_date"]}, "columns changed"),
])
def test_a_mart_is_written_whole_when_the_database_cannot_be_updated_in_place(
        main: Catalog, state: PublishedState | None, columns: dict[str, list[str]],
        why: str) -> None:
    _build(main, 1, full=True)
    _build(main, 2, first=1, last=1)
    mart = plan_publish(main, "main", state, columns).marts["mrt_daily_glycaemia"]
    assert mart.whole and why in mart.reason


def test_a_full_rebuild_since_the_last_publish_publishes_everything(main: Catalog) -> None:
    _build(main, 1, full=True)
    _build(main, 2, full=True)
    plan = plan_publish(main, "main", PublishedState("main", "h", 1, "b1"), COLUMNS)
    assert plan.marts["mrt_daily_glycaemia"].whole and plan.sites() is None
