"""Ingesting a run's partitions (site × day chunk) onto its branch, bounded, resumable.

Partitions run as task runs in the parent's process (``fan_out="tasks"``) or each as a
run of the ``cascade-ingest-window`` deployment (``fan_out="deployments"``), so a
Kubernetes or ECS work pool spreads them over machines. Either way at most
``max_concurrency`` are in flight from one parent, every outcome is gathered before the
chain goes on, and any failure stops the run before validation with the branch kept.
Deployment runs also hold a slot of the global concurrency limit ``nightscout-<site id>``
(created with ``max_concurrency`` slots when missing; edit it in the UI), so several
parents together never hammer one Nightscout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture
from pyiceberg.catalog import Catalog

from tasks import timeouts
from tasks.branches import MAIN, BranchCatalog, drop_if_untouched, ensure_branch_task
from tasks.days import DayRange
from tasks.errors import CascadeError, ConfigError
from tasks.ingest import ingest_profile_task, ingest_window_task, site_timezone
from tasks.mapping import bounded_submit
from tasks.partitions import Partition, finished, ingest_totals, plan_partitions
from tasks.profile import Lakehouse
from tasks.results import IngestResult
from tasks.runtime import current_run_id, require_source, run_branch_name
from tasks.settings import NightscoutSettings

__all__ = ["INGEST_WINDOW_DEPLOYMENT", "MAX_CONCURRENCY", "DailyDay", "FanOut", "IngestPlan",
           "Site", "choose_sites", "daily_days", "find_run_branch", "ingest_partitions",
           "run_name"]

MAX_CONCURRENCY = 16
INGEST_WINDOW_DEPLOYMENT = "ingest_window/cascade-ingest-window"
FanOut = Literal["tasks", "deployments"]


@dataclass(frozen=True)
class Site:
    """One Nightscout site of a run: the block it came from (None: the environment)."""

    block: str | None
    source: NightscoutSettings

    @property
    def site_id(self) -> str:
        return self.source.site_id


@dataclass(frozen=True)
class IngestPlan:
    """What a parent ingests: each site's UTC days, and how."""

    kind: str
    ranges: dict[str, DayRange]
    chunk_days: int
    max_concurrency: int
    max_reject_ratio: float
    fan_out: FanOut = "tasks"


def choose_sites(site_block: str | None, sites: list[str] | None) -> list[Site]:
    """The run's sites: ``sites`` (block names), else ``site_block``, else the environment."""
    names: list[str | None] = list(sites) if sites else [site_block]
    chosen = [Site(name, require_source(block_name=name)) for name in names]
    ids = [s.site_id for s in chosen]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ConfigError(f"site id(s) {', '.join(repeated)} named by more than one block: "
                          "give every nightscout-site block its own site_id")
    return chosen


@dataclass(frozen=True)
class DailyDay:
    """The local day a ``daily`` run covers for one site, and the UTC days around it."""

    local_day: date
    timezone: str
    utc_days: DayRange


def daily_days(main: Catalog, sites: list[Site], day: date | None) -> dict[str, DailyDay]:
    """Each site's local day for ``daily`` (default yesterday in its timezone) and the UTC
    days to (re-)ingest for it: a local day spans two UTC days, so the day before and the
    day after (up to today) are read too."""
    today = datetime.now(UTC).date()
    out: dict[str, DailyDay] = {}
    for site in sites:
        timezone = site_timezone(main, site.source)
        local = day or datetime.now(ZoneInfo(timezone)).date() - timedelta(days=1)
        utc_days = DayRange(local - timedelta(days=1), min(local + timedelta(days=1), today))
        out[site.site_id] = DailyDay(local, timezone, utc_days)
        get_run_logger().info("daily %s site=%s (%s): UTC days %s", local, site.site_id,
                              timezone, utc_days)
    return out


def _picked(site: Any) -> str | None:
    """The site id of a site picked as a block (the block, or its fields as a dict)."""
    if isinstance(site, dict):
        return site.get("site_id")
    return getattr(site, "site_id", None)


def run_name(template: str) -> Callable[[], str]:
    """A flow-run namer: ``template`` formatted with the run's parameters, then the sites
    (``backfill 2024-01-01..2024-12-31 site=clinic-a``)."""
    def name() -> str:
        from prefect.runtime import flow_run

        params: dict[str, Any] = dict(flow_run.parameters or {})
        sites = params.get("sites") or [params.get("site_block") or _picked(params.get("site"))
                                         or os.environ.get("NIGHTSCOUT_BLOCK")
                                         or os.environ.get("NIGHTSCOUT_SITE_ID", "default")]
        label = "site=" if len(sites) == 1 else "sites="
        return f"{template.format_map(_Missing(params))} {label}{','.join(map(str, sites))}"

    return name


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "-"


def find_run_branch(branches: BranchCatalog, kind: str, run_id: str) -> str:
    """This run's branch: the one an earlier attempt of the same run left (a Prefect
    retry keeps the run id), else a new name."""
    suffix = f"-{run_id}"
    for ref in branches.list_refs():
        if ref.kind == "branch" and ref.name.startswith(f"run-{kind}-") \
                and ref.name.endswith(suffix):
            return ref.name
    return run_branch_name(kind, run_id)


def ingest_partitions(lakehouse: Lakehouse, sites: list[Site], plan: IngestPlan,
                      branch: str | None) -> IngestResult:
    """Every partition of ``plan`` on ``branch`` (default this run's), skipping those the
    branch already holds; raises, branch kept, when any partition fails."""
    logger = get_run_logger()
    run_id = current_run_id()
    branches = lakehouse.branches
    named = branch is not None
    branch = ensure_branch_task(branches, branch or find_run_branch(branches, plan.kind, run_id))
    by_id = {s.site_id: s for s in sites}
    try:
        timezones = {s.site_id: ingest_profile_task(lakehouse, s.source, branch, run_id)
                     for s in sites}
    except CascadeError:
        if not named and drop_if_untouched(branches, branch):
            logger.info("deleted run branch %s: nothing was written to it", branch)
        raise
    partitions = plan_partitions(plan.ranges, plan.chunk_days)
    done = finished(branches.catalog(branch), branches.catalog(MAIN), partitions)
    todo = [p for p in partitions if p not in done]
    if done:
        logger.info("resuming on %s: %d of %d partitions already landed there, skipped",
                    branch, len(done), len(partitions))
    limit = min(max(1, plan.max_concurrency), MAX_CONCURRENCY)
    submit = _submitter(lakehouse, plan, branch, run_id, by_id, timezones, limit)
    failures = _gather(submit, todo, limit, len(done), len(partitions),
                       f"{plan.kind} on {branch}")
    result = IngestResult(branch=branch, run_id=run_id, sites=sorted(by_id),
                          timezones=timezones, windows=len(partitions), resumed=len(done),
                          tables=ingest_totals(branches.catalog(branch), partitions))
    logger.info("%s: %d partitions (%d skipped), %d rows on %s, %d failed", plan.kind,
                len(partitions), len(done), result.committed, branch, len(failures))
    if failures:
        raise CascadeError(
            f"{plan.kind}: {len(failures)} of {len(todo)} partitions failed; branch {branch} "
            "kept, nothing promoted (retry the run to redo only those): "
            + _summarise(failures))
    return result


def _gather(submit: Callable[[Partition], PrefectFuture[Any]], todo: list[Partition],
            limit: int, skipped: int, total: int, what: str) -> list[tuple[str, str]]:
    """Run ``todo`` bounded; the failures, one line each; a progress artifact meanwhile."""
    progress: UUID = create_progress_artifact(  # type: ignore[assignment]
        100.0 * skipped / max(total, 1), key="ingest-progress", description=what)
    failures: list[tuple[str, str]] = []
    for done, (part, future) in enumerate(bounded_submit(submit, todo, limit), start=1):
        future.wait()
        if not future.state.is_completed():
            failures.append((part.label(), _why(future.state)))
        update_progress_artifact(progress, 100.0 * (skipped + done) / max(total, 1))
    return failures


def _why(state: Any) -> str:
    """The failure's own message (the exception's), not Prefect's wrapping of it."""
    error = state.result(raise_on_failure=False)
    return str(error) if isinstance(error, BaseException) else str(state.message)


def _summarise(failures: list[tuple[str, str]]) -> str:
    """Each distinct reason once, after the partitions it stopped (three named at most)."""
    by_reason: dict[str, list[str]] = {}
    for label, reason in failures:
        by_reason.setdefault(reason, []).append(label)
    parts = []
    for reason, labels in by_reason.items():
        named = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3
                                         else "")
        parts.append(f"{named}: {reason}")
    return " | ".join(parts)


def _submitter(lakehouse: Lakehouse, plan: IngestPlan, branch: str, run_id: str,
               sites: dict[str, Site], timezones: dict[str, str],
               limit: int) -> Callable[[Partition], PrefectFuture[Any]]:
    if plan.fan_out == "tasks":
        def as_task(part: Partition) -> PrefectFuture[Any]:
            return ingest_window_task.submit(
                lakehouse, sites[part.site_id].source, branch, part.days,
                timezones[part.site_id], run_id,
                plan.max_reject_ratio)
        return as_task
    if plan.fan_out != "deployments":
        raise ConfigError(f"fan_out={plan.fan_out!r}: use 'tasks' or 'deployments'")
    limits = {site: ensure_source_limit(site, limit) for site in sites}
    from prefect.runtime import flow_run

    job_variables = dict(flow_run.job_variables or {})
    # the child deployment: the same set's (same name on every pool), or one named for a
    # pool of its own (CASCADE_INGEST_WINDOW_DEPLOYMENT, e.g. a second set side by side)
    deployment = os.environ.get("CASCADE_INGEST_WINDOW_DEPLOYMENT") or INGEST_WINDOW_DEPLOYMENT

    def as_deployment(part: Partition) -> PrefectFuture[Any]:
        params: dict[str, object] = {"branch": branch, "start": part.days.first.isoformat(),
                  "end": part.days.last.isoformat(),
                  "timezone": timezones[part.site_id], "run_id": run_id,
                  "site_block": sites[part.site_id].block,
                  "max_reject_ratio": plan.max_reject_ratio,
                  "source_limit": limits[part.site_id]}
        return run_partition_task.submit(part.label(), deployment, params, job_variables)
    return as_deployment


def ensure_source_limit(site_id: str, slots: int) -> str:
    """The global concurrency limit ``nightscout-<site id>``, created with ``slots`` if missing
    (an existing one is left as the operator set it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    name = f"nightscout-{site_id}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=max(1, slots)))
            get_run_logger().info("created global concurrency limit %s (%d slots)", name,
                                  slots)
    return name


@task(name="run-partition", task_run_name="partition {label}",
      timeout_seconds=timeouts.PARTITION_RUN)
def run_partition_task(label: str, deployment: str, parameters: dict[str, object],
                       job_variables: dict[str, Any]) -> str:
    """Run one partition as a run of ``deployment`` (``ingest_window/…``) and wait for it;
    raises unless it completed (a failed child never passes silently)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters,
                         job_variables=job_variables or None, as_subflow=True, timeout=None)
    if not isinstance(run, FlowRun) or run.state is None or not run.state.is_completed():
        state = getattr(run, "state", None)
        raise CascadeError(f"partition {label}: deployment run {getattr(run, 'name', '?')} "
                           f"ended {getattr(state, 'name', 'unknown')}: "
                           f"{getattr(state, 'message', '')}")
    get_run_logger().info("partition %s: run %s completed", label, run.name)
    return str(run.id)
