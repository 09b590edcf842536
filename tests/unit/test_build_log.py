"""The build record and the change rows: what a build reads, stamps and leaves for validate
and publish, on a real embedded lakehouse (no dbt)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from pyiceberg.catalog import Catalog

from tasks.branches import EmbeddedBranchCatalog
from tasks.build_log import (
    BuildRecord,
    ModelBuild,
    TouchedRange,
    TouchedSet,
    builds_after,
    latest_build,
    latest_build_seq,
    table_locations,
    write_build,
)
from tasks.changes import (
    change_rows,
    consumed_changes,
    pending_changes,
    record_changes,
    stamp_changes,
)
from tasks.lakehouse import read_table, replace_rows
from tasks.tables import TableLayout

D = date(2024, 3, 1)


@pytest.fixture
def branches(tmp_path: Path) -> EmbeddedBranchCatalog:
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")


def _record(seq: int, **kw: object) -> BuildRecord:
    fields: dict[str, object] = {
        "build_seq": seq, "build_id": f"b{seq}", "branch": "dev",
        "built_at": datetime(2024, 3, 2, tzinfo=UTC), "full_refresh": False, "reason": "",
        "project_checksum": "p", "models_checksum": "p", "status": "success"}
    return BuildRecord(**{**fields, **kw})  # type: ignore[arg-type]


def test_a_record_survives_the_round_trip_through_the_build_log(
        branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    touched = TouchedSet((TouchedRange("a", False, D, date(2024, 3, 3)),
                          TouchedRange("b", True)))
    record = _record(1, nodes={"model.x": "success"}, failures=("test.y: fail",),
                     models={"marts.m": ModelBuild("site_day", "t", False)},
                     touched={"t": touched}, tables={"raw.entries": "file:///m.json"},
                     seconds={"dbt_build": 1.5}, n_changes=3)
    write_build(catalog, record)
    assert latest_build(catalog) == record


def test_the_latest_build_is_read_from_the_snapshot_summary(
        branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    assert latest_build_seq(catalog) is None and latest_build(catalog) is None
    for seq in (1, 2, 3):
        write_build(catalog, _record(seq))
    assert latest_build_seq(catalog) == 3
    assert [b.build_seq for b in builds_after(catalog, 1)] == [2, 3]


def test_a_branch_sees_main_s_builds_and_adds_its_own(branches: EmbeddedBranchCatalog) -> None:
    write_build(branches.catalog("main"), _record(1))
    branches.create_branch("dev")
    write_build(branches.catalog("dev"), _record(2))
    assert latest_build_seq(branches.catalog("main")) == 1
    assert latest_build_seq(branches.catalog("dev")) == 2


def test_touched_set_selects_the_rows_of_its_partitions(branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    layout = TableLayout("marts.m", pl.Schema({"site_id": pl.String(),
                                               "local_date": pl.Date(), "n": pl.Int64()}),
                         "local_date", "")
    days = [date(2024, 3, d) for d in range(1, 6)]
    rows = pl.DataFrame({"site_id": ["a"] * 5 + ["b"] * 5 + ["c"],
                         "local_date": days + days + [None], "n": list(range(11))},
                        schema=layout.schema)
    replace_rows(catalog, layout, rows, TouchedSet(None).iceberg_filter("site_day"))
    touched = TouchedSet((TouchedRange("a", False, date(2024, 3, 2), date(2024, 3, 3)),
                          TouchedRange("c", False, D, D)))
    picked = read_table(catalog, "marts.m", touched.iceberg_filter("site_day"))
    assert sorted(picked.get_column("n").to_list()) == [1, 2, 10]  # c's row without a day
    by_site = read_table(catalog, "marts.m", touched.iceberg_filter("site"))
    assert sorted(set(by_site.get_column("site_id"))) == ["a", "c"]
    assert read_table(catalog, "marts.m", TouchedSet(()).iceberg_filter("site_day")).height == 0


def test_touched_sets_union_as_every_partition_any_rebuilt() -> None:
    one = TouchedSet((TouchedRange("a", False, D, D),))
    two = TouchedSet((TouchedRange("a", False, D, D), TouchedRange("b", True)))
    assert TouchedSet.union([one, two]).sites() == {"a", "b"}
    assert len(TouchedSet.union([one, two]).ranges or ()) == 2
    assert TouchedSet.union([one, TouchedSet(None)]).everything


def _pending(catalog: Catalog, days: list[date | None]) -> None:
    record_changes(catalog, change_rows("a", ["entries"], days, "ingest", "run-1"))


def test_a_build_stamps_the_changes_it_consumed(branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    _pending(catalog, [D, date(2024, 3, 2)])
    pending = pending_changes(catalog)
    assert pending.height == 2 and pending.get_column("build_seq").is_null().all()
    assert stamp_changes(catalog, pending, 7) == 2
    _pending(catalog, [date(2024, 3, 3)])  # a later run's change stays pending
    assert pending_changes(catalog).get_column("utc_date").to_list() == [date(2024, 3, 3)]
    assert sorted(consumed_changes(catalog, 7).get_column("utc_date").to_list()) == [
        D, date(2024, 3, 2)]


def test_change_rows_need_their_columns(branches: EmbeddedBranchCatalog) -> None:
    with pytest.raises(ValueError, match="run_id"):
        record_changes(branches.catalog("main"),
                       pl.DataFrame({"site_id": ["a"], "table_name": ["entries"],
                                     "utc_date": [D], "source": ["x"],
                                     "recorded_at": [datetime(2024, 3, 1, tzinfo=UTC)]}))


def test_table_locations_name_every_table_but_the_build_log(
        branches: EmbeddedBranchCatalog) -> None:
    catalog = branches.catalog("main")
    _pending(catalog, [D])
    write_build(catalog, _record(1))
    locations = table_locations(catalog)
    assert list(locations) == ["audit.changed_partitions"]
    _pending(catalog, [date(2024, 3, 2)])
    assert table_locations(catalog) != locations  # a write moves the table's metadata
