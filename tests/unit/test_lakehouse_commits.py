"""replace_rows: one commit per window, appending when nothing is replaced, never duplicating."""

from __future__ import annotations

import logging
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog

from tasks.branches import EmbeddedBranchCatalog
from tasks.lakehouse import read_table, replace_rows, site_window
from tasks.tables import TableLayout

LAYOUT = TableLayout("raw.readings", pl.Schema({"site_id": pl.String(),
                                                "read_at": pl.Datetime("us", "UTC"),
                                                "value": pl.Int64()}), "read_at", "read_at")
DAY = datetime(2024, 3, 1, tzinfo=UTC)
ONE_DAY = timedelta(days=1)


def _branches(home: Path) -> EmbeddedBranchCatalog:
    return EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse")


def _rows(site: str, day: datetime, values: list[int | None]) -> pl.DataFrame:
    at = [day + timedelta(minutes=5 * i) for i in range(len(values))]
    return pl.DataFrame({"site_id": site, "read_at": at, "value": values},
                        schema=LAYOUT.schema)


def _write(catalog: Catalog, site: str, day: datetime, values: list[int | None]) -> int | None:
    return replace_rows(catalog, LAYOUT, _rows(site, day, values),
                        site_window(LAYOUT, site, day, day + ONE_DAY))


def _values(catalog: Catalog, site: str, day: datetime) -> list[int]:
    frame = read_table(catalog, LAYOUT.identifier).filter(
        (pl.col("site_id") == site) & (pl.col("read_at").dt.date() == day.date()))
    return sorted(frame.get_column("value"))


def _operations(catalog: Catalog) -> list[str]:
    table = catalog.load_table(LAYOUT.identifier)
    return [s.summary.operation.value for s in table.snapshots() if s.summary is not None]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return _branches(tmp_path).catalog("main")


def test_a_new_window_is_one_append_snapshot(catalog: Catalog) -> None:
    _write(catalog, "a", DAY, [1, 2])
    _write(catalog, "a", DAY + ONE_DAY, [3])
    _write(catalog, "b", DAY, [4])

    assert _operations(catalog) == ["append", "append", "append"]
    assert read_table(catalog, LAYOUT.identifier).height == 4


def test_rewriting_a_window_replaces_only_that_sites_rows_in_it(catalog: Catalog) -> None:
    _write(catalog, "a", DAY, [1, 2, 3])
    _write(catalog, "a", DAY + ONE_DAY, [4])
    _write(catalog, "b", DAY, [5])

    _write(catalog, "a", DAY, [7])

    assert _values(catalog, "a", DAY) == [7]
    assert _values(catalog, "a", DAY + ONE_DAY) == [4]
    assert _values(catalog, "b", DAY) == [5]
    assert _operations(catalog)[-2:] == ["delete", "append"]


def test_an_empty_window_with_nothing_to_replace_commits_nothing(catalog: Catalog) -> None:
    _write(catalog, "a", DAY, [1])
    before = catalog.load_table(LAYOUT.identifier).current_snapshot()

    assert _write(catalog, "a", DAY + ONE_DAY, []) is None

    assert catalog.load_table(LAYOUT.identifier).current_snapshot() == before


def test_an_empty_window_deletes_what_the_window_held(catalog: Catalog) -> None:
    _write(catalog, "a", DAY, [1, 2])

    _write(catalog, "a", DAY, [])

    assert read_table(catalog, LAYOUT.identifier).height == 0


def test_a_writer_behind_another_process_replans_and_never_duplicates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ours, theirs = _branches(tmp_path).catalog("main"), _branches(tmp_path).catalog("main")
    _write(ours, "a", DAY, [1])  # ours now holds the table as of this commit
    _write(theirs, "a", DAY + ONE_DAY, [2, 3])  # moves the table under ours

    with caplog.at_level(logging.INFO, logger="cascade.lakehouse"):
        _write(ours, "a", DAY + ONE_DAY, [9])  # planned as an append on ours' old snapshot

    assert "commit conflict on raw.readings, retry 1" in caplog.text
    assert _values(theirs, "a", DAY + ONE_DAY) == [9]
    assert _values(theirs, "a", DAY) == [1]


def test_writes_never_warn_or_touch_the_warning_filters(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_thread_safe(*args: object, **kwargs: object) -> None:
        raise AssertionError("warnings.catch_warnings swaps the process-wide filters")

    _write(catalog, "a", DAY, [1])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        monkeypatch.setattr(warnings, "catch_warnings", not_thread_safe)
        _write(catalog, "a", DAY + ONE_DAY, [2])  # nothing to replace
        _write(catalog, "a", DAY, [3])  # replaces day one
        _write(catalog, "b", DAY, [])  # nothing at all
        assert warnings.filters == filters

    assert [str(w.message) for w in seen] == []


def test_data_files_are_the_ones_pyiceberg_would_write(catalog: Catalog) -> None:
    # replace_rows writes files itself (its schema work once per commit, not per file):
    # the files and their statistics must stay what PyIceberg's own writer produces
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    from tasks._pyiceberg import write_data_files
    from tasks.lakehouse import ensure_table

    table = ensure_table(catalog, LAYOUT)
    rows = pl.concat([_rows(s, d, [1, None, 3]) for s in "ab" for d in (DAY, DAY + ONE_DAY)])
    data = rows.to_arrow()

    def described(files: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((str(f.partition), f.record_count, f.value_counts, f.null_value_counts,
                       f.lower_bounds, f.upper_bounds, f.file_path.rsplit("/", 1)[0],
                       pq.read_schema(f.file_path.removeprefix("file://")).to_string())
                      for f in files)

    theirs = list(_dataframe_to_data_files(table.metadata, data, table.io))
    ours = write_data_files(table.metadata, table.io, data, uuid.uuid4())

    assert len(ours) == 2  # two sites, both days in one month partition
    assert described(ours) == described(theirs)


def test_a_commit_never_deep_copies_the_table_history_for_its_own_view(
        catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    # PyIceberg's Transaction.table_metadata deep-copies every snapshot on each read (a
    # dozen reads per commit), which made commits slower the longer a table's history.
    import pyiceberg.table as iceberg_table
    from pyiceberg.table.update import update_table_metadata as real

    for n in range(6):  # some history: appends, then a replace of a day that has rows
        _write(catalog, "a", DAY + n * ONE_DAY, [n])
    table = catalog.load_table(LAYOUT.identifier)
    before = table.metadata.model_dump_json()
    reads: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    # the name Transaction's table_metadata looks up, re-exported from pyiceberg.table.update
    monkeypatch.setattr(iceberg_table, "update_table_metadata", counted)
    _write(catalog, "a", DAY + 2 * ONE_DAY, [20, 21])  # a delete and an append
    _write(catalog, "b", DAY, [7])  # a plain append
    assert reads == []
    assert table.metadata.model_dump_json() == before  # the old metadata was left alone
    assert _values(catalog, "a", DAY + 2 * ONE_DAY) == [20, 21]
    assert _values(catalog, "b", DAY) == [7]
    assert [_values(catalog, "a", DAY + n * ONE_DAY) for n in (0, 1, 3, 4, 5)] == [
        [0], [1], [3], [4], [5]]
    assert _operations(catalog)[-3:] == ["delete", "append", "append"]  # replace, then append
