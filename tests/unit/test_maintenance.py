"""Retention and recovery on the embedded lakehouse: expiry, orphan cleanup, backup, restore."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import CascadeError
from tasks.lakehouse import read_table, replace_rows, site_window
from tasks.maintenance import (
    BackupError,
    MaintenanceError,
    MaintenanceNotSupported,
    backup_lakehouse,
    expire_snapshots,
    live_files,
    remove_orphan_files,
    restore_lakehouse,
)
from tasks.query import open_ref
from tasks.tables import TableLayout

TABLE = "raw.readings"
LAYOUT = TableLayout(TABLE, pl.Schema({"site_id": pl.String(), "reading_id": pl.Int64(),
                                       "glucose_mg_dl": pl.Int64()}), None, "")
NOW = timedelta(0)


@pytest.fixture
def branches(tmp_path: Path) -> EmbeddedBranchCatalog:
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")


def _commit(branches: EmbeddedBranchCatalog, ref: str, glucose: list[int]) -> int:
    """Replace site a's rows on ``ref`` with ``glucose``; return the snapshot id written."""
    rows = pl.DataFrame({"site_id": "a", "reading_id": range(len(glucose)),
                         "glucose_mg_dl": glucose})
    snapshot = replace_rows(branches.catalog(ref), LAYOUT, rows, site_window(LAYOUT, "a"))
    assert snapshot is not None
    return snapshot


def _glucose(
    branches: EmbeddedBranchCatalog, ref: str, snapshot_id: int | None = None
) -> list[int]:
    table = branches.catalog(ref).load_table(TABLE)
    frame = pl.from_arrow(table.scan(snapshot_id=snapshot_id).to_arrow())
    assert isinstance(frame, pl.DataFrame)
    return sorted(frame.get_column("glucose_mg_dl").to_list())


def _files(branches: EmbeddedBranchCatalog) -> dict[str, tuple[int, float]]:
    """Every file under the warehouse: real path → (size, mtime)."""
    out = {}
    for directory, _dirs, names in os.walk(os.path.realpath(branches.warehouse)):
        for name in names:
            stat = os.stat(os.path.join(directory, name))
            out[os.path.join(directory, name)] = (stat.st_size, stat.st_mtime)
    return out


def _age(branches: EmbeddedBranchCatalog, hours: float = 2) -> None:
    """Make every warehouse file look ``hours`` old, as if the writes happened earlier."""
    then = time.time() - hours * 3600
    for path in _files(branches):
        os.utime(path, (then, then))


def _reached_by(branches: EmbeddedBranchCatalog, ref: str) -> set[str]:
    """The files one ref needs, read straight from its table: metadata, lists, manifests, data."""
    table = branches.catalog(ref).load_table(TABLE)
    paths = {table.metadata_location}
    for snapshot in table.metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            paths.add(manifest.manifest_path)
            paths |= {e.data_file.file_path
                      for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False)}
    return {os.path.realpath(p.removeprefix("file://")) for p in paths}


def _append_ids(branches: EmbeddedBranchCatalog, ref: str) -> list[int]:
    """Ids of the append snapshots in the ref's table metadata, oldest first."""
    table = branches.catalog(ref).load_table(TABLE)
    return [s.snapshot_id for s in table.metadata.snapshots
            if s.summary is not None and s.summary.operation.value == "append"]


def test_expiry_and_cleanup_remove_old_snapshots_and_their_files(
    branches: EmbeddedBranchCatalog,
) -> None:
    for value in (100, 110, 120, 130):
        _commit(branches, "main", [value, value + 1])
    assert len(branches.catalog("main").load_table(TABLE).metadata.snapshots) == 7

    expiry = expire_snapshots(branches, retain=NOW, keep_last=1)
    _age(branches)
    before = _files(branches)
    orphans = remove_orphan_files(branches)

    main = branches.catalog("main").load_table(TABLE)
    assert expiry.snapshots_expired == 6 and len(main.metadata.snapshots) == 1
    remaining = _files(branches)
    # one metadata file, one manifest list, one manifest, one data file
    assert set(remaining) == live_files(branches) == _reached_by(branches, "main")
    assert len(remaining) == 4
    assert sum(p.endswith(".parquet") for p in remaining) == 1
    assert orphans.deleted == len(before) - 4 == len(set(before) - set(remaining))
    assert orphans.deleted_bytes == sum(before[p][0] for p in orphans.paths)
    assert orphans.live == 4 and orphans.young == 0 and orphans.missing == 0
    assert _glucose(branches, "main") == [130, 131]
    duck = open_ref(branches.catalog("main"))
    assert duck.sql("select sum(glucose_mg_dl) from raw.readings").fetchone() == (261,)


def test_files_of_a_live_branch_or_tag_are_never_deleted(branches: EmbeddedBranchCatalog) -> None:
    _commit(branches, "main", [100])
    _commit(branches, "main", [200])
    branches.tag("keep")
    branches.create_branch("dev")
    _commit(branches, "dev", [300, 301])
    _commit(branches, "main", [400])
    doomed = _reached_by(branches, "main")
    _commit(branches, "main", [500])
    needed = _reached_by(branches, "keep") | _reached_by(branches, "dev")
    first_append = _append_ids(branches, "keep")[0]

    expire_snapshots(branches, retain=NOW, keep_last=1)
    _age(branches)
    orphans = remove_orphan_files(branches)

    on_disk = set(_files(branches))
    assert needed <= on_disk
    # main's [400] commit was needed by no branch or tag: its files went
    gone = doomed - needed - _reached_by(branches, "main")
    assert gone and not gone & on_disk and gone <= set(orphans.paths)
    assert _glucose(branches, "keep") == [200]
    assert _glucose(branches, "keep", snapshot_id=first_append) == [100]
    assert _glucose(branches, "dev") == [300, 301]
    assert _glucose(branches, "main") == [500]


def test_a_deleted_branch_leaves_its_files_to_cleanup(branches: EmbeddedBranchCatalog) -> None:
    _commit(branches, "main", [100])
    branches.create_branch("scratch")
    _commit(branches, "scratch", [900])
    scratch_only = _reached_by(branches, "scratch") - _reached_by(branches, "main")
    _age(branches)
    kept = remove_orphan_files(branches)  # removes the table's superseded metadata only
    assert kept.deleted and not scratch_only & set(kept.paths)
    assert scratch_only <= set(_files(branches))

    branches.delete_branch("scratch")
    orphans = remove_orphan_files(branches)

    assert set(orphans.paths) == scratch_only
    assert not scratch_only & set(_files(branches))
    assert _glucose(branches, "main") == [100]


def test_an_unreached_file_younger_than_the_grace_period_is_kept(
    branches: EmbeddedBranchCatalog,
) -> None:
    _commit(branches, "main", [100])
    _age(branches)
    remove_orphan_files(branches)  # the table's superseded metadata
    data = Path(branches.warehouse) / "raw" / "readings" / "data"
    stale, in_flight = data / "stale.parquet", data / "in-flight.parquet"
    stale.write_bytes(b"x" * 10)
    in_flight.write_bytes(b"y" * 20)
    then = time.time() - 61 * 60
    os.utime(stale, (then, then))

    orphans = remove_orphan_files(branches, grace=timedelta(hours=1))

    assert not stale.exists() and in_flight.exists()
    assert (orphans.deleted, orphans.deleted_bytes, orphans.young) == (1, 10, 1)
    assert _glucose(branches, "main") == [100]


def test_dry_run_deletes_nothing_and_reports_what_a_real_run_deletes(
    branches: EmbeddedBranchCatalog,
) -> None:
    for value in (100, 110, 120):
        _commit(branches, "main", [value])
    branches.tag("keep")
    for value in (130, 140):
        _commit(branches, "main", [value])
    _age(branches)
    before = _files(branches)
    pointer = branches.catalog("main").load_table(TABLE).metadata_location

    dry_expiry = expire_snapshots(branches, retain=NOW, keep_last=2, dry_run=True)
    dry = remove_orphan_files(branches, dry_run=True, pending=dry_expiry)

    assert _files(branches) == before
    assert branches.catalog("main").load_table(TABLE).metadata_location == pointer
    expiry = expire_snapshots(branches, retain=NOW, keep_last=2)
    real = remove_orphan_files(branches)
    assert dry_expiry.snapshots_expired == expiry.snapshots_expired == 7
    assert [t.expired for t in dry_expiry.tables] == [t.expired for t in expiry.tables]
    assert dry.deleted == real.deleted > 0
    assert dry.deleted_bytes == real.deleted_bytes > 0
    assert set(dry.paths) == set(real.paths)
    assert pointer in {f"file://{p}" for p in real.paths}  # main's superseded metadata


def test_expiry_waits_for_a_branch_forked_from_mains_current_state(
    branches: EmbeddedBranchCatalog,
) -> None:
    for value in (100, 110, 120):
        _commit(branches, "main", [value])
    branches.create_branch("run-1")
    _commit(branches, "run-1", [130])

    expiry = expire_snapshots(branches, retain=NOW, keep_last=1)

    assert expiry.snapshots_expired == 0 and expiry.deferred == {TABLE: ("run-1",)}
    branches.merge("run-1")  # would raise BranchConflict had main's pointer moved
    branches.delete_branch("run-1")
    assert expire_snapshots(branches, retain=NOW, keep_last=1).snapshots_expired == 6
    assert _glucose(branches, "main") == [130]


def test_cleanup_refuses_when_a_ref_reaches_an_unreadable_file(
    branches: EmbeddedBranchCatalog,
) -> None:
    _commit(branches, "main", [100])
    branches.tag("keep")
    _commit(branches, "main", [200])
    expire_snapshots(branches, retain=NOW, keep_last=1)
    _age(branches)
    tag_metadata = branches.catalog("keep").load_table(TABLE).metadata_location
    Path(tag_metadata.removeprefix("file://")).unlink()
    before = _files(branches)

    with pytest.raises(MaintenanceError, match=re.escape("table raw.readings on keep")):
        remove_orphan_files(branches)
    assert _files(branches) == before


@dataclass
class _StackLake:
    profile: str = "stack"
    branches: object = None

    def describe(self) -> str:
        return "stack lakehouse: Nessie at http://127.0.0.1:19120"


def test_the_stack_profile_is_refused_with_a_pointer_to_nessie_gc() -> None:
    lake = _StackLake()
    for call in (lambda: expire_snapshots(lake),  # type: ignore[arg-type]
                 lambda: remove_orphan_files(lake)):  # type: ignore[arg-type]
        with pytest.raises(MaintenanceNotSupported, match="nessie-gc") as caught:
            call()
        assert isinstance(caught.value, CascadeError)
    with pytest.raises(MaintenanceNotSupported, match="pg_dump"):
        backup_lakehouse(lake, Path("/nonexistent"))  # type: ignore[arg-type]


def test_restore_brings_back_refs_and_time_travel_after_a_bad_change(
    branches: EmbeddedBranchCatalog, tmp_path: Path,
) -> None:
    _commit(branches, "main", [100])
    _commit(branches, "main", [200])
    branches.tag("good")
    _commit(branches, "main", [300])
    expire_snapshots(branches, retain=NOW, keep_last=3)  # keeps [300]'s delete+append, [200]
    older = _append_ids(branches, "main")[0]
    first = _append_ids(branches, "good")[0]
    assert _glucose(branches, "main", snapshot_id=older) == [200]
    backup = backup_lakehouse(branches, tmp_path / "backup")
    assert backup.files == len(live_files(branches)) and backup.refs == 2

    _commit(branches, "main", [666])  # the bad change, then the files it freed are removed
    branches.delete_branch("good")
    expire_snapshots(branches, retain=NOW, keep_last=1)
    _age(branches)
    remove_orphan_files(branches)
    assert not _reached_by_backup(tmp_path / "backup") <= set(_files(branches))

    restored = restore_lakehouse(branches, tmp_path / "backup")

    assert restored.files_copied > 0 and restored.refs == 2
    assert _glucose(branches, "main") == [300]
    assert _glucose(branches, "main", snapshot_id=older) == [200]
    assert _glucose(branches, "good") == [200]
    assert _glucose(branches, "good", snapshot_id=first) == [100]
    assert read_table(branches.catalog("main"), TABLE).height == 1


def _reached_by_backup(backup: Path) -> set[str]:
    """The original warehouse paths of the files a backup holds."""
    import json

    warehouse = json.loads((backup / "cascade-backup.json").read_text())["warehouse"]
    root = backup / "warehouse"
    return {os.path.join(warehouse, os.path.relpath(os.path.join(d, n), root))
            for d, _dirs, names in os.walk(root) for n in names}


def test_backup_and_restore_refuse_unsafe_places(branches: EmbeddedBranchCatalog,
                                                 tmp_path: Path) -> None:
    _commit(branches, "main", [100])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        backup_lakehouse(branches, tmp_path / "full")
    with pytest.raises(BackupError, match="inside the warehouse"):
        backup_lakehouse(branches, branches.warehouse / "backup")
    backup_lakehouse(branches, tmp_path / "backup")
    elsewhere = EmbeddedBranchCatalog(tmp_path / "other" / "catalog.db",
                                      tmp_path / "other" / "warehouse")
    with pytest.raises(BackupError, match="original path"):
        restore_lakehouse(elsewhere, tmp_path / "backup")
