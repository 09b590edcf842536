"""What a publish writes: each mart whole, or only the partitions rebuilt since the last
publish, worked out from the ref's build log and what the marts database last received.

The database's publish log names the ref and build it last received. When it received
this ref, and every build since is on the ref (same build ids, no rollback, no full
rebuild), a publish writes the partitions those builds rebuilt: per-day marts by site and
local day, per-site marts by site. Otherwise, or when a mart is new to the database or its
columns changed, the mart is written whole. Publishing the same state twice writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

import polars as pl
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    Or,
    Reference,
)
from pyiceberg.expressions.literals import literal

from tasks.build_log import (
    BuildRecord,
    Grain,
    TouchedSet,
    builds_after,
    latest_build,
)
from tasks.lakehouse import read_table
from tasks.publish import PublishedState

__all__ = ["MART_NAMESPACE", "MartPlan", "PublishPlan", "plan_publish", "report_marts"]

MART_NAMESPACE: Final = "marts"
REPORT_DAYS: Final = 90  # the longest period the report shows
# the marts tasks.report.build_report reads
REPORT_MARTS: Final = ("mrt_period_summary", "mrt_agp_hourly_14d", "mrt_daily_glycaemia",
                       "mrt_quality_coverage")
_SITE_PARAMETERS: Final = "build.site_parameters"


@dataclass(frozen=True)
class MartPlan:
    """One mart: the partitions to write (everything: the whole mart), by ``grain``."""

    name: str
    scope: TouchedSet
    grain: Grain
    reason: str = ""  # why it is written whole

    @property
    def whole(self) -> bool:
        return self.scope.everything or self.grain == "table"

    def iceberg_filter(self) -> BooleanExpression:
        return self.scope.iceberg_filter(self.grain)


@dataclass(frozen=True)
class PublishPlan:
    """Every mart of a ref, and the build the database will hold afterwards."""

    ref: str
    build_seq: int | None
    build_id: str | None
    marts: dict[str, MartPlan]

    def sites(self) -> frozenset[str] | None:
        """The sites whose rows change (None: any site may)."""
        if any(m.whole for m in self.marts.values()):
            return None
        return frozenset(s for m in self.marts.values() for s in m.scope.sites())


def _mart_names(catalog: Catalog) -> list[str]:
    try:
        return sorted(name for _, name in catalog.list_tables(MART_NAMESPACE))
    except NoSuchNamespaceError:
        return []


def plan_publish(catalog: Catalog, ref: str, state: PublishedState | None,
                 db_columns: dict[str, list[str]], full: bool = False) -> PublishPlan:
    """What to write of every mart of ``ref`` (``catalog``), given what the database holds.

    Args:
        catalog: the lakehouse at ``ref``.
        ref: the ref published.
        state: what the database last received (``tasks.publish.published_state``).
        db_columns: the columns of each mart table in the database.
        full: write every mart whole.
    """
    latest = latest_build(catalog)
    reason, builds = _whole_reason(catalog, ref, state, latest, full)
    marts = {}
    for name in _mart_names(catalog):
        identifier = f"{MART_NAMESPACE}.{name}"
        built = latest.models.get(identifier) if latest is not None else None
        grain: Grain = built.grain if built is not None else "table"
        why = reason or _shape_reason(catalog, identifier, name, db_columns)
        if why or any(identifier not in b.models for b in builds):
            marts[name] = MartPlan(name, TouchedSet(None), grain,
                                   why or "a build since did not build it")
        else:
            marts[name] = MartPlan(name, TouchedSet.union(b.rebuilt(identifier)
                                                          for b in builds), grain)
    return PublishPlan(ref, latest.build_seq if latest else None,
                       latest.build_id if latest else None, marts)


def _whole_reason(catalog: Catalog, ref: str, state: PublishedState | None,
                  latest: BuildRecord | None, full: bool) -> tuple[str, list[BuildRecord]]:
    """Why every mart is written whole ("" when not), and the landed builds since the
    published one."""
    if full:
        return "asked for", []
    if latest is None:
        return f"{ref} has no build record", []
    if state is None or state.build_seq is None or state.build_id is None:
        return "the database has no record of the build it holds", []
    if state.ref != ref:
        return f"the database holds {state.ref}, not {ref}", []
    if state.build_seq > latest.build_seq:
        return f"{ref} is behind the build the database holds (a rollback)", []
    published = latest if latest.build_seq == state.build_seq else next(
        iter(_build(catalog, state.build_seq)), None)
    if published is None or published.build_id != state.build_id:
        return f"{ref} does not hold the build the database received", []
    builds = [b for b in builds_after(catalog, state.build_seq) if b.landed]
    if any(b.full_refresh for b in builds):
        return "a full rebuild since the last publish", []
    return "", builds


def _build(catalog: Catalog, build_seq: int) -> list[BuildRecord]:
    return [b for b in builds_after(catalog, build_seq - 1) if b.build_seq == build_seq]


def _shape_reason(catalog: Catalog, identifier: str, name: str,
                  db_columns: dict[str, list[str]]) -> str:
    if name not in db_columns:
        return "new to the database"
    columns = [f.name for f in catalog.load_table(identifier).schema().fields]
    if sorted(columns) != sorted(db_columns[name]):
        return "its columns changed"
    return ""


def report_marts(catalog: Catalog, sites: frozenset[str] | None,
                 days: int = REPORT_DAYS) -> dict[str, pl.DataFrame]:
    """What the site reports read (``tasks.report.build_report``), for ``sites`` (None:
    every site): the per-site marts whole, and the last ``days`` local days of the per-day
    ones, read by partition (not the history)."""
    last = _last_days(catalog, sites)
    recent: BooleanExpression = AlwaysFalse()
    for site, last_day in last.items():
        first = (last_day - timedelta(days=days - 1)).isoformat()
        recent = Or(recent, And(EqualTo(term=Reference("site_id"), value=literal(site)),
                                GreaterThanOrEqual(term=Reference("local_date"),
                                                   value=literal(first))))
    out = {}
    for name in REPORT_MARTS:
        identifier = f"{MART_NAMESPACE}.{name}"
        if not catalog.table_exists(identifier):
            continue
        per_day = "local_date" in catalog.load_table(identifier).schema().column_names
        out[name] = read_table(catalog, identifier, recent if per_day else _sites_filter(sites))
    return out


def _sites_filter(sites: frozenset[str] | None) -> BooleanExpression:
    if sites is None:
        return AlwaysTrue()
    where: BooleanExpression = AlwaysFalse()
    for site in sorted(sites):
        where = Or(where, EqualTo(term=Reference("site_id"), value=literal(site)))
    return where


def _last_days(catalog: Catalog, sites: frozenset[str] | None) -> dict[str, date]:
    """The last local day of each site (from the build's site parameters when present)."""
    source = (_SITE_PARAMETERS if catalog.table_exists(_SITE_PARAMETERS)
              else f"{MART_NAMESPACE}.mrt_daily_glycaemia")
    column = "last_date" if source == _SITE_PARAMETERS else "local_date"
    rows = read_table(catalog, source, _sites_filter(sites))
    if rows.height == 0:
        return {}
    last = rows.group_by("site_id").agg(pl.col(column).max())
    return dict(zip(last.get_column("site_id").to_list(), last.get_column(column).to_list(),
                    strict=True))
