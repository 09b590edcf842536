"""reconcile: re-read a day range of one or more sites by time and land what differs.

For the edits and deletions API v3's change feed cannot name (v1 uploads and edits,
permanent deletes, sites without v3) and that are older than ``daily``'s reconcile window:
after a clean-up in Nightscout, or once over a lake's whole history. Days that match the
lake write nothing; those that differ are replaced, their removed rows audited in
``audit.deletions``; then the usual build → validate → promote → publish.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.nightscout import NightscoutSite
from flows.pipeline import _block_name, _write_audit_publish
from tasks import timeouts
from tasks.days import DayRange
from tasks.fanout import MAX_CONCURRENCY, IngestPlan, choose_sites, ingest_partitions, run_name
from tasks.ingest import WINDOW_TABLES
from tasks.profile import current_profile
from tasks.reconcile import ReconcileWindow, WindowPlanner, land_changes, plan_windows
from tasks.results import IngestResult, RunResult


@flow(name="reconcile", flow_run_name=run_name("reconcile {start}..{end}"),
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
      timeout_seconds=timeouts.RECONCILE)
def reconcile(
    start: date,
    end: date,
    site: NightscoutSite | None = None,
    site_block: str | None = None,
    sites: list[str] | None = None,
    chunk_days: int = 30,
    max_concurrency: int = 2,
    max_reject_ratio: float = 0.05,
    dbt_node_tasks: bool = True,
    units: str | None = None,
    full_refresh: bool = False,
) -> RunResult:
    """Re-read the inclusive UTC day range ``[start, end]`` and land the days that differ.

    Args:
        start: first UTC day.
        end: last UTC day (inclusive).
        site: the Nightscout site, picked from the saved ``nightscout-site`` blocks.
        site_block: a ``nightscout-site`` block by name instead; with neither, the site
            comes from the environment.
        sites: several ``nightscout-site`` block names, all on one branch.
        chunk_days: days per reconcile window (one task run, one request per table).
        max_concurrency: windows in flight at once.
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
        dbt_node_tasks: one Prefect task run per dbt node (False: plain, faster dbt).
        units: ``mg/dL`` or ``mmol/L`` for every site's report instead of the site's own
            unit (from its Nightscout profile).
        full_refresh: rebuild every model whole (default: only the partitions whose raw
            rows the reconcile changed).
    """
    lakehouse = current_profile().lakehouse
    chosen = choose_sites(_block_name(site) or site_block, sites)
    days = DayRange(start, end)
    # no partitions to ingest: the branch, and each site's profiles and timezone
    plan = IngestPlan(kind="reconcile", ranges={}, chunk_days=chunk_days,
                      max_concurrency=max_concurrency, max_reject_ratio=max_reject_ratio)

    def ingest(target: str | None) -> IngestResult:
        ingested = ingest_partitions(lakehouse, chosen, plan, target)
        changes = land_changes(
            lakehouse, {s.site_id: s.source for s in chosen}, ingested.branch, ingested.run_id,
            ingested.timezones,
            {s.site_id: _whole_range(plan_windows(s.site_id, dict.fromkeys(WINDOW_TABLES, days),
                                                  chunk_days)) for s in chosen},
            change_feed=False, max_reject_ratio=max_reject_ratio,
            max_concurrency=max_concurrency)
        return replace(ingested, changes=changes)

    return _write_audit_publish("reconcile", lakehouse, ingest(None), ingest, dbt_node_tasks,
                                units, full_refresh)


def _whole_range(planned: list[ReconcileWindow]) -> WindowPlanner:
    """The same windows whatever the feed and the lake's first day (a reconcile reads no
    feed, and lands the range it is given)."""
    return lambda feed, first: planned
