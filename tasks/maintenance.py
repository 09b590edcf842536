"""Retention and recovery of the embedded lakehouse: expire, clean up, back up, restore.

Refs share files. A ref (``main``, a branch, a tag) is a set of table → metadata-file
pointers, and a metadata file reaches manifest lists, manifests and data files. A file is
*live* while a pointer of any ref reaches it. Maintenance only removes what no ref reaches:

* ``expire_snapshots`` drops old snapshots from ``main``'s table metadata with PyIceberg's
  ``table.maintenance.expire_snapshots()`` (which deletes no file). Branches and tags keep
  their own metadata files, so their history is untouched.
* ``remove_orphan_files`` deletes warehouse files that no pointer of any ref reaches and that
  are older than a grace period, so the files of a write still in flight are never touched.
* ``backup_lakehouse`` copies ``catalog.db`` with SQLite's backup API, then every file the
  copied catalog reaches; ``restore_lakehouse`` puts the files back first, then the catalog.

The stack profile is refused with ``MaintenanceNotSupported``: Nessie branches share files
the engine cannot see, so only Nessie's GC tool may delete them (docs/recover.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final, Literal, TypeVar
from urllib.parse import unquote, urlparse

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.serializers import FromInputFile
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot

from tasks.branches import MAIN, EmbeddedBranchCatalog
from tasks.errors import CascadeError, ConfigError
from tasks.profile import Lakehouse

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_KEEP_LAST",
    "DEFAULT_RETAIN",
    "BackupError",
    "BackupReport",
    "ExpiryReport",
    "MaintenanceError",
    "MaintenanceNotSupported",
    "OrphanReport",
    "RestoreReport",
    "TableExpiry",
    "backup_lakehouse",
    "expire_snapshots",
    "live_files",
    "remove_orphan_files",
    "require_embedded",
    "restore_lakehouse",
]

DEFAULT_RETAIN: Final = timedelta(days=7)
# An overwrite (replace_rows) commits two snapshots, a delete and an append: 10 keeps the
# last five commits of a table whatever their age.
DEFAULT_KEEP_LAST: Final = 10
DEFAULT_GRACE: Final = timedelta(hours=1)
_BACKUP_MANIFEST: Final = "cascade-backup.json"
_COMMIT_ATTEMPTS: Final = 3
_T = TypeVar("_T")

_STACK_HINTS: Final = {
    "maintenance": (
        "on the stack, Nessie branches and tags share table files and Nessie creates tables "
        "with gc.enabled=false, so engine-side snapshot expiry or orphan removal would delete "
        "files other Nessie refs still use. Run Nessie's GC tool (nessie-gc: mark live content "
        "over every reference, then sweep) instead: see docs/recover.md"
    ),
    "backup": (
        "on the stack, back up the Nessie database with pg_dump and mirror the warehouse "
        "bucket: see docs/recover.md"
    ),
}


class MaintenanceError(CascadeError):
    """Maintenance stopped before deleting anything it could not prove unused."""


class MaintenanceNotSupported(MaintenanceError):
    """The profile shares files in ways this module cannot see (the stack: Nessie)."""


class BackupError(MaintenanceError):
    """A backup or restore could not be made complete and consistent."""


@dataclass(frozen=True)
class TableExpiry:
    """The snapshots expired (or to expire) from one table of ``main``."""

    table: str
    metadata_location: str  # main's pointer the expiry was planned against
    expired: tuple[int, ...]
    kept: int


@dataclass(frozen=True)
class ExpiryReport:
    """What ``expire_snapshots`` did, or would do on a dry run."""

    dry_run: bool
    older_than: datetime
    keep_last: int
    tables: tuple[TableExpiry, ...]
    deferred: Mapping[str, tuple[str, ...]]  # table → open branches forked from its pointer

    @property
    def snapshots_expired(self) -> int:
        """Snapshots expired (or to expire) over every table."""
        return sum(len(t.expired) for t in self.tables)


@dataclass(frozen=True)
class OrphanReport:
    """What ``remove_orphan_files`` found and deleted (or would delete on a dry run)."""

    dry_run: bool
    scanned: int  # files under the warehouse
    live: int  # of those, reached by some ref
    young: int  # unreached but younger than the grace period: kept
    deleted: int
    deleted_bytes: int
    missing: int  # files a ref reaches that are not on disk
    paths: tuple[str, ...]  # the files deleted (or to delete)


@dataclass(frozen=True)
class BackupReport:
    """A backup directory: ``catalog.db``, the live ``warehouse/`` files and a manifest."""

    path: Path
    warehouse: str
    refs: int
    files: int
    bytes: int
    created_at: str


@dataclass(frozen=True)
class RestoreReport:
    """What ``restore_lakehouse`` put back."""

    source: Path
    refs: int
    files_copied: int
    files_present: int
    bytes_copied: int


@dataclass(frozen=True)
class _Pointer:
    ref: str
    table: str
    location: str


# ----------------------------------------------------------------------- profile


def require_embedded(lake: Lakehouse | EmbeddedBranchCatalog,
                     operation: Literal["maintenance", "backup"] = "maintenance",
                     ) -> EmbeddedBranchCatalog:
    """The embedded branch catalog of ``lake``.

    Raises:
        MaintenanceNotSupported: ``lake`` is not the embedded profile (the stack).
    """
    if isinstance(lake, EmbeddedBranchCatalog):
        return lake
    if lake.profile == "embedded" and isinstance(lake.branches, EmbeddedBranchCatalog):
        return lake.branches
    raise MaintenanceNotSupported(
        f"Cascade does not run {operation} on the {lake.profile} profile "
        f"({lake.describe()}): {_STACK_HINTS[operation]}"
    )


# ----------------------------------------------------------------------- expiry


def expire_snapshots(lake: Lakehouse | EmbeddedBranchCatalog,
                     retain: timedelta = DEFAULT_RETAIN,
                     keep_last: int = DEFAULT_KEEP_LAST,
                     dry_run: bool = False) -> ExpiryReport:
    """Expire snapshots of every table on ``main`` older than ``retain``.

    The last ``keep_last`` snapshots of each table's current history are kept whatever their
    age. A table is left alone (``deferred``) while an open branch was forked from main's
    current pointer for it: moving that pointer would make the branch's promote conflict.
    Only metadata changes; files are removed afterwards by ``remove_orphan_files``.

    Raises:
        ConfigError: ``keep_last`` is below 1 or ``retain`` is negative.
        MaintenanceNotSupported: ``lake`` is the stack profile.
    """
    branches = require_embedded(lake)
    if keep_last < 1 or retain < timedelta(0):
        raise ConfigError(
            f"keep_last must be at least 1 and retain not negative (got {keep_last}, {retain})"
        )
    older_than = datetime.now(UTC) - retain
    forks = _open_forks(branches.catalog_path)
    catalog = branches.catalog(MAIN)
    done: list[TableExpiry] = []
    deferred: dict[str, tuple[str, ...]] = {}
    for pointer in _read_pointers(branches.catalog_path, ref=MAIN):
        result = _expire_table(catalog, pointer.table, older_than, keep_last, dry_run, forks)
        if isinstance(result, TableExpiry):
            done.append(result)
        elif result:
            deferred[pointer.table] = result
    return ExpiryReport(dry_run, older_than, keep_last, tuple(done), deferred)


def _expire_table(catalog: Catalog, name: str, older_than: datetime, keep_last: int,
                  dry_run: bool, forks: Mapping[tuple[str, str], tuple[str, ...]],
                  ) -> TableExpiry | tuple[str, ...]:
    """Expire one table; return what was expired, or the branches that defer it."""
    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        table = catalog.load_table(name)
        ids = _expirable(table.metadata, older_than, keep_last)
        if not ids:
            return ()
        waiting = forks.get((name, table.metadata_location), ())
        if waiting:
            return waiting
        planned = TableExpiry(name, table.metadata_location, ids,
                              len(table.metadata.snapshots) - len(ids))
        if dry_run:
            return planned
        try:
            table.maintenance.expire_snapshots().by_ids(list(ids)).commit()
        except CommitFailedException:
            if attempt == _COMMIT_ATTEMPTS:
                raise
            continue
        return planned
    return ()


def _expirable(metadata: TableMetadata, older_than: datetime,
               keep_last: int) -> tuple[int, ...]:
    """Snapshot ids older than ``older_than``, minus the last ``keep_last`` of the current
    history and every snapshot a table-level ref (the current one) points at."""
    keep = set(_history(metadata)[:keep_last])
    keep |= {ref.snapshot_id for ref in metadata.refs.values()}
    cutoff_ms = int(older_than.timestamp() * 1000)
    return tuple(s.snapshot_id for s in metadata.snapshots
                 if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep)


def _history(metadata: TableMetadata) -> list[int]:
    """The current snapshot and its ancestors, newest first."""
    out: list[int] = []
    snapshot_id = metadata.current_snapshot_id
    while snapshot_id is not None and snapshot_id not in out:
        snapshot = metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            break
        out.append(snapshot_id)
        snapshot_id = snapshot.parent_snapshot_id
    return out


# ----------------------------------------------------------------------- orphans


def remove_orphan_files(lake: Lakehouse | EmbeddedBranchCatalog,
                        grace: timedelta = DEFAULT_GRACE,
                        dry_run: bool = False,
                        pending: ExpiryReport | None = None) -> OrphanReport:
    """Delete files under the warehouse that no ref reaches and that are older than ``grace``.

    Every pointer of every ref (main, each branch, each tag) is followed through its
    metadata file, manifest lists and manifests, deleted entries included. The grace period
    is measured before that walk starts, so a file written while it runs is always kept.

    Args:
        lake: the embedded lakehouse (or its branch catalog).
        grace: unreached files younger than this are kept (writes in flight).
        dry_run: report what would be deleted; delete nothing.
        pending: the report of a *dry-run* expiry, so a dry run counts the files the real
            expiry would free; ignored for a real expiry (already applied).

    Raises:
        MaintenanceError: a file some ref reaches could not be read; nothing was deleted.
        MaintenanceNotSupported: ``lake`` is the stack profile.
    """
    branches = require_embedded(lake)
    if grace < timedelta(0):
        raise ConfigError(f"grace must not be negative, got {grace}")
    cutoff = time.time() - grace.total_seconds()
    skip = ({t.metadata_location: frozenset(t.expired) for t in pending.tables}
            if pending is not None and pending.dry_run else {})
    live = _live_paths(_read_pointers(branches.catalog_path), skip)
    scanned = young = 0
    seen: set[str] = set()
    orphans: list[tuple[str, int]] = []
    for path, size, mtime in _walk(branches.warehouse):
        scanned += 1
        seen.add(path)
        if path in live:
            continue
        if mtime >= cutoff:
            young += 1
        else:
            orphans.append((path, size))
    if not dry_run:
        for path, _size in orphans:
            Path(path).unlink(missing_ok=True)
    root = os.path.realpath(branches.warehouse) + os.sep
    missing = sum(1 for p in live if p.startswith(root) and p not in seen)
    return OrphanReport(dry_run, scanned, len(live & seen), young, len(orphans),
                        sum(size for _, size in orphans), missing,
                        tuple(path for path, _ in orphans))


def live_files(lake: Lakehouse | EmbeddedBranchCatalog) -> set[str]:
    """Real paths of every file a pointer of any ref reaches (metadata to data files)."""
    return _live_paths(_read_pointers(require_embedded(lake).catalog_path), {})


def _live_paths(pointers: list[_Pointer], skip: Mapping[str, frozenset[int]]) -> set[str]:
    """Files reached by ``pointers``. ``skip`` (dry runs) maps main's metadata locations to
    the snapshots a real expiry would drop; such a metadata file would be superseded."""
    walker = _Reachable(PyArrowFileIO())
    for pointer in pointers:
        planned = skip.get(pointer.location) if pointer.ref == MAIN else None
        where = f"table {pointer.table} on {pointer.ref}"
        if planned is None:
            walker.add_metadata(pointer.location, where)
        else:
            walker.add_metadata(pointer.location, where, planned, include_self=False)
    return walker.paths


class _Reachable:
    """Collects the local real paths reachable from metadata files, reading each file once."""

    def __init__(self, io: FileIO) -> None:
        self._io = io
        self.paths: set[str] = set()
        self._metadata: dict[str, TableMetadata] = {}
        self._read: set[str] = set()

    def add_metadata(self, location: str, where: str, skip: frozenset[int] = frozenset(),
                     include_self: bool = True) -> None:
        metadata = self._metadata.get(location)
        if metadata is None:
            metadata = self._guard(
                where, location,
                lambda: FromInputFile.table_metadata(self._io.new_input(location)))
            self._metadata[location] = metadata
        if include_self:
            self._add(location)
        for stats in (*metadata.statistics, *metadata.partition_statistics):
            self._add(stats.statistics_path)
        for snapshot in metadata.snapshots:
            if snapshot.snapshot_id not in skip:
                self._add_snapshot(snapshot, f"{where}, snapshot {snapshot.snapshot_id}")

    def _add_snapshot(self, snapshot: Snapshot, where: str) -> None:
        if snapshot.manifest_list in self._read:
            return
        manifests = self._guard(where, snapshot.manifest_list,
                                lambda: snapshot.manifests(self._io))
        self._read.add(snapshot.manifest_list)
        self._add(snapshot.manifest_list)
        for manifest in manifests:
            if manifest.manifest_path in self._read:
                continue
            read = partial(manifest.fetch_manifest_entry, self._io, discard_deleted=False)
            entries = self._guard(where, manifest.manifest_path, read)
            self._read.add(manifest.manifest_path)
            self._add(manifest.manifest_path)
            for entry in entries:
                self._add(entry.data_file.file_path)

    def _add(self, location: str) -> None:
        path = _local_path(location)
        if path is not None:
            self.paths.add(path)

    @staticmethod
    def _guard(where: str, location: str, read: Callable[[], _T]) -> _T:
        try:
            return read()
        except (OSError, ValueError) as exc:
            raise MaintenanceError(
                f"cannot read {location} ({where}): {exc}. Nothing was deleted: every file a "
                "ref reaches must be readable before anything is removed; restore the file "
                "from a backup, or delete the ref that needs it"
            ) from exc


def _local_path(location: str) -> str | None:
    """The real local path of a ``file://`` URI or plain path; None for remote locations."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return None
    return os.path.realpath(unquote(parsed.path) if parsed.scheme else location)


def _walk(root: Path) -> Iterator[tuple[str, int, float]]:
    """(real path, size, mtime) of every file under ``root``."""
    for directory, _dirs, names in os.walk(os.path.realpath(root)):
        for name in names:
            path = os.path.join(directory, name)
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue
            yield path, stat.st_size, stat.st_mtime


# ----------------------------------------------------------------------- catalog rows


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise MaintenanceError(f"no catalog database at {path}")
    return sqlite3.connect(path, timeout=60)


def _read_pointers(catalog_path: Path, ref: str | None = None) -> list[_Pointer]:
    """Every (ref, table) → metadata pointer in the catalog (of one ref when given)."""
    query = ("select catalog_name, table_namespace, table_name, metadata_location "
             "from iceberg_tables where metadata_location is not null")
    with closing(_connect(catalog_path)) as conn:
        rows = conn.execute(query).fetchall()
    pointers = [_Pointer(r, f"{ns}.{t}", loc) for r, ns, t, loc in rows]
    return sorted((p for p in pointers if ref is None or p.ref == ref),
                  key=lambda p: (p.ref, p.table))


def _open_forks(catalog_path: Path) -> dict[tuple[str, str], tuple[str, ...]]:
    """(table, metadata location) → open branches whose base for that table is it."""
    query = ("select b.ref, b.table_namespace, b.table_name, b.metadata_location "
             "from cascade_ref_base b join cascade_refs r on r.name = b.ref "
             "where r.kind = 'branch' and b.ref != ? and b.metadata_location is not null")
    with closing(_connect(catalog_path)) as conn:
        rows = conn.execute(query, (MAIN,)).fetchall()
    forks: dict[tuple[str, str], list[str]] = {}
    for ref, ns, name, location in rows:
        forks.setdefault((f"{ns}.{name}", location), []).append(ref)
    return {key: tuple(sorted(refs)) for key, refs in forks.items()}


def _count_refs(catalog_path: Path) -> int:
    with closing(_connect(catalog_path)) as conn:
        return int(conn.execute("select count(*) from cascade_refs").fetchone()[0])


def _copy_database(source: Path, target: Path) -> None:
    """Copy a SQLite database with its backup API: consistent while writers run, WAL included."""
    with closing(_connect(source)) as src, closing(sqlite3.connect(target, timeout=60)) as dst:
        src.backup(dst)


# ----------------------------------------------------------------------- backup / restore


def backup_lakehouse(lake: Lakehouse | EmbeddedBranchCatalog,
                     destination: Path) -> BackupReport:
    """Back up the catalog and every file it reaches into the new directory ``destination``.

    The catalog is copied first (SQLite backup API, safe while flows run), then every file
    the *copy* reaches, so the backup never points at a file it lacks. Do not run
    ``remove_orphan_files`` at the same time: a file it deletes mid-copy fails the backup.

    Raises:
        BackupError: ``destination`` is not empty or lies in the warehouse, or a file the
            copied catalog reaches could not be copied.
        MaintenanceError: a file some ref reaches could not be read.
        MaintenanceNotSupported: ``lake`` is the stack profile.
    """
    branches = require_embedded(lake, "backup")
    warehouse = os.path.realpath(branches.warehouse)
    destination = Path(os.path.realpath(destination))
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"backup directory {destination} is not empty: use a new directory")
    if destination.is_relative_to(warehouse):
        raise BackupError(f"backup directory {destination} is inside the warehouse {warehouse}, "
                          "where orphan cleanup would delete it: choose another directory")
    destination.mkdir(parents=True, exist_ok=True)
    catalog = destination / "catalog.db"
    _copy_database(branches.catalog_path, catalog)
    files = total = 0
    for path in sorted(_live_paths(_read_pointers(catalog), {})):
        total += _copy_file(path, destination / "warehouse" / _inside(path, warehouse))
        files += 1
    report = BackupReport(destination, warehouse, _count_refs(catalog), files, total,
                          datetime.now(UTC).isoformat(timespec="seconds"))
    manifest = {"warehouse": warehouse, "catalog": str(branches.catalog_path),
                "refs": report.refs, "files": files, "bytes": total,
                "created_at": report.created_at}
    (destination / _BACKUP_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return report


def restore_lakehouse(lake: Lakehouse | EmbeddedBranchCatalog, source: Path) -> RestoreReport:
    """Restore a backup made by ``backup_lakehouse`` into the same lakehouse path.

    Files first (only those missing, since Iceberg never rewrites a file), then the catalog,
    through SQLite's backup API into the live database, so ``catalog.db-wal`` cannot
    resurrect later commits. Every ref then reads as it did when the backup was taken;
    changes made since are dropped. Run it while no flow runs.

    Raises:
        BackupError: ``source`` is not a backup, was taken of a lakehouse at another path,
            or the restored catalog reaches a missing file.
        MaintenanceNotSupported: ``lake`` is the stack profile.
    """
    branches = require_embedded(lake, "backup")
    source = Path(os.path.realpath(source))
    manifest = _read_backup_manifest(source)
    warehouse = os.path.realpath(branches.warehouse)
    if manifest["warehouse"] != warehouse:
        raise BackupError(
            f"the backup in {source} is of a lakehouse whose warehouse was "
            f"{manifest['warehouse']}, not {warehouse}: the catalog stores absolute file "
            "locations, so restore it with CASCADE_HOME at the original path"
        )
    copied = present = total = 0
    backup_warehouse = source / "warehouse"
    for path, size, _mtime in _walk(backup_warehouse):
        target = Path(warehouse) / os.path.relpath(path, os.path.realpath(backup_warehouse))
        if target.is_file() and target.stat().st_size == size:
            present += 1
            continue
        total += _copy_file(path, target)
        copied += 1
    _copy_database(source / "catalog.db", branches.catalog_path)
    missing = [p for p in live_files(branches) if not os.path.exists(p)]
    if missing:
        raise BackupError(f"the restored catalog reaches {len(missing)} missing file(s), e.g. "
                          f"{missing[0]}: the backup in {source} is incomplete")
    return RestoreReport(source, _count_refs(branches.catalog_path), copied, present, total)


def _read_backup_manifest(source: Path) -> dict[str, object]:
    path = source / _BACKUP_MANIFEST
    if not path.is_file() or not (source / "catalog.db").is_file():
        raise BackupError(f"{source} is not a Cascade backup (no {_BACKUP_MANIFEST} and "
                          "catalog.db): give the directory backup_lakehouse wrote")
    loaded = json.loads(path.read_text())
    if not isinstance(loaded, dict):
        raise BackupError(f"{path} is not a backup manifest")
    return loaded


def _inside(path: str, root: str) -> str:
    """``path`` relative to ``root``; BackupError when the file lies outside it."""
    if not path.startswith(root + os.sep):
        raise BackupError(f"{path} is reached by the catalog but lies outside the warehouse "
                          f"{root}: this backup covers the warehouse only")
    return os.path.relpath(path, root)


def _copy_file(path: str, target: Path) -> int:
    """Copy ``path`` to ``target`` atomically (temporary name, then rename); return bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        shutil.copy2(path, partial)
    except FileNotFoundError as exc:
        raise BackupError(f"{path} vanished while it was copied (was orphan cleanup running?): "
                          "run the backup again") from exc
    os.replace(partial, target)
    return target.stat().st_size
