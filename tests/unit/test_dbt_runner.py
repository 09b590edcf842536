"""The dbt runner's settings: dbt's log level follows Prefect's whatever it is set to."""

from __future__ import annotations

from pathlib import Path

import pytest
from dbt_common.events.base_types import EventLevel
from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings
from prefect_dbt import PrefectDbtSettings

from tasks.dbt_runner import DBT_PROJECT_DIR, dbt_log_level


@pytest.mark.parametrize(("prefect_level", "dbt_level"), [
    ("DEBUG", EventLevel.DEBUG), ("INFO", EventLevel.INFO), ("WARNING", EventLevel.WARN),
    ("ERROR", EventLevel.ERROR), ("CRITICAL", EventLevel.ERROR),
])
def test_dbt_log_level_follows_prefect_s(prefect_level: str, dbt_level: EventLevel) -> None:
    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: prefect_level}):
        assert dbt_log_level() == dbt_level


def test_prefect_warning_level_builds_dbt_settings() -> None:
    # prefect-dbt alone lower-cases Prefect's level: 'warning' is not a dbt EventLevel, and
    # every build failed with PREFECT_LOGGING_LEVEL=WARNING
    project = Path(DBT_PROJECT_DIR)
    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "WARNING"}):
        with pytest.raises(ValueError, match="warning"):
            PrefectDbtSettings(project_dir=project, profiles_dir=project)
        settings = PrefectDbtSettings(project_dir=project, profiles_dir=project,
                                      log_level=dbt_log_level())
    assert settings.log_level == EventLevel.WARN

