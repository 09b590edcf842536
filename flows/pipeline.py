"""Parent flows: ``backfill`` a date range and ``daily``, each on one run branch.

Both run the whole write-audit-publish chain: ingest partitions (site × day chunk)
concurrently onto a fresh branch, build it with dbt, validate it, promote it atomically
into main, publish the marts. A failure at any step leaves main untouched and the branch
kept; a retry of the run resumes on that branch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.build_branch import build_branch
from flows.promote import promote
from flows.publish import publish
from flows.validate import validate
from tasks.errors import BranchConflict
from tasks.fanout import (
    MAX_CONCURRENCY,
    FanOut,
    IngestPlan,
    choose_sites,
    ingest_partitions,
    run_name,
)
from tasks.profile import current_profile
from tasks.settings import NightscoutSettings, load_lakehouse_settings

PROMOTE_ATTEMPTS = 3


@flow(
    name="backfill",
    flow_run_name=run_name("backfill {start}..{end}"),
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY),  # type: ignore[arg-type]
)
def backfill(
    start: date,
    end: date,
    branch: str | None = None,
    site_block: str | None = None,
    sites: list[str] | None = None,
    chunk_days: int = 30,
    max_concurrency: int = 2,
    max_reject_ratio: float = 0.05,
    promote_to_main: bool = True,
    dbt_node_tasks: bool = True,
    fan_out: FanOut = "tasks",
) -> dict[str, object]:
    """Ingest the inclusive UTC day range ``[start, end]`` onto a run branch, then build,
    validate, promote and publish it.

    Args:
        start: first UTC day.
        end: last UTC day (inclusive).
        branch: target branch; default a new ``run-backfill-…`` branch from main (a retry
            of this run reuses its branch and skips the partitions that already landed).
        site_block: a ``nightscout-site`` block name; default from the environment.
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
    """
    chosen = choose_sites(site_block, sites)
    plan = IngestPlan(kind="backfill", ranges={s.site_id: (start, end) for s in chosen},
                      chunk_days=chunk_days, max_concurrency=max_concurrency,
                      max_reject_ratio=max_reject_ratio, fan_out=fan_out)

    def ingest(target: str | None) -> dict[str, object]:
        return ingest_partitions(chosen, plan, target)

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
            current_profile().lakehouse.branches.delete_branch(branch)
            ingested = redo(None)
            continue
        published = publish("main")
        return {**ingested, "build_seconds": build.seconds, "models": len(build.exported),
                "tag": promoted["tag"], "main": promoted["main_after"],
                "published": published["rows"], "reports": published["reports"],
                "promote_attempts": attempt}
    raise AssertionError("unreachable")  # the loop returns or raises


@flow(name="daily", flow_run_name=run_name("daily {day}"),
      task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENCY))  # type: ignore[arg-type]
def daily(day: date | None = None, site_block: str | None = None,
          sites: list[str] | None = None, max_reject_ratio: float = 0.05,
          dbt_node_tasks: bool = True) -> dict[str, object]:
    """Ingest, build, validate, promote and publish one local day (default: yesterday).

    A local day spans two UTC days, so the UTC days around it are (re-)ingested.

    Args:
        day: the local day; default yesterday in each site's timezone.
        site_block: a ``nightscout-site`` block name; default from the environment.
        sites: several ``nightscout-site`` block names, all on one branch.
        max_reject_ratio: fail when more than this share of a day's rows break a contract.
        dbt_node_tasks: one Prefect task run per dbt node (False: plain, faster dbt).
    """
    chosen = choose_sites(site_block, sites)
    today = datetime.now(UTC).date()
    days: dict[str, date] = {}
    ranges: dict[str, tuple[date, date]] = {}
    for site in chosen:
        timezone = _site_timezone(site.source)
        local = day or datetime.now(ZoneInfo(timezone)).date() - timedelta(days=1)
        days[site.site_id] = local
        ranges[site.site_id] = (local - timedelta(days=1), min(local + timedelta(days=1), today))
        get_run_logger().info("daily %s site=%s (%s): UTC days %s..%s", local, site.site_id,
                              timezone, *ranges[site.site_id])
    plan = IngestPlan(kind="daily", ranges=ranges, chunk_days=3, max_concurrency=len(chosen),
                      max_reject_ratio=max_reject_ratio)

    def ingest(target: str | None) -> dict[str, object]:
        return ingest_partitions(chosen, plan, target)

    first = days[chosen[0].site_id]
    return {"day": str(first), "days": {k: str(v) for k, v in days.items()},
            **_write_audit_publish(ingest(None), ingest, dbt_node_tasks)}


def _site_timezone(source: NightscoutSettings) -> str:
    """The override or the source's configured timezone; UTC until a profile says more."""
    override = load_lakehouse_settings().timezone_override
    if override:
        return override
    return source.timezone or _main_profile_timezone(source.site_id) or "UTC"


def _main_profile_timezone(site_id: str) -> str | None:
    """The site's timezone as main's profile table knows it (None before the first run)."""
    from pyiceberg.expressions import EqualTo, Reference
    from pyiceberg.expressions.literals import literal

    from tasks.lakehouse import read_table
    from tasks.shaping import profile_timezone

    catalog = current_profile().lakehouse.branches.catalog("main")
    if not catalog.table_exists("raw.profile"):
        return None
    site = EqualTo(term=Reference("site_id"), value=literal(site_id))
    profiles = read_table(catalog, "raw.profile", site)
    return profile_timezone(profiles)
