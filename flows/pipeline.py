"""Parent flows: ``backfill`` a date range and ``daily``, each on one run branch.

Both run the whole write-audit-publish chain: ingest partitions (site × day chunk)
concurrently onto a fresh branch, build it with dbt, validate it, promote it atomically
into main, publish the marts. A failure at any step leaves main untouched and the branch
kept; a retry of the run resumes on that branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.nightscout import NightscoutSite
from flows.build_branch import build_branch
from flows.promote import promote
from flows.publish import publish
from flows.validate import validate
from tasks import timeouts
from tasks.branches import MAIN
from tasks.change_feed import commit_cursors_task, start_feed_task
from tasks.days import DayRange
from tasks.errors import BranchConflict, ConfigError
from tasks.fanout import (
    MAX_CONCURRENCY,
    FanOut,
    IngestPlan,
    choose_sites,
    daily_days,
    ingest_partitions,
    run_name,
)
from tasks.profile import Lakehouse, current_profile
from tasks.reconcile import WindowPlanner, land_changes, plan_daily_windows
from tasks.report import chain_summary_task
from tasks.results import IngestResult, RunResult

PROMOTE_ATTEMPTS = 3


@flow(
    name="backfill",
    flow_run_name=run_name("backfill {start}..{end}"),
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
    timeout_seconds=timeouts.BACKFILL,
)
def backfill(
    start: date,
    end: date,
    branch: str | None = None,
    site: NightscoutSite | None = None,
    site_block: str | None = None,
    sites: list[str] | None = None,
    chunk_days: int = 30,
    max_concurrency: int = 2,
    max_reject_ratio: float = 0.05,
    promote_to_main: bool = True,
    dbt_node_tasks: bool = True,
    fan_out: FanOut = "tasks",
    units: str | None = None,
    change_feed: bool = True,
    full_refresh: bool = False,
) -> RunResult:
    """Ingest the inclusive UTC day range ``[start, end]`` onto a run branch, then build,
    validate, promote and publish it.

    Args:
        start: first UTC day.
        end: last UTC day (inclusive).
        branch: target branch; default a new ``run-backfill-…`` branch from main (a retry
            of this run reuses its branch and skips the partitions that already landed).
        site: the Nightscout site, picked from the saved ``nightscout-site`` blocks.
        site_block: a ``nightscout-site`` block by name instead (the command line's
            ``--site``); with neither, the site comes from the environment.
        sites: several ``nightscout-site`` block names (a clinic, a study), all on one
            branch; overrides ``site_block``.
        chunk_days: days per partition (one task run and one commit per table each).
        max_concurrency: partitions in flight at once (at most 16).
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
        promote_to_main: run build → validate → promote → publish after ingestion; with
            False, stop after ingestion and leave the branch for inspection.
        dbt_node_tasks: one Prefect task run per dbt node (False: plain, faster dbt).
        fan_out: ``tasks`` (partitions as task runs in this process) or ``deployments``
            (each partition a run of the ``cascade-ingest-window`` deployment, bounded per
            site by the global concurrency limit ``nightscout-<site id>``).
        units: ``mg/dL`` or ``mmol/L`` for every site's report instead of the site's own
            unit (from its Nightscout profile).
        change_feed: start each site's API v3 change-feed cursor, when it has none, at
            the server's clock (``daily`` then follows edits and deletions from there).
        full_refresh: rebuild every model whole (default: only what the run changed).
    """
    lakehouse = current_profile().lakehouse
    chosen = choose_sites(_block_name(site) or site_block, sites)
    days = DayRange(start, end)
    plan = IngestPlan(kind="backfill", ranges={s.site_id: days for s in chosen},
                      chunk_days=chunk_days, max_concurrency=max_concurrency,
                      max_reject_ratio=max_reject_ratio, fan_out=fan_out)

    def ingest(target: str | None) -> IngestResult:
        ingested = ingest_partitions(lakehouse, chosen, plan, target)
        if change_feed:
            for one in chosen:
                started = start_feed_task(lakehouse, one.source, ingested.branch)
                commit_cursors_task(lakehouse, ingested.branch, started, ingested.run_id)
        return ingested

    ingested = ingest(branch)
    if not promote_to_main:
        return RunResult(ingested)
    return _write_audit_publish("backfill", lakehouse, ingested,
                                ingest if branch is None else None, dbt_node_tasks, units,
                                full_refresh)


def _write_audit_publish(
    kind: str,
    lakehouse: Lakehouse,
    ingested: IngestResult,
    redo: Callable[[str | None], IngestResult] | None,
    dbt_node_tasks: bool = True,
    units: str | None = None,
    full_refresh: bool = False,
) -> RunResult:
    """build → validate → promote → publish; raises (main untouched) if any step fails.

    When main moved under the branch (another run promoted first), the branch is stale:
    with ``redo``, its range is ingested again onto a fresh branch from the new main
    (ingestion is idempotent) and the chain re-runs, up to ``PROMOTE_ATTEMPTS`` times.
    The parent run gets a summary artifact (``cascade-<kind>-summary``).
    """
    logger = get_run_logger()
    for attempt in range(1, PROMOTE_ATTEMPTS + 1):
        branch = ingested.branch
        build = build_branch(branch, node_tasks=dbt_node_tasks, full_refresh=full_refresh)
        audit = validate(branch)
        try:
            promoted = promote(branch, expected_main_hash=audit.main_hash)
        except BranchConflict as conflict:
            if redo is None or attempt == PROMOTE_ATTEMPTS:
                raise
            logger.warning("main moved under %s (%s); attempt %d of %d: redoing its range on "
                           "a fresh branch from main", branch, conflict, attempt + 1,
                           PROMOTE_ATTEMPTS)
            lakehouse.branches.delete_branch(branch)
            ingested = redo(None)
            continue
        published = publish("main", units=units)
        chain_summary_task(kind, branch, promoted.tag, ingested.tables, published.reports)
        return RunResult(ingested, build, audit, promoted, published, attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


@flow(name="daily", flow_run_name=run_name("daily {day}"),
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
      timeout_seconds=timeouts.DAILY)
def daily(day: date | None = None, site: NightscoutSite | None = None,
          site_block: str | None = None, sites: list[str] | None = None,
          max_reject_ratio: float = 0.05, dbt_node_tasks: bool = True,
          units: str | None = None, reconcile_days: int = 14,
          change_feed: bool = True, full_refresh: bool = False) -> RunResult:
    """Ingest, build, validate, promote and publish one local day (default: yesterday),
    with the edits and deletions made since the last run.

    A local day spans two UTC days, so the UTC days around it are (re-)ingested. Then the
    days each site's API v3 change feed names (however old) and the ``reconcile_days`` UTC
    days before are re-read by time, and each day that differs from the lake lands.

    Args:
        day: the local day; default yesterday in each site's timezone.
        site: the Nightscout site, picked from the saved ``nightscout-site`` blocks.
        site_block: a ``nightscout-site`` block by name instead; with neither, the site
            comes from the environment.
        sites: several ``nightscout-site`` block names, all on one branch.
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
        dbt_node_tasks: one Prefect task run per dbt node (False: plain, faster dbt).
        units: ``mg/dL`` or ``mmol/L`` for every site's report instead of the site's own
            unit (from its Nightscout profile).
        reconcile_days: UTC days before the daily's own re-read by time for what the
            change feed cannot see (v1 uploads and edits, permanent deletes); 0: none.
        change_feed: follow each site's API v3 change feed from its cursor.
        full_refresh: rebuild every model whole (default: only what the run changed).
    """
    lakehouse = current_profile().lakehouse
    chosen = choose_sites(_block_name(site) or site_block, sites)
    local_days = daily_days(lakehouse.branches.catalog(MAIN), chosen, day)
    plan = IngestPlan(kind="daily", ranges={s: d.utc_days for s, d in local_days.items()},
                      chunk_days=3, max_concurrency=len(chosen),
                      max_reject_ratio=max_reject_ratio)

    def windows(site_id: str) -> WindowPlanner:
        own = local_days[site_id].utc_days
        return lambda feed, first: plan_daily_windows(
            site_id, own, feed.days if feed is not None else {}, reconcile_days, first)

    def ingest(target: str | None) -> IngestResult:
        ingested = ingest_partitions(lakehouse, chosen, plan, target)
        changes = land_changes(
            lakehouse, {s.site_id: s.source for s in chosen}, ingested.branch,
            ingested.run_id, ingested.timezones, {s.site_id: windows(s.site_id) for s in chosen},
            change_feed=change_feed, max_reject_ratio=max_reject_ratio,
            max_concurrency=max(2, len(chosen)))
        return replace(ingested, changes=changes)

    run = _write_audit_publish("daily", lakehouse, ingest(None), ingest, dbt_node_tasks, units,
                               full_refresh)
    return replace(run, days={s: d.local_day for s, d in local_days.items()})


def _block_name(site: NightscoutSite | None) -> str | None:
    """The saved block document a picked site came from (children load it by name)."""
    if site is None:
        return None
    name = getattr(site, "_block_document_name", None)
    if not name:
        raise ConfigError("the site block passed to the flow is not saved: save it first "
                          "(NightscoutSite(...).save('my-site')) or pass site_block by name")
    return str(name)
