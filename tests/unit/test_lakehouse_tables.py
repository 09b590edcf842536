"""Table set-up under concurrent writers: creation with its partition spec, evolution."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pyiceberg.table import Table

from tasks.branches import EmbeddedBranchCatalog
from tasks.lakehouse import ensure_table, read_table, replace_rows, site_window
from tasks.tables import TableLayout

_SCHEMA = pl.Schema({"site_id": pl.String(), "read_at": pl.Datetime("us", "UTC"),
                     "value": pl.Int64()})
LAYOUT = TableLayout("raw.readings", _SCHEMA, "read_at", "read_at")
WIDER = TableLayout("raw.readings", pl.Schema({**_SCHEMA, "unit": pl.String()}), "read_at",
                    "read_at")
_WRITERS = 6


def _branches(home: Path) -> EmbeddedBranchCatalog:
    return EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse")


def _spec(table: Table) -> list[tuple[str, str, str]]:
    """(partition field, transform, source column) of the table's current spec."""
    schema = table.schema()
    return [(f.name, str(f.transform), schema.find_column_name(f.source_id) or "")
            for f in table.spec().fields]


DECLARED = [("site_id", "identity", "site_id"), ("read_at_month", "month", "read_at")]


def _together(jobs: list[Callable[[], object]]) -> list[object]:
    """Run ``jobs`` in as many threads, released at once."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], object]) -> object:
        barrier.wait(timeout=60)
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_first_creation_from_threads_makes_one_partitioned_table(tmp_path: Path) -> None:
    catalog = _branches(tmp_path).catalog("main")

    _together([lambda: ensure_table(catalog, LAYOUT)] * _WRITERS)

    assert catalog.list_tables("raw") == [("raw", "readings")]
    table = catalog.load_table(LAYOUT.identifier)
    assert _spec(table) == DECLARED
    assert len(table.metadata.partition_specs) == 1  # created with its spec, never without


def test_first_writes_from_threads_to_a_new_table_all_land(tmp_path: Path) -> None:
    catalog = _branches(tmp_path).catalog("main")
    at = pl.datetime(2024, 3, 1, time_zone="UTC")

    def write(site: str) -> Callable[[], object]:
        rows = pl.DataFrame({"site_id": [site]}).with_columns(read_at=at, value=pl.lit(1))
        return lambda: replace_rows(catalog, LAYOUT, rows, site_window(LAYOUT, site))

    _together([write(f"s{i}") for i in range(_WRITERS)])

    frame = read_table(catalog, LAYOUT.identifier)
    assert sorted(frame.get_column("site_id")) == [f"s{i}" for i in range(_WRITERS)]
    assert _spec(catalog.load_table(LAYOUT.identifier)) == DECLARED


def test_concurrent_evolution_adds_the_column_once(tmp_path: Path) -> None:
    catalog = _branches(tmp_path).catalog("main")
    ensure_table(catalog, LAYOUT)

    _together([lambda: ensure_table(catalog, WIDER)] * _WRITERS)

    names = [f.name for f in catalog.load_table(LAYOUT.identifier).schema().fields]
    assert names == ["site_id", "read_at", "value", "unit"]


def test_table_left_without_its_spec_gets_it_on_next_use(tmp_path: Path) -> None:
    catalog = _branches(tmp_path).catalog("main")
    catalog.create_namespace("raw")
    catalog.create_table(LAYOUT.identifier, pl.DataFrame(schema=_SCHEMA).to_arrow().schema)

    table = ensure_table(catalog, LAYOUT)

    assert _spec(table) == DECLARED


def test_a_table_partitioned_by_day_keeps_its_spec(tmp_path: Path) -> None:
    """Tables made before month partitioning stay as they are: no second time field."""
    from pyiceberg.transforms import DayTransform, IdentityTransform

    catalog = _branches(tmp_path).catalog("main")
    catalog.create_namespace("raw")
    schema = pl.DataFrame(schema=_SCHEMA).to_arrow().schema
    table = catalog.create_table(LAYOUT.identifier, schema)
    with table.update_spec() as spec:
        spec.add_field("site_id", IdentityTransform(), "site_id")
        spec.add_field("read_at", DayTransform(), "read_at_day")

    assert _spec(ensure_table(catalog, LAYOUT)) == [("site_id", "identity", "site_id"),
                                                    ("read_at_day", "day", "read_at")]


def test_replacing_one_day_inside_a_month_file_keeps_the_other_days(tmp_path: Path) -> None:
    """A 30-day window lands as one file per month; re-ingesting one of its days rewrites
    that file without the day's old rows, and every other day is kept exactly."""
    from datetime import UTC, datetime, timedelta

    catalog = _branches(tmp_path).catalog("main")
    start = datetime(2024, 3, 1, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(30 * 24)]
    month = pl.DataFrame({"site_id": "a", "read_at": hours, "value": 1}, schema=_SCHEMA)
    replace_rows(catalog, LAYOUT, month, site_window(LAYOUT, "a", start, start + timedelta(30)))
    table = catalog.load_table(LAYOUT.identifier)
    assert len(table.inspect.files()) == 1  # one month, one file (not 30)

    day = start + timedelta(days=9)
    again = pl.DataFrame({"site_id": "a", "read_at": [day + timedelta(minutes=5 * i)
                                                       for i in range(288)],
                          "value": 2}, schema=_SCHEMA)
    replace_rows(catalog, LAYOUT, again, site_window(LAYOUT, "a", day, day + timedelta(1)))

    rows = read_table(catalog, LAYOUT.identifier).sort("read_at")
    on_day = rows.filter(pl.col("read_at").dt.date() == day.date())
    assert on_day.get_column("value").unique().to_list() == [2] and on_day.height == 288
    others = rows.filter(pl.col("read_at").dt.date() != day.date())
    expected = month.filter(pl.col("read_at").dt.date() != day.date()).sort("read_at")
    assert others.equals(expected)


# ---------------------------------------------------------------- separate processes

# Writer processes come from a fork server with the heavy modules preloaded, as in
# test_concurrency: forking this process would copy locks held by other tests' threads.
_FORK = multiprocessing.get_context("forkserver")
_FORK.set_forkserver_preload(["pyarrow.dataset", "pyarrow.parquet", "pyiceberg.io.pyarrow",
                              "pandera.strategies", "sqlite3", "polars", "tasks.ingest"])
_barrier: Any = None


def _join_barrier(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def _create_in_process(home: Path) -> list[tuple[str, str, str]]:
    _barrier.wait(timeout=120)
    return _spec(ensure_table(_branches(home).catalog("main"), LAYOUT))


@pytest.fixture(scope="module")
def creator_processes() -> Iterator[Any]:
    barrier = _FORK.Barrier(4)
    with _FORK.Pool(4, initializer=_join_barrier, initargs=(barrier,)) as pool:
        yield pool


def test_first_creation_from_processes_makes_one_partitioned_table(
    tmp_path: Path, creator_processes: Any,
) -> None:
    _branches(tmp_path)  # the catalog database, before the processes race on the table

    specs = creator_processes.map_async(_create_in_process, [tmp_path] * 4,
                                        chunksize=1).get(timeout=240)

    assert specs == [DECLARED] * 4
    catalog = _branches(tmp_path).catalog("main")
    assert catalog.list_tables("raw") == [("raw", "readings")]
    assert len(catalog.load_table(LAYOUT.identifier).metadata.partition_specs) == 1
