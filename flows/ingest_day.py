"""ingest_day: one UTC day of one Nightscout site onto a branch."""

from __future__ import annotations

from datetime import date

from prefect import flow

from tasks import timeouts
from tasks.branches import drop_if_untouched, ensure_branch_task
from tasks.days import DayRange
from tasks.errors import CascadeError
from tasks.fanout import run_name
from tasks.ingest import ingest_profile_task, ingest_window_task
from tasks.profile import current_profile
from tasks.results import IngestResult
from tasks.runtime import current_run_id, require_source, run_branch_name


@flow(name="ingest_day", flow_run_name=run_name("ingest {day}"),
      timeout_seconds=timeouts.INGEST_DAY)
def ingest_day(
    day: date,
    branch: str | None = None,
    site_block: str | None = None,
    max_reject_ratio: float = 0.05,
) -> IngestResult:
    """Ingest UTC ``day`` of one site onto ``branch`` (created from main if missing).

    Args:
        day: the UTC day to (re-)ingest; re-ingesting replaces that day, never duplicates.
        branch: target branch; default a new ``run-ingest-…`` branch.
        site_block: a ``nightscout-site`` block name; default from the environment.
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
    """
    source = require_source(block_name=site_block)
    run_id = current_run_id()
    lakehouse = current_profile().lakehouse
    named = branch is not None
    branch = ensure_branch_task(lakehouse.branches, branch or run_branch_name("ingest", run_id))
    try:
        timezone = ingest_profile_task(lakehouse, source, branch, run_id)
    except CascadeError:
        if not named:  # a run branch with nothing on it is nothing to keep
            drop_if_untouched(lakehouse.branches, branch)
        raise
    report = ingest_window_task(lakehouse, source, branch, DayRange.one(day), timezone, run_id,
                                max_reject_ratio)
    return IngestResult(branch=branch, run_id=run_id, sites=[source.site_id],
                        timezones={source.site_id: timezone}, windows=1, resumed=0,
                        tables=report.tables)
