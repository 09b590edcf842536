"""The dbt build of a branch, one engine per profile (chosen in ``tasks.profile``).

* ``DuckDbBuild`` (embedded): the branch's raw and audit tables go into a DuckDB build
  file, ``dbt build`` runs there, and every model lands in Iceberg on the branch.
* ``TrinoBuild`` (stack): dbt-trino writes the models straight into the branch through a
  Trino catalog created for it (and dropped afterwards).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import timeouts
from tasks.branches import BranchCatalog
from tasks.dbt_runner import (
    BuildReport,
    dbt_environment,
    export_models,
    load_sources,
    model_counts,
    run_dbt,
    timed,
    trino_dbt_environment,
)
from tasks.settings import StackSettings
from tasks.trino import branch_catalog

__all__ = ["BuildEngine", "DuckDbBuild", "TrinoBuild", "record_results"]


class BuildEngine(Protocol):
    """Runs ``dbt <args>`` on a branch and lands the models there; returns dbt's node results."""

    def build(self, branch: str, args: list[str], build_dir: Path, report: BuildReport,
              node_tasks: bool) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class DuckDbBuild:
    """dbt-duckdb on a build file loaded from the branch; models copied back into Iceberg."""

    branches: BranchCatalog

    def build(self, branch: str, args: list[str], build_dir: Path, report: BuildReport,
              node_tasks: bool) -> list[dict[str, Any]]:
        duckdb_path = build_dir / "cascade_build.duckdb"
        started = time.perf_counter()
        _load_sources(self.branches, branch, duckdb_path)
        timed(report, "load_sources", started)
        started = time.perf_counter()
        results = run_dbt(args, dbt_environment(build_dir, duckdb_path), in_prefect=node_tasks)
        timed(report, "dbt_build", started)
        started = time.perf_counter()
        report.exported = _export(self.branches, branch, duckdb_path)
        timed(report, "land_in_iceberg", started)
        return results


@dataclass(frozen=True)
class TrinoBuild:
    """dbt-trino writing the models into the branch through a Trino catalog of its own."""

    settings: StackSettings

    def build(self, branch: str, args: list[str], build_dir: Path, report: BuildReport,
              node_tasks: bool) -> list[dict[str, Any]]:
        started = time.perf_counter()
        with branch_catalog(self.settings, branch) as catalog:
            env = trino_dbt_environment(build_dir, self.settings, catalog)
            results = run_dbt(args, env, in_prefect=node_tasks)
            timed(report, "dbt_build", started)
            report.exported = model_counts(self.settings, catalog)
        return results


def record_results(report: BuildReport, results: list[dict[str, Any]]) -> None:
    """Each dbt node's status in the report, and a line per node that failed."""
    report.nodes = {r["unique_id"]: r["status"] for r in results}
    report.failures = [f"{r['unique_id']}: {r['status']} {r['message'] or ''}".strip()
                       for r in results if r["status"] in ("error", "fail")]


@task(name="load-dbt-sources", task_run_name="load raw+audit of {branch} into the build",
      cache_policy=NO_CACHE,
      timeout_seconds=timeouts.BUILD)
def _load_sources(branches: BranchCatalog, branch: str, duckdb_path: Path) -> dict[str, int]:
    return load_sources(branches.catalog(branch), duckdb_path)


@task(name="land-models-in-iceberg", task_run_name="land models on {branch}",
      cache_policy=NO_CACHE,
      timeout_seconds=timeouts.BUILD)
def _export(branches: BranchCatalog, branch: str, duckdb_path: Path) -> dict[str, int]:
    return export_models(duckdb_path, branches.catalog(branch))
