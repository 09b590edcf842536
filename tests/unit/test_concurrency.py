"""Concurrent writers on the embedded profile: no lost commit, no duplicate, no silent merge.

Every ingest reads the deterministic simulator over loopback and writes a real embedded
lakehouse. What lands is compared row for row with a single-threaded reference ingest of
the same days into a separate catalog (same run id and ingest time, so rows are equal).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo, Reference
from pyiceberg.expressions.literals import literal

from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import BranchConflict, BranchNotFound
from tasks.ingest import WINDOW_TABLES, WindowReport, ingest_window
from tasks.lakehouse import read_table, replace_rows, site_window
from tasks.nightscout import NightscoutClient
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext
from tasks.simulator import SimulatorServer, SiteConfig
from tasks.tables import RAW_TABLES, TableLayout

NOW = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
SITE = SiteConfig("a", seed=7)
RUN_ID = "run-concurrency"
DAYS = [datetime(2024, 4, 1, tzinfo=UTC) + timedelta(days=i) for i in range(8)]
ONE_DAY = timedelta(days=1)
BRANCH = "run-concurrency"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=12) as server:
        yield server


def _ingest(sim_url: str, catalog: Catalog, start: datetime, end: datetime,
            tables: tuple[str, ...] = WINDOW_TABLES) -> WindowReport:
    ctx = ShapeContext(SITE.site_id, "UTC", start, end, RUN_ID, NOW)
    with NightscoutClient(NightscoutSettings(sim_url, SITE.site_id)) as client:
        return ingest_window(client, catalog, ctx, tables=tables)


@pytest.fixture(scope="module")
def reference(sim: SimulatorServer, tmp_path_factory: pytest.TempPathFactory,
              ) -> dict[str, pl.DataFrame]:
    """Every table after ingesting all of DAYS as one window, in one thread, into its own
    catalog."""
    home = tmp_path_factory.mktemp("reference")
    catalog = EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse").catalog("main")
    _ingest(sim.url_for(SITE.site_id), catalog, DAYS[0], DAYS[-1] + ONE_DAY)
    return _tables(catalog)


def _tables(catalog: Catalog, tables: tuple[str, ...] = WINDOW_TABLES,
            ) -> dict[str, pl.DataFrame]:
    names = [RAW_TABLES[t].identifier for t in tables] + ["audit.ingest_log"]
    return {name: read_table(catalog, name) for name in names}


def _window(name: str, frame: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    if name == "audit.ingest_log":
        return frame.filter(pl.col("window_date").is_between(start.date(), end.date(),
                                                             closed="left"))
    at = pl.col(RAW_TABLES[name.removeprefix("raw.")].time_column)
    return frame.filter(at.is_between(start, end, closed="left"))


def _assert_matches_reference(landed: dict[str, pl.DataFrame],
                              reference: dict[str, pl.DataFrame],
                              start: datetime, end: datetime) -> int:
    """Each raw table in ``landed`` holds exactly the reference's rows of [start, end),
    each once, and the ingest log one row per table and day, as the reference's.

    Returns the number of raw rows compared.
    """
    compared = 0
    names = [n for n in WINDOW_TABLES if RAW_TABLES[n].identifier in landed]
    for name in names:
        table = RAW_TABLES[name]
        got, want = landed[table.identifier], _window(table.identifier,
                                                      reference[table.identifier], start, end)
        ids = got.get_column(table.id_column)
        assert ids.n_unique() == ids.len(), f"{name}: a row landed twice"
        assert want.height > 0
        assert_frame_equal(got.sort(table.id_column), want.sort(table.id_column))
        compared += got.height
    log = landed["audit.ingest_log"]
    days = (end - start).days
    assert log.select("table_name", "window_date").n_unique() == log.height
    assert log.height == len(names) * days
    keys = ["table_name", "window_date"]
    want_log = _window("audit.ingest_log", reference["audit.ingest_log"], start, end)
    assert_frame_equal(log.sort(keys),
                       want_log.filter(pl.col("table_name").is_in(names)).sort(keys))
    return compared


def _per_day(frame: pl.DataFrame, name: str) -> dict[Any, int]:
    at = pl.col(RAW_TABLES[name].time_column).dt.date()
    counts = frame.group_by(at.alias("day")).len()
    return dict(counts.iter_rows())


def _run_together(jobs: Sequence[Callable[[], WindowReport]],
                  ) -> tuple[list[WindowReport], list[tuple[float, float]]]:
    """Run ``jobs`` in as many threads, released at once; return reports and (start, end)."""
    barrier = threading.Barrier(len(jobs))

    def timed(job: Callable[[], WindowReport]) -> tuple[WindowReport, tuple[float, float]]:
        barrier.wait(timeout=60)
        began = time.monotonic()
        report = job()
        return report, (began, time.monotonic())

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        done = list(pool.map(timed, jobs))
    return [r for r, _ in done], [span for _, span in done]


def _overlapped(spans: list[tuple[float, float]]) -> bool:
    """Whether every writer was still running when the last one started."""
    return max(s for s, _ in spans) < min(e for _, e in spans)


def test_eight_threads_writing_one_branch_lose_and_duplicate_nothing(
    sim: SimulatorServer, reference: dict[str, pl.DataFrame], tmp_path: Path,
) -> None:
    branches = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    branches.create_branch(BRANCH)
    catalog = branches.catalog(BRANCH)
    url = sim.url_for(SITE.site_id)
    jobs = [functools.partial(_ingest, url, catalog, day, day + ONE_DAY) for day in DAYS]

    reports, spans = _run_together(jobs)

    assert _overlapped(spans), "the writers did not run concurrently"
    landed = _tables(catalog)
    assert _assert_matches_reference(landed, reference, DAYS[0], DAYS[-1] + ONE_DAY) > 4000
    for name in WINDOW_TABLES:
        frame = landed[RAW_TABLES[name].identifier]
        per_day = _per_day(frame, name)
        assert per_day == {r.start.date(): r.tables[name].committed for r in reports}
        assert frame.height == sum(r.tables[name].committed for r in reports)
    assert branches.ref("main").hash != branches.ref(BRANCH).hash
    assert not branches.catalog("main").table_exists("raw.entries")  # only the branch moved


# ---------------------------------------------------------------- separate processes

# Writer processes come from a fork server: a clean process, started once with the heavy
# modules preloaded, that forks each writer. Forking this test process instead would copy
# the locks of the threads earlier tests left running (Prefect's, the simulator's, Polars'
# pool) with nobody to release them in the child.
_FORK = multiprocessing.get_context("forkserver")
_FORK.set_forkserver_preload(["pyarrow.dataset", "pyarrow.parquet", "pyiceberg.io.pyarrow",
                              "pandera.strategies", "sqlite3", "polars", "tasks.ingest"])
_WRITERS = 4
_barrier: Any = None


def _join_barrier(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


@pytest.fixture(scope="module")
def writer_processes() -> Iterator[Any]:
    """A pool of writer processes, each forked from the fork server."""
    barrier = _FORK.Barrier(_WRITERS)
    with _FORK.Pool(_WRITERS, initializer=_join_barrier, initargs=(barrier,)) as pool:
        yield pool


class _ConflictCounter(logging.Handler):
    """Counts the commit conflicts a writer retried (to report, not to assert: whether
    writers collide is up to the scheduler)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += record.getMessage().startswith("commit conflict")


def _ingest_in_process(home: Path, url: str, day: datetime,
                       ) -> tuple[int, WindowReport, tuple[float, float], int]:
    """One writer: waits for all four (so each runs in its own process), then ingests."""
    branches = EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse")
    conflicts = _ConflictCounter()
    lakehouse_log = logging.getLogger("cascade.lakehouse")
    lakehouse_log.setLevel(logging.INFO)
    lakehouse_log.addHandler(conflicts)
    _barrier.wait(timeout=120)
    began = time.monotonic()
    try:
        report = _ingest(url, branches.catalog(BRANCH), day, day + ONE_DAY, ("entries",))
    finally:
        lakehouse_log.removeHandler(conflicts)
    return os.getpid(), report, (began, time.monotonic()), conflicts.seen


def test_four_processes_writing_one_catalog_lose_and_duplicate_nothing(
    sim: SimulatorServer, reference: dict[str, pl.DataFrame], tmp_path: Path,
    writer_processes: Any,
) -> None:
    branches = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    branches.create_branch(BRANCH)
    days, url = DAYS[:_WRITERS], sim.url_for(SITE.site_id)

    outcomes = writer_processes.starmap_async(
        _ingest_in_process, [(tmp_path, url, day) for day in days], chunksize=1,
    ).get(timeout=240)

    assert len({pid for pid, *_ in outcomes} - {os.getpid()}) == _WRITERS
    assert _overlapped([span for _, _, span, _ in outcomes]), "the writers did not overlap"
    print(f"\ncommit conflicts retried across processes: {sum(o[3] for o in outcomes)}")
    landed = _tables(branches.catalog(BRANCH), ("entries",))
    assert _assert_matches_reference(landed, reference, days[0], days[-1] + ONE_DAY) > 1000
    reports = [report for _, report, *_ in outcomes]
    assert _per_day(landed["raw.entries"], "entries") == {
        r.start.date(): r.tables["entries"].committed for r in reports}


# ---------------------------------------------------------------- overlapping windows


def test_overlapping_windows_at_once_land_each_reading_once(
    sim: SimulatorServer, reference: dict[str, pl.DataFrame], tmp_path: Path,
) -> None:
    branches = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    branches.create_branch(BRANCH)
    catalog = branches.catalog(BRANCH)
    url = sim.url_for(SITE.site_id)
    first, second = (DAYS[1], DAYS[4]), (DAYS[2], DAYS[5])  # days 1-3 and days 2-4

    reports, spans = _run_together([lambda: _ingest(url, catalog, *first),
                                    lambda: _ingest(url, catalog, *second)])

    assert _overlapped(spans), "the two windows were not ingested at the same time"
    landed = _tables(catalog)
    assert _assert_matches_reference(landed, reference, DAYS[1], DAYS[5]) > 2000
    both = _per_day(landed["raw.entries"], "entries")
    assert sorted(both) == [d.date() for d in DAYS[1:5]]
    assert all(r.tables["entries"].committed > 3 * 250 for r in reports)
    assert landed["raw.entries"].height < sum(r.tables["entries"].committed for r in reports)


# ---------------------------------------------------------------- manual commit to main

NOTES = TableLayout("ops.manual_notes", pl.Schema({"site_id": pl.String(),
                                                   "note": pl.String()}), None, "")


def _delete_one_reading(catalog: Catalog) -> None:
    """Someone fixes main by hand: deletes one of day 0's readings."""
    table = catalog.load_table("raw.entries")
    victim = read_table(catalog, "raw.entries").get_column("entry_id").sort()[0]
    table.delete(EqualTo(term=Reference("entry_id"), value=literal(victim)))


def _add_a_note(catalog: Catalog) -> None:
    """Someone writes a table the run never touches, straight on main."""
    replace_rows(catalog, NOTES, pl.DataFrame({"site_id": ["a"], "note": ["sensor swap"]}),
                 site_window(NOTES, "a"))


def _main_state(branches: EmbeddedBranchCatalog) -> tuple[str, dict[str, pl.DataFrame]]:
    catalog = branches.catalog("main")
    names = [".".join(t) for ns in catalog.list_namespaces() for t in catalog.list_tables(ns)]
    return branches.ref("main").hash, {n: read_table(catalog, n) for n in sorted(names)}


@pytest.fixture
def run_in_progress(sim: SimulatorServer, tmp_path: Path,
                    ) -> tuple[EmbeddedBranchCatalog, str]:
    """Main holds day 0; a run branch forked from it holds day 1 too and has been
    validated: returns the catalog and main's hash as validation saw it."""
    branches = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    url = sim.url_for(SITE.site_id)
    _ingest(url, branches.catalog("main"), DAYS[0], DAYS[1], ("entries",))
    branches.create_branch(BRANCH)
    _ingest(url, branches.catalog(BRANCH), DAYS[1], DAYS[2], ("entries",))
    return branches, branches.ref("main").hash


@pytest.mark.parametrize("manual_commit", [_delete_one_reading, _add_a_note],
                         ids=["same-table-as-the-run", "table-the-run-never-touches"])
def test_manual_commit_to_main_during_a_run_refuses_the_merge(
    run_in_progress: tuple[EmbeddedBranchCatalog, str],
    manual_commit: Callable[[Catalog], None],
) -> None:
    branches, validated_main = run_in_progress
    branch_before = branches.ref(BRANCH).hash
    manual_commit(branches.catalog("main"))
    after_manual = _main_state(branches)
    assert after_manual[0] != validated_main

    with pytest.raises(BranchConflict, match="moved since it was checked"):
        branches.merge(BRANCH, expected_hash=validated_main, tag="promoted-concurrency")

    hash_now, tables_now = _main_state(branches)
    assert hash_now == after_manual[0]
    assert tables_now.keys() == after_manual[1].keys()
    for name, frame in after_manual[1].items():
        assert_frame_equal(tables_now[name], frame)
    entries_on_main = tables_now["raw.entries"].get_column("entry_at").dt.date()
    assert set(entries_on_main) == {DAYS[0].date()}  # none of the run's day 1 landed
    with pytest.raises(BranchNotFound):
        branches.ref("promoted-concurrency")  # the tag went with the refused merge
    assert branches.ref(BRANCH).hash == branch_before  # the run can re-validate and retry


def test_merge_with_the_validated_hash_succeeds_when_main_did_not_move(
    run_in_progress: tuple[EmbeddedBranchCatalog, str],
) -> None:
    branches, validated_main = run_in_progress
    on_branch = _tables(branches.catalog(BRANCH), ("entries",))

    result = branches.merge(BRANCH, expected_hash=validated_main)

    assert result.hash_before == validated_main
    assert branches.ref("main").hash == result.hash_after != validated_main
    on_main = _tables(branches.catalog("main"), ("entries",))
    for name, frame in on_branch.items():
        assert_frame_equal(on_main[name], frame)
    days = set(on_main["raw.entries"].get_column("entry_at").dt.date())
    assert days == {DAYS[0].date(), DAYS[1].date()}
