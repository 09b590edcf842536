"""build_branch: dbt build of staging → silver → marts on a branch, by partition."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import timeouts
from tasks.branches import BranchCatalog
from tasks.build import record_results
from tasks.build_log import BuildRecord
from tasks.build_plan import (
    BuildPlan,
    finish_build,
    model_builds,
    plan_build,
    read_touched,
    start_build,
)
from tasks.dbt_runner import BuildReport, timed
from tasks.profile import current_profile
from tasks.settings import load_lakehouse_settings


@task(name="plan-build", task_run_name="plan the build of {branch}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.BUILD)
def _plan(branches: BranchCatalog, branch: str, full_refresh: bool,
          select: str | None) -> BuildPlan:
    return plan_build(branches.catalog(branch), branch, full_refresh, select)


@task(name="start-build", task_run_name="record build {plan.build_seq} of {plan.branch} as started",
      cache_policy=NO_CACHE, timeout_seconds=timeouts.BUILD)
def _start(branches: BranchCatalog, plan: BuildPlan) -> None:
    start_build(branches.catalog(plan.branch), plan)


@task(name="record-build", task_run_name="record build {plan.build_seq} of {plan.branch}",
      cache_policy=NO_CACHE, timeout_seconds=timeouts.BUILD)
def _finish(branches: BranchCatalog, plan: BuildPlan, results: list[dict[str, Any]],
            seconds: dict[str, float], rounds_written: int) -> BuildRecord:
    catalog = branches.catalog(plan.branch)
    models = model_builds(plan, results)
    touched = read_touched(catalog, models, plan.full_refresh)
    return finish_build(catalog, plan, results, models, touched, seconds, rounds_written)


def _in_rounds(plan: BuildPlan) -> str:
    if not plan.rounds:
        return ""
    largest = max(len(sites) for sites in plan.rounds)
    return f" in {len(plan.rounds)} rounds of up to {largest} sites"


@flow(name="build_branch", flow_run_name="build {branch}", timeout_seconds=timeouts.BUILD)
def build_branch(branch: str, select: str | None = None, node_tasks: bool = True,
                 full_refresh: bool = False) -> BuildReport:
    """Build the dbt models on ``branch``: only the partitions its pending changes touch,
    or everything; each model is an Iceberg table on the branch.

    Embedded: dbt-duckdb in a scratch file that reads the branch's Iceberg tables in place;
    each model's rebuilt partitions land back in Iceberg. Stack: dbt-trino rebuilds them in
    place through a Trino catalog of the branch (created for the build, dropped after).
    Either way the build's record (dbt results, what it rebuilt) is appended to the
    branch's ``audit.build_log``, where ``validate`` reads it.

    Args:
        branch: the branch to build (its raw tables are the sources).
        select: a dbt selection (e.g. ``+marts``) built whole; the pending changes stay
            pending for the next build of the whole project.
        node_tasks: one Prefect task run per dbt node (visible in the UI); False runs dbt
            plainly, which is several times faster on a slow API (see docs/benchmarks.md).
        full_refresh: rebuild every partition of every model (also done by itself when
            the dbt project changed since the models were built, or on a first build).
            Such a build runs in rounds of a few sites each once the raw rows pass
            ``CASCADE_BUILD_ROUND_ROWS`` (``tasks.build_rounds``), so its memory follows
            a round rather than the whole lakehouse.

    Failed dbt tests do not raise here: they are recorded, and ``validate`` gates on them.
    When a model fails to build, nothing lands and the changes stay pending.
    """
    profile = current_profile()
    branches = profile.lakehouse.branches
    report = BuildReport(branch)
    started = time.perf_counter()
    plan = _plan(branches, branch, full_refresh, select)
    if plan.rounds:
        _start(branches, plan)
    timed(report, "plan", started)
    build_dir = load_lakehouse_settings().home / "build"
    results = profile.build.build(plan, build_dir, report, node_tasks)
    started = time.perf_counter()
    record = _finish(branches, plan, results, dict(report.seconds), report.rounds_written)
    timed(report, "record", started)
    record_results(report, record)
    get_run_logger().info(
        "built %s on %s (build %d, %s): %d dbt nodes, %d failed, %d change rows consumed, "
        "%d sites touched, %d models written in %s", branch, profile.name, record.build_seq,
        (f"everything{_in_rounds(plan)}: {record.reason}" if record.full_refresh
         else "incremental"),
        len(report.nodes), len(report.failures), report.changes, len(report.touched_sites),
        len(report.exported), report.seconds)
    return report
