"""build_branch: dbt build of staging → silver → marts on a branch, landed in Iceberg."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import timeouts
from tasks.build import record_results
from tasks.dbt_runner import BuildReport, fresh_build_dir, record_build_state
from tasks.profile import current_profile
from tasks.settings import load_lakehouse_settings


@flow(name="build_branch", flow_run_name="build {branch}",
      timeout_seconds=timeouts.BUILD)
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
    profile = current_profile()
    report = BuildReport(branch)
    build_dir = fresh_build_dir(load_lakehouse_settings().home, branch)
    args = ["build"] + (["--select", select] if select else [])
    results = profile.build.build(branch, args, build_dir, report, node_tasks)
    record_results(report, results)
    record_build_state(build_dir, branch, profile.lakehouse.branches.ref(branch).hash)
    get_run_logger().info("built %s on %s: %d dbt nodes (%d failed), %d models in %s",
                          branch, profile.name, len(report.nodes), len(report.failures),
                          len(report.exported), report.seconds)
    return report
