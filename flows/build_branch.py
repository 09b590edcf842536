"""build_branch: dbt build of staging → silver → marts on a branch, landed in Iceberg."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task

from tasks.dbt_runner import (
    BuildReport,
    dbt_environment,
    export_models,
    fresh_build_dir,
    load_sources,
    model_counts,
    record_build_state,
    run_dbt,
    timed,
    trino_dbt_environment,
)
from tasks.lakehouse import StackLakehouse
from tasks.runtime import current_lakehouse
from tasks.settings import load_lakehouse_settings
from tasks.trino import branch_catalog


@task(name="load-dbt-sources", task_run_name="load raw+audit of {branch} into the build")
def _load_sources(branch: str, duckdb_path: str) -> dict[str, int]:
    from pathlib import Path

    return load_sources(current_lakehouse().branches.catalog(branch), Path(duckdb_path))


@task(name="land-models-in-iceberg", task_run_name="land models on {branch}")
def _export(branch: str, duckdb_path: str) -> dict[str, int]:
    from pathlib import Path

    return export_models(Path(duckdb_path), current_lakehouse().branches.catalog(branch))


@flow(name="build_branch", flow_run_name="build {branch}")
def build_branch(branch: str, select: str | None = None,
                 node_tasks: bool = True) -> BuildReport:
    """Run ``dbt build`` on ``branch`` and land every model as an Iceberg table on it.

    Embedded: dbt-duckdb on a build file loaded from the branch, models copied back into
    Iceberg. Stack: dbt-trino writes the models straight into the branch through a Trino
    catalog created for it (and dropped afterwards).

    Args:
        branch: the branch to build (its raw tables are the sources).
        select: an optional dbt selection (e.g. ``marts``); default: the whole project.
        node_tasks: one Prefect task run per dbt node (visible in the UI); False runs dbt
            plainly, which is several times faster on a slow API (see docs/benchmarks.md).

    Failed dbt tests do not raise here: they are reported, and ``validate`` gates on them.
    """
    logger = get_run_logger()
    report = BuildReport(branch)
    lakehouse = current_lakehouse()
    build_dir = fresh_build_dir(load_lakehouse_settings().home, branch)
    args = ["build"] + (["--select", select] if select else [])
    if isinstance(lakehouse, StackLakehouse):
        sources: dict[str, int] = {}
        started = time.perf_counter()
        with branch_catalog(lakehouse.settings, branch) as catalog:
            env = trino_dbt_environment(build_dir, lakehouse.settings, catalog)
            results = run_dbt(args, env, in_prefect=node_tasks)
            timed(report, "dbt_build", started)
            report.exported = model_counts(lakehouse.settings, catalog)
    else:
        duckdb_path = build_dir / "cascade_build.duckdb"
        started = time.perf_counter()
        sources = _load_sources(branch, str(duckdb_path))
        timed(report, "load_sources", started)
        started = time.perf_counter()
        results = run_dbt(args, dbt_environment(build_dir, duckdb_path), in_prefect=node_tasks)
        timed(report, "dbt_build", started)
        started = time.perf_counter()
        report.exported = _export(branch, str(duckdb_path))
        timed(report, "land_in_iceberg", started)
    report.nodes = {r["unique_id"]: r["status"] for r in results}
    report.failures = [f"{r['unique_id']}: {r['status']} {r['message'] or ''}".strip()
                       for r in results if r["status"] in ("error", "fail")]
    record_build_state(build_dir, branch, lakehouse.branches.ref(branch).hash)
    logger.info("built %s on %s: %d sources, %d dbt nodes (%d failed), %d models in %s",
                branch, lakehouse.profile, len(sources), len(report.nodes),
                len(report.failures), len(report.exported), report.seconds)
    return report
