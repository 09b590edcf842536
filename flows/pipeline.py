"""Parent flows: ``backfill`` a date range (and, later, ``daily``) against one run branch."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows._mapping import bounded_submit
from tasks.branches import ensure_branch_task
from tasks.errors import CascadeError
from tasks.ingest import WindowReport, ingest_profile_task, ingest_window_task, utc_midnight
from tasks.runtime import current_run_id, day_windows, require_source, run_branch_name
from tasks.settings import load_lakehouse_settings

MAX_CONCURRENCY = 16


@flow(
    name="backfill",
    flow_run_name="backfill {start}..{end}",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),
)
def backfill(
    start: date,
    end: date,
    branch: str | None = None,
    site_block: str | None = None,
    chunk_days: int = 30,
    max_concurrency: int = 2,
    max_reject_ratio: float = 0.05,
) -> dict[str, object]:
    """Ingest the inclusive UTC day range ``[start, end]`` onto one run branch.

    Args:
        start: first UTC day.
        end: last UTC day (inclusive).
        branch: target branch; default a new ``run-backfill-…`` branch from main.
        site_block: a ``nightscout-site`` block name; default from the environment.
        chunk_days: days per partition (one task run and one commit per table each).
        max_concurrency: partitions in flight at once (at most 16).
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
    """
    logger = get_run_logger()
    source = require_source(block_name=site_block)
    run_id = current_run_id()
    branch = ensure_branch_task(branch or run_branch_name("backfill", run_id))
    override = load_lakehouse_settings().timezone_override
    timezone = ingest_profile_task(source, branch, run_id, override)
    windows = day_windows(start, end, chunk_days)
    progress = create_progress_artifact(
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
