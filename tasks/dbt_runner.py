"""Run the dbt project on a branch and land every model as an Iceberg table on it.

Embedded profile (DuckDB): the branch's raw and audit Iceberg tables are loaded into a
per-branch DuckDB build file, ``dbt build`` runs there (one Prefect task per dbt node via
prefect-dbt's runner), and each model's table is then written into Iceberg on the same
branch under its schema (``staging``, ``silver``, ``marts``), so time travel, branch
isolation and promotion cover every layer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb
import polars as pl
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError
from pyiceberg.expressions import AlwaysTrue

from tasks._dbt_duckdb import release_duckdb
from tasks.errors import CascadeError
from tasks.faults import fault_point
from tasks.lakehouse import replace_rows
from tasks.settings import StackSettings
from tasks.tables import TableLayout

__all__ = [
    "DBT_PROJECT_DIR",
    "BuildReport",
    "DbtFailed",
    "dbt_environment",
    "dbt_log_level",
    "export_models",
    "load_sources",
    "model_counts",
    "record_build_state",
    "run_dbt",
    "trino_dbt_environment",
]

logger = logging.getLogger("cascade.dbt")

DBT_PROJECT_DIR: Final = Path(
    os.environ.get("DBT_PROJECT_DIR", Path(__file__).resolve().parents[1] / "dbt")
)
SOURCE_NAMESPACES: Final = ("raw", "audit")
MODEL_SCHEMAS: Final = ("staging", "silver", "marts")


class DbtFailed(CascadeError):
    """dbt build reported errors or failed tests."""


@dataclass
class BuildReport:
    """What a build did: dbt node results and the models landed in Iceberg."""

    branch: str
    nodes: dict[str, str] = field(default_factory=dict)  # unique_id -> status
    failures: list[str] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)  # model -> rows
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tests(self) -> dict[str, str]:
        return {k: v for k, v in self.nodes.items() if k.startswith(("test.", "unit_test."))}


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


def model_counts(settings: StackSettings, catalog: str,
                 schemas: tuple[str, ...] = MODEL_SCHEMAS) -> dict[str, int]:
    """Row count of every model table in a Trino catalog (the branch's built layers)."""
    from tasks.trino import query

    listed = ", ".join(f"'{s}'" for s in schemas)
    tables = query(settings, "select table_schema, table_name from information_schema.tables "
                             f"where table_schema in ({listed}) and table_type = 'BASE TABLE' "
                             "order by 1, 2", catalog)
    return {f"{schema}.{name}": int(query(settings,
                                          f'select count(*) from "{schema}"."{name}"',
                                          catalog)[0][0])
            for schema, name in tables}


def load_sources(catalog: Catalog, duckdb_path: Path) -> dict[str, int]:
    """Fresh build file with every raw/audit table of the branch; returns row counts."""
    if duckdb_path.exists():
        duckdb_path.unlink()
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with duckdb.connect(str(duckdb_path)) as con:
        for namespace in SOURCE_NAMESPACES:
            con.execute(f"create schema if not exists {namespace}")
            for _, name in _tables(catalog, namespace):
                arrow = catalog.load_table(f"{namespace}.{name}").scan(AlwaysTrue()).to_arrow()
                con.register("__source", arrow)
                con.execute(f"create table {namespace}.{name} as select * from __source")
                con.unregister("__source")
                counts[f"{namespace}.{name}"] = arrow.num_rows
    return counts


def _tables(catalog: Catalog, namespace: str) -> list[tuple[str, ...]]:
    try:
        return [tuple(t) for t in catalog.list_tables(namespace)]
    except NoSuchNamespaceError:  # nothing of this kind on the branch yet
        return []


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
        out.append({"unique_id": node.node.unique_id, "status": str(node.status),
                    "message": node.message, "failures": node.failures,
                    "schema": getattr(node.node, "schema", None),
                    "name": node.node.name, "resource_type": str(node.node.resource_type)})
    return out


def export_models(duckdb_path: Path, catalog: Catalog,
                  schemas: tuple[str, ...] = MODEL_SCHEMAS) -> dict[str, int]:
    """Write every model table of the build file into Iceberg (same schema.name)."""
    exported: dict[str, int] = {}
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        rows = con.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema in (select unnest(?)) and table_type = 'BASE TABLE' "
            "order by 1, 2", [list(schemas)]
        ).fetchall()
        for schema, name in rows:
            frame = con.execute(f'select * from "{schema}"."{name}"').pl()
            _replace_model(catalog, f"{schema}.{name}", frame)
            fault_point("build-mid-export")
            exported[f"{schema}.{name}"] = frame.height
    return exported


def _replace_model(catalog: Catalog, identifier: str, frame: pl.DataFrame) -> None:
    """Replace a model's Iceberg table; recreate it when its columns changed type."""
    frame = frame.with_columns(pl.col(c).cast(pl.Datetime("us", "UTC"))
                               for c, t in frame.schema.items()
                               if isinstance(t, pl.Datetime) and t.time_zone is not None)
    layout = TableLayout(identifier, frame.schema, None, "")
    if catalog.table_exists(identifier):
        existing = catalog.load_table(identifier).schema().as_arrow()
        wanted = frame.to_arrow().schema
        if any(_plain(existing.field(f.name).type) != _plain(f.type)
               for f in wanted if f.name in existing.names):
            catalog.drop_table(identifier)
    replace_rows(catalog, layout, frame, AlwaysTrue())


def _plain(arrow_type: pa.DataType) -> pa.DataType:
    """Arrow type with large/small string and binary variants folded together."""
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    if pa.types.is_large_binary(arrow_type):
        return pa.binary()
    return arrow_type


def record_build_state(build_dir: Path, branch: str, branch_hash: str) -> None:
    """Remember which state of the branch the build's dbt results belong to."""
    state = {"branch": branch, "hash": branch_hash}
    (build_dir / "build_state.json").write_text(json.dumps(state))


def fresh_build_dir(home: Path, branch: str) -> Path:
    """An empty per-branch build directory under ``$CASCADE_HOME/build``."""
    path = home / "build" / branch
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def timed(report: BuildReport, step: str, started: float) -> None:
    """Record a step's wall time in the report."""
    report.seconds[step] = round(time.perf_counter() - started, 3)
