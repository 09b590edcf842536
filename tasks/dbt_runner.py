"""Run the dbt project on a branch: the environment dbt needs, one invocation, node results.

Embedded profile (DuckDB): dbt-duckdb runs in a scratch file that reads the branch's
Iceberg tables in place (``tasks.embedded_build``); stack profile: dbt-trino runs on a
Trino catalog of the branch (``tasks.trino``). Either way a run of ``dbt build`` gives one
result per node (model, test, unit test), reduced here to plain dicts.

The scratch file, dbt's target and its logs live in one build directory per lakehouse
home (``$CASCADE_HOME/build``): the same paths at every build, so dbt's partial parsing
applies (a fresh machine or pod just parses in full). Nothing in it outlives its use:
results reach ``validate`` through the lakehouse (``tasks.build_log``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tasks._dbt_duckdb import release_duckdb
from tasks.errors import CascadeError
from tasks.faults import fault_point
from tasks.settings import StackSettings

__all__ = [
    "DBT_PROJECT_DIR",
    "BuildReport",
    "DbtFailed",
    "dbt_environment",
    "dbt_log_level",
    "project_checksum",
    "run_dbt",
    "timed",
    "trino_dbt_environment",
]

logger = logging.getLogger("cascade.dbt")

DBT_PROJECT_DIR: Final = Path(
    os.environ.get("DBT_PROJECT_DIR", Path(__file__).resolve().parents[1] / "dbt")
)
# what a model's rows depend on: the project, its models and its macros (not its tests)
_PROJECT_FILES: Final = ("dbt_project.yml", "models/**/*.sql", "models/**/*.yml",
                         "macros/**/*.sql", "materializations/**/*.sql")
# a changed timezone rebuilds just the sites whose local days it moves (dbt/models/build)
_REBUILT_BY_SITE: Final = frozenset({"CASCADE_TIMEZONE"})
_ENV_VAR: Final = re.compile(r"""env_var\(\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]""")


class DbtFailed(CascadeError):
    """dbt build reported errors or failed tests."""


@dataclass
class BuildReport:
    """What a build did: dbt node results, what it rebuilt, the rows it landed."""

    branch: str
    build_seq: int = 0
    full_refresh: bool = False
    reason: str = ""
    status: str = ""
    nodes: dict[str, str] = field(default_factory=dict)  # unique_id -> status
    failures: list[str] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)  # model -> rows written
    changes: int = 0  # change rows consumed
    touched_sites: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    rounds_written: int = 0  # dbt invocations that wrote models (tasks.build_rounds)

    @property
    def tests(self) -> dict[str, str]:
        return {k: v for k, v in self.nodes.items() if k.startswith(("test.", "unit_test."))}


def project_checksum(project_dir: Path = DBT_PROJECT_DIR) -> str:
    """A digest of everything the models' rows depend on in the dbt project, and of the
    environment variables it reads (``CASCADE_PERIOD_START``, ...): when it differs from
    the one the branch's models were built with, every model is rebuilt."""
    digest = hashlib.sha256()
    files = sorted({f for pattern in _PROJECT_FILES for f in project_dir.glob(pattern)})
    names: set[str] = set()
    for path in files:
        text = path.read_bytes()
        digest.update(path.relative_to(project_dir).as_posix().encode() + b"\0" + text + b"\0")
        names.update(_ENV_VAR.findall(text.decode("utf-8", "replace")))
    for name in sorted(names - _REBUILT_BY_SITE):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()[:16]


def dbt_environment(build_dir: Path, duckdb_path: Path) -> dict[str, str]:
    """Environment dbt needs: where the project, profiles, target and logs are."""
    return {
        "DBT_PROJECT_DIR": str(DBT_PROJECT_DIR),
        "DBT_PROFILES_DIR": str(Path(os.environ.get("DBT_PROFILES_DIR", DBT_PROJECT_DIR))),
        "DBT_TARGET_PATH": str(build_dir / "target"),
        "DBT_LOG_PATH": str(build_dir / "logs"),
        "CASCADE_DUCKDB_PATH": str(duckdb_path),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def trino_dbt_environment(build_dir: Path, settings: StackSettings,
                          catalog: str) -> dict[str, str]:
    """Environment for dbt-trino building into Trino catalog ``catalog`` (a branch's).

    The target follows the credentials: ``trino`` (none), ``trino_password`` or
    ``trino_jwt``; secrets go to dbt through the environment only, never on a command line.
    """
    env = {
        "DBT_PROJECT_DIR": str(DBT_PROJECT_DIR),
        "DBT_PROFILES_DIR": str(Path(os.environ.get("DBT_PROFILES_DIR", DBT_PROJECT_DIR))),
        "DBT_TARGET_PATH": str(build_dir / "target"),
        "DBT_LOG_PATH": str(build_dir / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_TARGET": "trino",
        "CASCADE_TRINO_HOST": settings.trino_host,
        "CASCADE_TRINO_PORT": str(settings.trino_port),
        "CASCADE_TRINO_USER": settings.trino_user,
        "CASCADE_TRINO_CATALOG": catalog,
        "CASCADE_TRINO_HTTP_SCHEME": settings.trino_http_scheme,
    }
    if settings.trino_password is not None:
        env.update(DBT_TARGET="trino_password",
                   CASCADE_TRINO_PASSWORD=settings.trino_password.get_secret_value())
    elif settings.trino_jwt is not None:
        env.update(DBT_TARGET="trino_jwt", CASCADE_TRINO_JWT=settings.trino_jwt.get_secret_value())
    return env


def run_dbt(args: list[str], env: dict[str, str], in_prefect: bool = True) -> list[dict[str, Any]]:
    """Invoke dbt once (never concurrently in one process); return its node results.

    ``env`` is applied to the process environment for the invocation only (dbt reads its
    profile's ``env_var()``s from there) and restored afterwards.
    """
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return _invoke_dbt(args, env, in_prefect)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _invoke_dbt(args: list[str], env: dict[str, str], in_prefect: bool) -> list[dict[str, Any]]:
    project = ["--project-dir", env["DBT_PROJECT_DIR"], "--profiles-dir", env["DBT_PROFILES_DIR"],
               "--target-path", env["DBT_TARGET_PATH"], "--log-path", env["DBT_LOG_PATH"],
               "--target", env.get("DBT_TARGET", "duckdb")]
    if in_prefect:
        from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

        settings = PrefectDbtSettings(project_dir=Path(env["DBT_PROJECT_DIR"]),
                                      profiles_dir=Path(env["DBT_PROFILES_DIR"]),
                                      target_path=Path(env["DBT_TARGET_PATH"]),
                                      log_level=dbt_log_level())
        runner = PrefectDbtRunner(settings=settings, raise_on_failure=False)
        result = runner.invoke([*args, *project])
    else:
        from dbt.cli.main import dbtRunner

        result = dbtRunner(callbacks=_fault_callbacks()).invoke([*args, *project])
    release_duckdb()
    return _node_results(result)


# Prefect's logging levels as dbt names them (dbt says ``warn``; it has no critical).
_DBT_LEVELS: Final = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "WARN": "warn",
                      "ERROR": "error", "CRITICAL": "error"}


def dbt_log_level() -> Any:
    """dbt's event level for Prefect's logging level (``PREFECT_LOGGING_LEVEL``).

    prefect-dbt derives it by lower-casing Prefect's level, which fails for ``WARNING``
    (a common production setting) and ``CRITICAL``; here it is mapped explicitly.
    """
    from dbt_common.events.base_types import EventLevel
    from prefect.settings import get_current_settings

    level = str(get_current_settings().logging.level).upper()
    return EventLevel(_DBT_LEVELS.get(level, "info"))


def _fault_callbacks() -> list[Any]:
    """The ``build-mid-dbt`` fault point, reached when dbt reports its first model built
    (plain dbt only; registered only while a fault is asked for)."""
    if not os.environ.get("CASCADE_FAULT"):
        return []

    def after_model(event: Any) -> None:
        if event.info.name == "LogModelResult":
            fault_point("build-mid-dbt")

    return [after_model]


def _node_results(result: Any) -> list[dict[str, Any]]:
    if result.exception is not None:
        raise DbtFailed(f"dbt could not run: {result.exception}")
    out = []
    for node in getattr(result.result, "results", []) or []:
        config = getattr(node.node, "config", None)
        out.append({"unique_id": node.node.unique_id, "status": str(node.status),
                    "message": node.message, "failures": node.failures,
                    "schema": getattr(node.node, "schema", None),
                    "name": getattr(node.node, "alias", None) or node.node.name,
                    "resource_type": str(node.node.resource_type),
                    "materialized": getattr(config, "materialized", None),
                    "grain": config.get("grain") if config is not None else None,
                    "touched": config.get("touched") if config is not None else None})
    return out


def timed(report: BuildReport, step: str, started: float) -> None:
    """Record a step's wall time in the report."""
    report.seconds[step] = round(time.perf_counter() - started, 3)
