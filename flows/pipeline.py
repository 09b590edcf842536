"""Parent flows: ``backfill`` a date range and ``daily``, each on one run branch.

Both run the whole write-audit-publish chain: ingest partitions concurrently onto a
fresh branch, build it with dbt, validate it, promote it atomically into main, publish
the marts. A failure at any step leaves main untouched and the branch kept.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows._mapping import bounded_submit
from flows.build_branch import build_branch
from flows.promote import promote
from flows.publish import publish
from flows.validate import validate
from tasks.branches import ensure_branch_task
from tasks.errors import BranchConflict, CascadeError
from tasks.ingest import WindowReport, ingest_profile_task, ingest_window_task, utc_midnight
from tasks.runtime import (
    current_lakehouse,
    current_run_id,
    day_windows,
    require_source,
    run_branch_name,
)
from tasks.settings import load_lakehouse_settings

MAX_CONCURRENCY = 16
PROMOTE_ATTEMPTS = 3


@flow(
    name="backfill",
    flow_run_name="backfill {start}..{end}",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
)
def backfill(
    start: date,
    end: date,
    branch: str | None = None,
    site_block: str | None = None,
    chunk_days: int = 30,
    max_concurrency: int = 2,
    max_reject_ratio: float = 0.05,
    promote_to_main: bool = True,
    dbt_node_tasks: bool = True,
) -> dict[str, object]:
    """Ingest the inclusive UTC day range ``[start, end]`` onto a run branch, then build,
    validate, promote and publish it.

    Args:
        start: first UTC day.
        end: last UTC day (inclusive).
        branch: target branch; default a new ``run-backfill-…`` branch from main.
        site_block: a ``nightscout-site`` block name; default from the environment.
        chunk_days: days per partition (one task run and one commit per table each).
        max_concurrency: partitions in flight at once (at most 16).
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
        promote_to_main: run build → validate → promote → publish after ingestion; with
            False, stop after ingestion and leave the branch for inspection.
        dbt_node_tasks: one Prefect task run per dbt node (False: plain, faster dbt).
    """
    def ingest(target: str | None) -> dict[str, object]:
        return _ingest_range(start, end, target, site_block, chunk_days, max_concurrency,
                             max_reject_ratio)

    ingested = ingest(branch)
    if not promote_to_main:
        return ingested
    return _write_audit_publish(ingested, ingest if branch is None else None, dbt_node_tasks)


def _write_audit_publish(
    ingested: dict[str, object],
    redo: Callable[[str | None], dict[str, object]] | None,
    dbt_node_tasks: bool = True,
) -> dict[str, object]:
    """build → validate → promote → publish; raises (main untouched) if any step fails.

    When main moved under the branch (another run promoted first), the branch is stale:
    with ``redo``, its range is ingested again onto a fresh branch from the new main
    (ingestion is idempotent) and the chain re-runs, up to ``PROMOTE_ATTEMPTS`` times.
    """
    logger = get_run_logger()
    for attempt in range(1, PROMOTE_ATTEMPTS + 1):
        branch = str(ingested["branch"])
        build = build_branch(branch, node_tasks=dbt_node_tasks)
        audit = validate(branch)
        try:
            promoted = promote(branch, expected_main_hash=str(audit["main_hash"]))
        except BranchConflict as conflict:
            if redo is None or attempt == PROMOTE_ATTEMPTS:
                raise
            logger.warning("main moved under %s (%s); attempt %d of %d: redoing its range on "
                           "a fresh branch from main", branch, conflict, attempt + 1,
                           PROMOTE_ATTEMPTS)
            current_lakehouse().branches.delete_branch(branch)
            ingested = redo(None)
            continue
        published = publish("main")
        return {**ingested, "build_seconds": build.seconds, "models": len(build.exported),
                "tag": promoted["tag"], "main": promoted["main_after"],
                "published": published["rows"], "reports": published["reports"],
                "promote_attempts": attempt}
    raise AssertionError("unreachable")  # the loop returns or raises


def _ingest_range(start: date, end: date, branch: str | None, site_block: str | None,
                  chunk_days: int, max_concurrency: int,
                  max_reject_ratio: float) -> dict[str, object]:
    logger = get_run_logger()
    source = require_source(block_name=site_block)
    run_id = current_run_id()
    branch = ensure_branch_task(branch or run_branch_name("backfill", run_id))
    override = load_lakehouse_settings().timezone_override
    timezone = ingest_profile_task(source, branch, run_id, override)
    windows = day_windows(start, end, chunk_days)
    progress: UUID = create_progress_artifact(  # type: ignore[assignment]
        0.0, key="backfill-progress", description=f"backfill {start}..{end} on {branch}"
    )
    reports: list[WindowReport] = []
    failures: list[str] = []

    def submit(window: tuple[date, date]):  # type: ignore[no-untyped-def]
        lo, hi = window
        return ingest_window_task.submit(source, branch, utc_midnight(lo), utc_midnight(hi),
                                         timezone, run_id, max_reject_ratio)

    limit = min(max(1, max_concurrency), MAX_CONCURRENCY)
    for done, (window, future) in enumerate(bounded_submit(submit, windows, limit), start=1):
        future.wait()
        if future.state.is_completed():
            reports.append(future.result())
        else:
            failures.append(f"{window[0]}..{window[1]}: {future.state.message}")
        update_progress_artifact(progress, 100.0 * done / len(windows))
    committed = sum(r.committed for r in reports)
    logger.info("backfill %s..%s: %d windows, %d rows committed to %s, %d failed",
                start, end, len(windows), committed, branch, len(failures))
    if failures:
        raise CascadeError(
            f"backfill {start}..{end}: {len(failures)} of {len(windows)} windows failed; "
            f"branch {branch} kept for inspection, nothing promoted: " + " | ".join(failures)
        )
    return {"branch": branch, "run_id": run_id, "site_id": source.site_id, "timezone": timezone,
            "windows": len(windows), "committed": committed,
            "tables": _totals(reports)}


def _totals(reports: list[WindowReport]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for report in reports:
        for name, counts in report.tables.items():
            row = totals.setdefault(name, {"fetched": 0, "duplicates": 0, "rejected": 0,
                                           "committed": 0})
            for key in row:
                row[key] += getattr(counts, key)
    return totals


@flow(name="daily", flow_run_name="daily {day}",
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY))  # type: ignore[arg-type]
def daily(day: date | None = None, site_block: str | None = None,
          max_reject_ratio: float = 0.05, dbt_node_tasks: bool = True) -> dict[str, object]:
    """Ingest, build, validate, promote and publish one local day (default: yesterday).

    A local day spans two UTC days, so the UTC days around it are (re-)ingested.
    """
    timezone = _site_timezone(site_block)
    if day is None:
        day = datetime.now(ZoneInfo(timezone)).date() - timedelta(days=1)
    today = datetime.now(UTC).date()
    start, end = day - timedelta(days=1), min(day + timedelta(days=1), today)
    get_run_logger().info("daily %s (%s): UTC days %s..%s", day, timezone, start, end)
    def ingest(target: str | None) -> dict[str, object]:
        return _ingest_range(start, end, target, site_block, 3, 1, max_reject_ratio)

    return {"day": str(day), **_write_audit_publish(ingest(None), ingest, dbt_node_tasks)}


def _site_timezone(site_block: str | None) -> str:
    """The override or the source's configured timezone; UTC until a profile says more."""
    override = load_lakehouse_settings().timezone_override
    if override:
        return override
    source = require_source(block_name=site_block)
    return source.timezone or _main_profile_timezone(source.site_id) or "UTC"


def _main_profile_timezone(site_id: str) -> str | None:
    """The site's timezone as main's profile table knows it (None before the first run)."""
    from pyiceberg.expressions import EqualTo, Reference
    from pyiceberg.expressions.literals import literal

    from tasks.lakehouse import read_table
    from tasks.runtime import current_lakehouse
    from tasks.shaping import profile_timezone

    catalog = current_lakehouse().branches.catalog("main")
    if not catalog.table_exists("raw.profile"):
        return None
    site = EqualTo(term=Reference("site_id"), value=literal(site_id))
    profiles = read_table(catalog, "raw.profile", site)
    return profile_timezone(profiles)
