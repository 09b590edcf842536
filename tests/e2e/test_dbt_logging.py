"""dbt under Prefect (one task run per dbt node) with Prefect's logging at WARNING."""

from __future__ import annotations

from pathlib import Path

from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

from tasks.dbt_runner import dbt_environment, run_dbt


def test_dbt_runs_under_prefect_with_logging_at_warning(tmp_path: Path) -> None:
    # prefect-dbt lower-cased Prefect's level into dbt's: 'warning' is not a dbt level, and
    # every build failed under PREFECT_LOGGING_LEVEL=WARNING
    env = dbt_environment(tmp_path, tmp_path / "build.duckdb")
    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "WARNING"}):
        results = run_dbt(["parse"], env, in_prefect=True)
    assert results == []  # parse builds no node (a failure raises DbtFailed)
    assert (tmp_path / "target" / "manifest.json").exists()
