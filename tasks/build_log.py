"""The record of every build on a branch: ``audit.build_log``, read by validate and publish.

``build_branch`` appends one row per build, last of all its writes: its number
(``build_seq``, one more than the branch's previous build), whether it rebuilt everything
and why, dbt's result per node, what each model rebuilt (the touched sets as ranges of
local days per site), how many change rows it consumed, and the metadata location of
every table of the branch as the build left it. The row travels with the branch, so
``validate`` (any process, any machine) reads the build results of exactly the branch
state it checks, and refuses them when a table moved since; ``publish`` reads the builds
after the one it last published to know which partitions to upsert.

The number of the branch's latest build is also in the summary of the snapshot that
added its row (``cascade.build-seq``): finding it reads no data file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final, Literal

import polars as pl
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThan,
    In,
    IsNull,
    Or,
    Reference,
)
from pyiceberg.expressions.literals import literal

from tasks.lakehouse import read_table, replace_rows
from tasks.tables import BUILD_LOG

__all__ = [
    "BuildRecord",
    "BuildStatus",
    "Grain",
    "ModelBuild",
    "TouchedRange",
    "TouchedSet",
    "builds_after",
    "latest_build",
    "latest_build_seq",
    "table_locations",
    "write_build",
]

SEQ_PROPERTY: Final = "cascade.build-seq"
Grain = Literal["site_day", "site", "table"]
BuildStatus = Literal["success", "tests_failed", "error"]

@dataclass(frozen=True)
class TouchedRange:
    """Local days ``first_date``..``last_date`` of one site, or every day of it."""

    site_id: str
    whole_site: bool
    first_date: date | None = None
    last_date: date | None = None


@dataclass(frozen=True)
class TouchedSet:
    """The partitions a build rebuilt for one touched set; ``ranges`` None: all of them."""

    ranges: tuple[TouchedRange, ...] | None

    @property
    def everything(self) -> bool:
        return self.ranges is None

    def sites(self) -> frozenset[str]:
        """The sites with a rebuilt partition (empty when everything was rebuilt)."""
        return frozenset(r.site_id for r in self.ranges or ())

    def iceberg_filter(self, grain: Grain, date_column: str = "local_date") -> BooleanExpression:
        """The rows of these partitions of a model of ``grain``, as an Iceberg filter (the
        same rows as the SQL predicate the dbt models use: macros/touched.sql)."""
        if self.ranges is None or grain == "table":
            return AlwaysTrue()
        if not self.ranges:
            return AlwaysFalse()
        site = Reference("site_id")
        sites = {literal(s) for s in self.sites()}
        if grain == "site":
            return In(term=site, values=sites)
        day = Reference(date_column)
        where: BooleanExpression = And(In(term=site, values=sites), IsNull(term=day))
        for r in self.ranges:
            one: BooleanExpression = EqualTo(term=site, value=literal(r.site_id))
            if not r.whole_site and r.first_date is not None and r.last_date is not None:
                # the days themselves, not a range: PyIceberg 0.12 fails comparing a range
                # with a file whose partition has no day (a row without a local date)
                days = {literal((r.first_date + timedelta(days=i)).isoformat())
                        for i in range((r.last_date - r.first_date).days + 1)}
                one = And(one, In(term=day, values=days))
            where = Or(where, one)
        return where

    def to_json(self) -> list[list[Any]] | None:
        if self.ranges is None:
            return None
        return [[r.site_id, r.whole_site, _iso(r.first_date), _iso(r.last_date)]
                for r in self.ranges]

    @classmethod
    def from_json(cls, value: list[list[Any]] | None) -> TouchedSet:
        if value is None:
            return cls(None)
        return cls(tuple(TouchedRange(s, bool(w), _day(f), _day(last))
                         for s, w, f, last in value))

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> TouchedSet:
        """From the rows of a touched-set model (site_id, is_whole_site, first_date,
        last_date, ...)."""
        ranges = {TouchedRange(r["site_id"], bool(r["is_whole_site"]), r["first_date"],
                               r["last_date"]) for r in rows}
        return cls(tuple(sorted(ranges, key=_range_key)))

    @classmethod
    def union(cls, sets: Iterable[TouchedSet]) -> TouchedSet:
        """Every partition any of ``sets`` rebuilt (everything if one rebuilt everything)."""
        ranges: list[TouchedRange] = []
        for one in sets:
            if one.ranges is None:
                return cls(None)
            ranges += one.ranges
        return cls(tuple(sorted(set(ranges), key=_range_key)))


@dataclass(frozen=True)
class ModelBuild:
    """How a build built one model: its grain, its touched set, and whether whole."""

    grain: Grain
    touched: str | None
    whole: bool


@dataclass(frozen=True)
class BuildRecord:
    """One row of ``audit.build_log``."""

    build_seq: int
    build_id: str
    branch: str
    built_at: datetime
    full_refresh: bool
    reason: str
    project_checksum: str
    models_checksum: str
    status: BuildStatus
    n_models: int = 0
    n_tests: int = 0
    n_failed: int = 0
    n_changes: int = 0
    failures: tuple[str, ...] = ()
    nodes: dict[str, str] = field(default_factory=dict)
    models: dict[str, ModelBuild] = field(default_factory=dict)
    touched: dict[str, TouchedSet] = field(default_factory=dict)
    tables: dict[str, str | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def landed(self) -> bool:
        """Whether the build's models reached the branch (dbt ran every model)."""
        return self.status != "error"

    def rebuilt(self, model: str) -> TouchedSet:
        """The partitions the build rebuilt of ``model`` (``schema.name``)."""
        built = self.models.get(model)
        if built is None or built.whole or self.full_refresh or built.touched is None:
            return TouchedSet(None)
        return self.touched.get(built.touched, TouchedSet(None))

    def to_row(self) -> dict[str, Any]:
        return {
            "build_seq": self.build_seq, "build_id": self.build_id, "branch": self.branch,
            "built_at": self.built_at, "full_refresh": self.full_refresh,
            "reason": self.reason, "project_checksum": self.project_checksum,
            "models_checksum": self.models_checksum, "status": self.status,
            "n_models": self.n_models, "n_tests": self.n_tests,
            "n_failed": self.n_failed, "n_changes": self.n_changes,
            "failures": json.dumps(list(self.failures)), "nodes": json.dumps(self.nodes),
            "models": json.dumps({k: [v.grain, v.touched, v.whole]
                                  for k, v in self.models.items()}),
            "touched": json.dumps({k: v.to_json() for k, v in self.touched.items()}),
            "tables": json.dumps(self.tables), "seconds": json.dumps(self.seconds),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BuildRecord:
        models = {k: ModelBuild(v[0], v[1], bool(v[2]))
                  for k, v in json.loads(row["models"]).items()}
        touched = {k: TouchedSet.from_json(v) for k, v in json.loads(row["touched"]).items()}
        return cls(
            build_seq=int(row["build_seq"]), build_id=row["build_id"], branch=row["branch"],
            built_at=row["built_at"], full_refresh=bool(row["full_refresh"]),
            reason=row["reason"] or "", project_checksum=row["project_checksum"] or "",
            models_checksum=row["models_checksum"] or "", status=row["status"],
            n_models=int(row["n_models"]), n_tests=int(row["n_tests"]),
            n_failed=int(row["n_failed"]), n_changes=int(row["n_changes"]),
            failures=tuple(json.loads(row["failures"])), nodes=json.loads(row["nodes"]),
            models=models, touched=touched, tables=json.loads(row["tables"]),
            seconds=json.loads(row["seconds"]))


def latest_build_seq(catalog: Catalog) -> int | None:
    """The number of the branch's latest build (from a snapshot summary), None before any."""
    if not catalog.table_exists(BUILD_LOG.identifier):
        return None
    snapshot = catalog.load_table(BUILD_LOG.identifier).current_snapshot()
    value = snapshot.summary.get(SEQ_PROPERTY) if snapshot and snapshot.summary else None
    return int(value) if value is not None else None


def latest_build(catalog: Catalog) -> BuildRecord | None:
    """The branch's latest build record, None before any."""
    seq = latest_build_seq(catalog)
    if seq is None:
        return None
    found = _read(catalog, EqualTo(term=Reference("build_seq"), value=literal(seq)))
    return found[-1] if found else None


def builds_after(catalog: Catalog, build_seq: int) -> list[BuildRecord]:
    """The branch's build records numbered after ``build_seq``, in order."""
    if not catalog.table_exists(BUILD_LOG.identifier):
        return []
    return _read(catalog, GreaterThan(term=Reference("build_seq"), value=literal(build_seq)))


def _read(catalog: Catalog, where: BooleanExpression) -> list[BuildRecord]:
    rows = read_table(catalog, BUILD_LOG.identifier, where).sort("build_seq")
    return [BuildRecord.from_row(row) for row in rows.iter_rows(named=True)]


def write_build(catalog: Catalog, record: BuildRecord) -> None:
    """Append ``record`` to the branch's build log, its number in the snapshot summary; it
    takes the place of a record of the same build written when the build started."""
    frame = pl.DataFrame([record.to_row()], schema=BUILD_LOG.schema)
    replace_rows(catalog, BUILD_LOG, frame,
                 EqualTo(term=Reference("build_seq"), value=literal(record.build_seq)),
                 snapshot_properties={SEQ_PROPERTY: str(record.build_seq)})


def table_locations(catalog: Catalog, skip: tuple[str, ...] = (BUILD_LOG.identifier,)
                    ) -> dict[str, str | None]:
    """The metadata location of every table of the branch (but ``skip``): its state."""
    out: dict[str, str | None] = {}
    for (namespace,) in catalog.list_namespaces():
        try:
            tables = catalog.list_tables(namespace)
        except NoSuchNamespaceError:
            continue
        for ident in tables:
            name = ".".join(ident)
            if name not in skip:
                out[name] = catalog.load_table(name).metadata_location
    return dict(sorted(out.items()))


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def _range_key(r: TouchedRange) -> tuple[str, bool, date, date]:
    return (r.site_id, not r.whole_site, r.first_date or date.min, r.last_date or date.min)
