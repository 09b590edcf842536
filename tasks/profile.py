"""The profile a process runs with, decided in one place: lakehouse, dbt engine, marts.

``CASCADE_PROFILE`` selects it, and nothing else reads that variable:

* ``embedded`` (default): SQLite catalog with branches and the warehouse under
  ``$CASCADE_HOME``, dbt on DuckDB, marts in ``$CASCADE_HOME/marts.db``;
* ``stack``: branches in Nessie, files in S3 (MinIO), dbt on Trino, marts in Postgres
  (see docs/stack.md).

Flows resolve the profile once, at their edge (``current_profile()``), and hand its parts
to the tasks that need them. A third profile is one more entry in ``_BUILDERS`` (and the
modules for its parts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

from tasks.branches import BranchCatalog, EmbeddedBranchCatalog
from tasks.build import BuildEngine, DuckDbBuild, TrinoBuild
from tasks.errors import ConfigError, PublishError
from tasks.nessie import NessieBranchCatalog
from tasks.settings import (
    LakehouseSettings,
    StackSettings,
    load_lakehouse_settings,
    load_stack_settings,
    marts_url_from_env,
)

__all__ = [
    "EmbeddedLakehouse",
    "Lakehouse",
    "Profile",
    "StackLakehouse",
    "current_profile",
    "embedded_lakehouse",
    "profile_name",
    "stack_lakehouse",
]


class Lakehouse(Protocol):
    """What the flows need from a lakehouse profile: branches and catalogs at refs."""

    @property
    def profile(self) -> str: ...

    @property
    def branches(self) -> BranchCatalog: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class EmbeddedLakehouse:
    """The embedded profile: SQLite catalog with branches, warehouse on local disk."""

    settings: LakehouseSettings
    branches: EmbeddedBranchCatalog
    profile: str = "embedded"

    def describe(self) -> str:
        return f"embedded lakehouse at {self.settings.home}"


@dataclass(frozen=True)
class StackLakehouse:
    """The stack profile: branches in Nessie, Iceberg files in S3 (MinIO), dbt on Trino."""

    settings: StackSettings
    branches: NessieBranchCatalog
    profile: str = "stack"

    def describe(self) -> str:
        return (f"stack lakehouse: Nessie at {self.settings.nessie_uri}, "
                f"warehouse s3://{self.settings.bucket} at {self.settings.s3_endpoint}")


@lru_cache(maxsize=1)
def stack_lakehouse() -> StackLakehouse:
    """The stack lakehouse from blocks or environment (one instance per process)."""
    settings = load_stack_settings()
    return StackLakehouse(settings, NessieBranchCatalog(settings))


@lru_cache(maxsize=8)
def _embedded(home: str) -> EmbeddedLakehouse:
    settings = load_lakehouse_settings(home)
    return EmbeddedLakehouse(settings, EmbeddedBranchCatalog(settings.catalog_path,
                                                             settings.warehouse))


def embedded_lakehouse(settings: LakehouseSettings | None = None) -> EmbeddedLakehouse:
    """The embedded lakehouse under ``settings.home`` (one instance per process and home)."""
    settings = settings or load_lakehouse_settings()
    return _embedded(str(settings.home))


@dataclass(frozen=True)
class Profile:
    """The parts a run uses: its lakehouse (branches, catalogs), the engine dbt builds a
    branch with, and its marts database."""

    name: str
    lakehouse: Lakehouse
    build: BuildEngine
    default_marts: Callable[[], SqlAlchemyConnector]

    def marts_connector(self, block_name: str | None = None) -> SqlAlchemyConnector:
        """The marts database: a named ``sqlalchemy-connector`` block (the argument, else
        ``CASCADE_MARTS_BLOCK``), else the profile's own (SQLite file or the stack's Postgres).
        """
        block_name = block_name or os.environ.get("CASCADE_MARTS_BLOCK", "").strip() or None
        if block_name:
            return SqlAlchemyConnector.load(block_name)
        return self.default_marts()


def sqlite_marts(settings: LakehouseSettings) -> SqlAlchemyConnector:
    """The embedded marts database: a SQLite file under ``$CASCADE_HOME``."""
    settings.marts_path.parent.mkdir(parents=True, exist_ok=True)
    return SqlAlchemyConnector(connection_info=ConnectionComponents(
        driver=SyncDriver.SQLITE_PYSQLITE, database=str(settings.marts_path)))


def _postgres_marts() -> SqlAlchemyConnector:
    url = marts_url_from_env()
    if url is None:
        raise PublishError(
            "stack profile: no marts database configured: set CASCADE_MARTS_BLOCK to a "
            "sqlalchemy-connector block, or POSTGRES_HOST/_USER/_PASSWORD (stack.env)"
        )
    return SqlAlchemyConnector(connection_info=url)


def embedded_profile(settings: LakehouseSettings | None = None) -> Profile:
    """The embedded profile under ``settings.home`` (default ``$CASCADE_HOME``)."""
    lakehouse = embedded_lakehouse(settings)
    return Profile("embedded", lakehouse, DuckDbBuild(lakehouse.branches),
                   lambda: sqlite_marts(lakehouse.settings))


def stack_profile() -> Profile:
    """The stack profile, from blocks or the environment (``stack.env``)."""
    lakehouse = stack_lakehouse()
    return Profile("stack", lakehouse, TrinoBuild(lakehouse.settings, lakehouse.branches),
                   _postgres_marts)


_BUILDERS: dict[str, Callable[[], Profile]] = {
    "embedded": embedded_profile,
    "stack": stack_profile,
}


def profile_name() -> str:
    """The name of the profile ``CASCADE_PROFILE`` selects (default ``embedded``), checked,
    for callers that need only the name (``register-blocks``)."""
    name = os.environ.get("CASCADE_PROFILE", "").strip() or "embedded"
    if name not in _BUILDERS:
        raise ConfigError(
            f"CASCADE_PROFILE={name!r} is unknown: use one of {', '.join(sorted(_BUILDERS))}"
        )
    return name


def current_profile() -> Profile:
    """The profile ``CASCADE_PROFILE`` names (default ``embedded``)."""
    return _BUILDERS[profile_name()]()
