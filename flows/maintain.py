"""maintain: expire old snapshots on main, then delete the files no branch or tag reaches."""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import timeouts
from tasks.maintenance import (
    DEFAULT_KEEP_LAST,
    ExpiryReport,
    OrphanReport,
    expire_snapshots,
    remove_orphan_files,
    require_embedded,
)
from tasks.profile import Lakehouse, current_profile


@task(name="expire-snapshots", task_run_name="expire snapshots on main", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.MAINTAIN)
def _expire(lake: Lakehouse, retain_days: float, keep_last: int,
            dry_run: bool) -> ExpiryReport:
    return expire_snapshots(lake, timedelta(days=retain_days), keep_last, dry_run)


@task(name="remove-orphan-files", task_run_name="remove orphan files", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.MAINTAIN)
def _remove_orphans(lake: Lakehouse, grace_hours: float, dry_run: bool,
                    expiry: ExpiryReport) -> OrphanReport:
    return remove_orphan_files(lake, timedelta(hours=grace_hours), dry_run, pending=expiry)


@flow(name="maintain", flow_run_name="maintain main",
      timeout_seconds=timeouts.MAINTAIN)
def maintain(retain_days: float = 7, keep_last: int = DEFAULT_KEEP_LAST,
             grace_hours: float = 1, dry_run: bool = False) -> dict[str, object]:
    """Expire main's old snapshots, then delete warehouse files that no ref reaches.

    Embedded profile only: on the stack it raises ``MaintenanceNotSupported`` (run Nessie's
    GC tool there, see docs/recover.md). Branches and tags keep every file they need.

    Args:
        retain_days: expire snapshots of main older than this many days.
        keep_last: keep at least this many of each table's latest snapshots on main
            (an overwrite makes two: a delete and an append).
        grace_hours: keep unreached files younger than this (writes still in flight).
        dry_run: report what would be expired and deleted; change nothing.
    """
    logger = get_run_logger()
    lake = current_profile().lakehouse
    require_embedded(lake)
    expired, deleted = ("would expire", "would delete") if dry_run else ("expired", "deleted")
    expiry = _expire(lake, retain_days, keep_last, dry_run)
    logger.info("main: %s %d snapshots in %d tables (older than %s, last %d kept); "
                "%d tables deferred for open branches", expired, expiry.snapshots_expired,
                len(expiry.tables), expiry.older_than.isoformat(timespec="seconds"),
                keep_last, len(expiry.deferred))
    orphans = _remove_orphans(lake, grace_hours, dry_run, expiry)
    logger.info("warehouse: scanned %d files, %d live, %d younger than %sh kept; %s %d files "
                "(%d bytes)", orphans.scanned, orphans.live, orphans.young, grace_hours,
                deleted, orphans.deleted, orphans.deleted_bytes)
    if orphans.missing:
        logger.warning("%d files reached by a ref are missing from the warehouse: restore "
                       "them from a backup (docs/recover.md)", orphans.missing)
    return {"dry_run": dry_run, "snapshots_expired": expiry.snapshots_expired,
            "tables_expired": [t.table for t in expiry.tables],
            "tables_deferred": dict(expiry.deferred),
            "files_scanned": orphans.scanned, "files_live": orphans.live,
            "files_young": orphans.young, "files_deleted": orphans.deleted,
            "bytes_deleted": orphans.deleted_bytes, "files_missing": orphans.missing}
