"""The dbt build of a branch, one engine per profile (chosen in ``tasks.profile``).

Both build what the plan says (``tasks.build_plan``): only the partitions the pending
changes touch, or everything.

* ``DuckDbBuild`` (embedded): dbt-duckdb in a scratch file whose views read the branch's
  Iceberg tables in place; each model's rebuilt partitions then land back in Iceberg
  (``tasks.embedded_build``).
* ``TrinoBuild`` (stack): dbt-trino rebuilds the partitions in place on the branch, through
  a Trino catalog created for it (and dropped afterwards).
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
from tasks.build_log import BuildRecord, TouchedSet
from tasks.build_plan import BuildPlan, build_status
from tasks.build_rounds import merge_round_results
from tasks.dbt_runner import BuildReport, dbt_environment, run_dbt, timed, trino_dbt_environment
from tasks.embedded_build import (
    build_file_lock,
    built_models,
    land_model,
    prepare_build_file,
    touched_sets,
)
from tasks.settings import StackSettings
from tasks.trino import branch_catalog

__all__ = ["BuildEngine", "DuckDbBuild", "TrinoBuild", "record_results"]


class BuildEngine(Protocol):
    """Runs the plan's dbt invocations (one, or one per round of sites) on its branch and
    leaves the models there; returns dbt's node results, merged over the rounds (and fills
    the report's step times, rows written and rounds written)."""

    def build(self, plan: BuildPlan, build_dir: Path, report: BuildReport,
              node_tasks: bool) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class DuckDbBuild:
    """dbt-duckdb in a scratch file over the branch's Iceberg tables; partitions landed back."""

    branches: BranchCatalog

    def build(self, plan: BuildPlan, build_dir: Path, report: BuildReport,
              node_tasks: bool) -> list[dict[str, Any]]:
        rounds: list[list[dict[str, Any]]] = []
        with build_file_lock(build_dir) as path:
            for args in plan.dbt_invocations():
                started = time.perf_counter()
                _prepare(self.branches, plan.branch, path)
                _add_time(report, "prepare", started)
                started = time.perf_counter()
                results = run_dbt(args, dbt_environment(build_dir, path), in_prefect=node_tasks)
                _add_time(report, "dbt_build", started)
                rounds.append(results)
                if build_status(results) == "error":  # a model failed: nothing lands
                    break
                started = time.perf_counter()
                landed = _land(self.branches, plan.branch, path, results)
                for model, rows in landed.items():
                    report.exported[model] = report.exported.get(model, 0) + rows
                report.rounds_written += 1
                _add_time(report, "land_in_iceberg", started)
        return merge_round_results(rounds)


@dataclass(frozen=True)
class TrinoBuild:
    """dbt-trino rebuilding the partitions in place, through a Trino catalog of the branch."""

    settings: StackSettings
    branches: BranchCatalog

    def build(self, plan: BuildPlan, build_dir: Path, report: BuildReport,
              node_tasks: bool) -> list[dict[str, Any]]:
        rounds: list[list[dict[str, Any]]] = []
        started = time.perf_counter()
        with branch_catalog(self.settings, plan.branch) as catalog:
            env = trino_dbt_environment(build_dir, self.settings, catalog)
            for args in plan.dbt_invocations():
                rounds.append(run_dbt(args, env, in_prefect=node_tasks))
                report.rounds_written += 1  # models are rebuilt in place as dbt goes
                for model, rows in _rows_written(self.branches, plan.branch,
                                                 rounds[-1]).items():
                    report.exported[model] = report.exported.get(model, 0) + rows
                if build_status(rounds[-1]) == "error":
                    break
        timed(report, "dbt_build", started)
        return merge_round_results(rounds)


def _add_time(report: BuildReport, step: str, started: float) -> None:
    """Add a step's wall time to the report (a build in rounds runs each step per round)."""
    report.seconds[step] = round(report.seconds.get(step, 0.0)
                                 + time.perf_counter() - started, 3)


def record_results(report: BuildReport, record: BuildRecord) -> None:
    """The build's record in the report: what it did, each node's status, what failed."""
    report.build_seq, report.full_refresh = record.build_seq, record.full_refresh
    report.reason, report.status = record.reason, record.status
    report.nodes, report.failures = dict(record.nodes), list(record.failures)
    report.changes = record.n_changes
    report.touched_sites = sorted({s for t in record.touched.values() for s in t.sites()})


@task(name="prepare-build-file", task_run_name="views of {branch} for dbt",
      cache_policy=NO_CACHE, timeout_seconds=timeouts.BUILD)
def _prepare(branches: BranchCatalog, branch: str, path: Path) -> dict[str, int]:
    return prepare_build_file(branches.catalog(branch), path)


@task(name="land-models-in-iceberg", task_run_name="land models on {branch}",
      cache_policy=NO_CACHE, timeout_seconds=timeouts.BUILD)
def _land(branches: BranchCatalog, branch: str, path: Path,
          results: list[dict[str, Any]]) -> dict[str, int]:
    """Each built model's new partitions into Iceberg, in place of the rebuilt ones."""
    catalog = branches.catalog(branch)
    tables = [(r["schema"], r["name"]) for r in results
              if r["resource_type"] == "model" and r["materialized"] == "table"]
    models = built_models(path, tables)
    touched = touched_sets(path, models)
    return {m.identifier: land_model(path, catalog, m,
                                     touched.get(m.build.touched or "", TouchedSet(None)))
            for m in models}


def _rows_written(branches: BranchCatalog, branch: str,
                  results: list[dict[str, Any]]) -> dict[str, int]:
    """Rows each built model's last commit added (snapshot summaries; no data read)."""
    catalog = branches.catalog(branch)
    out = {}
    for r in results:
        if r["resource_type"] != "model" or r["status"] != "success":
            continue
        identifier = f"{r['schema']}.{r['name']}"
        snapshot = catalog.load_table(identifier).current_snapshot()
        summary = snapshot.summary if snapshot is not None else None
        out[identifier] = int(summary.get("added-records") or 0) if summary else 0
    return out
