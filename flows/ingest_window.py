"""ingest_window: one partition (days of one site) onto an existing run branch.

The unit a parent flow fans out as its own deployment run (``fan_out="deployments"``),
so that on a Kubernetes or ECS work pool the partitions of a backfill run on many
machines. It writes under the parent's run id, so the branch's ingest log reads as one run.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import date

from prefect import flow
from prefect.concurrency.sync import concurrency

from tasks import timeouts
from tasks.days import DayRange
from tasks.fanout import run_name
from tasks.ingest import WindowReport, ingest_window_task
from tasks.profile import current_profile
from tasks.runtime import require_source


@flow(name="ingest_window", flow_run_name=run_name("ingest {start}..{end}"),
      timeout_seconds=timeouts.INGEST_WINDOW)
def ingest_window(
    branch: str,
    start: date,
    end: date,
    timezone: str,
    run_id: str,
    site_block: str | None = None,
    max_reject_ratio: float = 0.05,
    source_limit: str | None = None,
) -> WindowReport:
    """Ingest the inclusive UTC days ``[start, end]`` of one site onto ``branch``.

    Args:
        branch: an existing branch (the parent run's).
        start: first UTC day.
        end: last UTC day (inclusive).
        timezone: the site's IANA timezone (the parent resolved it from the profile).
        run_id: the parent run's id, written on every row.
        site_block: a ``nightscout-site`` block name; default from the environment.
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
        source_limit: a Prefect global concurrency limit whose slot the window holds while
            it fetches and commits.
    """
    source = require_source(block_name=site_block)
    # strict: a missing limit is an error, never unlimited
    slot = concurrency(source_limit, occupy=1, strict=True) if source_limit else nullcontext()
    with slot:
        return ingest_window_task(current_profile().lakehouse, source, branch,
                                  DayRange(start, end), timezone, run_id, max_reject_ratio)
