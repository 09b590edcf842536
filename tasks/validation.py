"""Audit checks on a branch before it may be promoted.

Every check is a ``Check`` with the figure it measured, and every input comes from the
branch itself (so ``validate`` runs in any process, with an empty ``CASCADE_HOME``):

* the latest build's record (``audit.build_log``): every model built, every test passed,
  and no table of the branch moved since the build;
* pandera contracts on the marts' partitions that build rebuilt, read back from Iceberg;
* reconciliation, for each (site, raw table, UTC day) the build consumed a change row of,
  of the raw rows against what ingestion reported committing (``audit.ingest_log``);
* whole-table invariants between the models, from snapshot summaries (no data read).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from itertools import pairwise
from typing import Any, Final

import pandera.polars as pa
import polars as pl
import pyarrow
from pandera.errors import SchemaErrors
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    Or,
    Reference,
)
from pyiceberg.expressions.literals import literal

from tasks.build_log import BuildRecord, TouchedSet, latest_build, table_locations
from tasks.changes import consumed_changes
from tasks.lakehouse import read_table
from tasks.tables import CHANGES_SCHEMA, INGEST_LOG_TABLE, RAW_TABLES

__all__ = [
    "MART_CONTRACTS",
    "Check",
    "check_build",
    "check_invariants",
    "check_marts",
    "reconcile_raw",
    "render_markdown",
]


@dataclass(frozen=True)
class Check:
    """One audit check: what was checked, whether it passed, and the figure behind it."""

    name: str
    passed: bool
    figure: str
    detail: str = ""


def _pct(nullable: bool = False) -> Any:
    """A percentage column: 0–100 (with float slack)."""
    return pa.Field(ge=0, le=100.0001, nullable=nullable)


class DailyGlycaemiaContract(pa.DataFrameModel):
    """marts.mrt_daily_glycaemia: one row per site and local day with readings."""

    site_id: str = pa.Field(nullable=False)
    n_readings: int = pa.Field(ge=0)
    coverage_pct: float = _pct()
    mean_mg_dl: float = pa.Field(ge=39, le=1000, nullable=True)
    sd_mg_dl: float = pa.Field(ge=0, nullable=True)
    cv_pct: float = pa.Field(ge=0, le=200, nullable=True)
    gmi_pct: float = pa.Field(ge=3.31, le=30, nullable=True)
    tir_pct: float = _pct(True)
    tbr_pct: float = _pct(True)
    tbr_severe_pct: float = _pct(True)
    tar_pct: float = _pct(True)
    tar_severe_pct: float = _pct(True)

    class Config:
        strict = False
        coerce = True

    @pa.dataframe_check(name="tbr + tir + tar = 100 on days with readings")
    def bands_sum_to_100(cls, data: pa.PolarsData) -> pl.LazyFrame:
        total = pl.col("tbr_pct") + pl.col("tir_pct") + pl.col("tar_pct")
        return data.lazyframe.select((pl.col("n_readings") == 0) | ((total - 100).abs() < 0.01))

    @pa.dataframe_check(name="severe bands within their parents")
    def severe_within_parent(cls, data: pa.PolarsData) -> pl.LazyFrame:
        ok = (pl.col("tbr_severe_pct") <= pl.col("tbr_pct") + 1e-9) & (
            pl.col("tar_severe_pct") <= pl.col("tar_pct") + 1e-9)
        return data.lazyframe.select(ok.fill_null(True))


class AgpHourlyContract(pa.DataFrameModel):
    """marts.mrt_agp_hourly: one row per site and local hour."""

    site_id: str = pa.Field(nullable=False)
    local_hour: int = pa.Field(ge=0, le=23)
    n_readings: int = pa.Field(ge=0)

    class Config:
        strict = False
        coerce = True

    @pa.dataframe_check(name="percentiles ordered p05 ≤ p25 ≤ p50 ≤ p75 ≤ p95")
    def ordered(cls, data: pa.PolarsData) -> pl.LazyFrame:
        cols = ["p05", "p25", "p50", "p75", "p95"]
        ok = pl.all_horizontal(pl.col(a) <= pl.col(b) for a, b in pairwise(cols))
        return data.lazyframe.select(ok.fill_null(True))


class QualityCoverageContract(pa.DataFrameModel):
    """marts.mrt_quality_coverage: one row per site and local day."""

    site_id: str = pa.Field(nullable=False)
    n_readings: int = pa.Field(ge=0)
    n_expected: int = pa.Field(gt=0)
    coverage_pct: float = _pct()
    n_gaps_over_15min: int = pa.Field(ge=0)
    longest_gap_min: float = pa.Field(ge=0, nullable=True)
    n_error_codes: int = pa.Field(ge=0)
    n_duplicates_removed: int = pa.Field(ge=0)

    class Config:
        strict = False
        coerce = True


class PeriodSummaryContract(pa.DataFrameModel):
    """marts.mrt_period_summary: one row per site and report period."""

    site_id: str = pa.Field(nullable=False)
    period: str = pa.Field(isin=["last_14d", "last_90d", "requested"])
    display_unit: str = pa.Field(isin=["mg/dL", "mmol/L"])
    n_days: int = pa.Field(ge=1)
    n_readings: int = pa.Field(ge=0)
    active_pct: float = _pct()
    is_sufficient: bool = pa.Field(nullable=False)
    tir_pct: float = _pct(True)
    tbr_pct: float = _pct(True)
    tar_pct: float = _pct(True)
    gri: float = pa.Field(ge=0, le=100, nullable=True)
    n_hypo_l1_episodes: int = pa.Field(ge=0)
    n_hypo_l2_episodes: int = pa.Field(ge=0)
    n_hyper_l1_episodes: int = pa.Field(ge=0)
    n_hyper_l2_episodes: int = pa.Field(ge=0)

    class Config:
        strict = False
        coerce = True

    @pa.dataframe_check(name="sufficient only with >= 70 % active over >= 14 days")
    def sufficiency(cls, data: pa.PolarsData) -> pl.LazyFrame:
        met = (pl.col("active_pct") >= 70 - 1e-9) & (pl.col("n_days") >= 14)
        return data.lazyframe.select(~pl.col("is_sufficient") | met)


class DailyTreatmentsContract(pa.DataFrameModel):
    """marts.mrt_daily_treatments: one row per site and local day."""

    site_id: str = pa.Field(nullable=False)
    n_boluses: int = pa.Field(ge=0)
    bolus_u: float = pa.Field(ge=0)
    n_carb_entries: int = pa.Field(ge=0)
    carbs_g: float = pa.Field(ge=0)
    basal_u: float = pa.Field(ge=0, le=500, nullable=True)

    class Config:
        strict = False
        coerce = True


MART_CONTRACTS: Final[dict[str, type[pa.DataFrameModel]]] = {
    "marts.mrt_period_summary": PeriodSummaryContract,
    "marts.mrt_daily_treatments": DailyTreatmentsContract,
    "marts.mrt_daily_glycaemia": DailyGlycaemiaContract,
    "marts.mrt_agp_hourly": AgpHourlyContract,
    "marts.mrt_quality_coverage": QualityCoverageContract,
}


def check_build(catalog: Catalog) -> tuple[list[Check], BuildRecord | None]:
    """The latest build of the branch: it built every model, passed every test, and no
    table moved since (so its results are the branch's)."""
    record = latest_build(catalog)
    if record is None:
        return [Check("dbt build results", False, "missing",
                      "no build on this branch: run build_branch on it")], None
    figure = (f"build {record.build_seq} ({'everything' if record.full_refresh else 'incremental'}"
              f"): {record.n_models} models, {record.n_tests} tests, {record.n_failed} failed")
    checks = [Check("dbt build and tests", record.status == "success", figure,
                    "; ".join(record.failures[:20]))]
    now = table_locations(catalog)
    moved = sorted(t for t in set(now) | set(record.tables) if now.get(t) != record.tables.get(t))
    checks.append(Check(
        "dbt build is current", not moved,
        f"build {record.build_seq}: {len(record.tables)} tables, {len(moved)} moved since",
        f"changed since the build: {', '.join(moved[:10])}; run build_branch again"
        if moved else ""))
    return checks, record


def check_marts(catalog: Catalog, record: BuildRecord | None = None) -> list[Check]:
    """Validate each gold mart's rebuilt partitions (all of it without a record) on the
    branch against its pandera contract."""
    out = []
    for identifier, contract in MART_CONTRACTS.items():
        rebuilt = record.rebuilt(identifier) if record is not None else TouchedSet(None)
        built = record.models.get(identifier) if record is not None else None
        where = rebuilt.iceberg_filter(built.grain) if built is not None else AlwaysTrue()
        try:
            frame = read_table(catalog, identifier, where)
        except NoSuchTableError as exc:  # a missing mart is a failed check, not a crash
            out.append(Check(f"contract {identifier}", False, "missing", str(exc)[:200]))
            continue
        scope = "all rows" if rebuilt.everything else f"{len(rebuilt.sites())} sites rebuilt"
        try:
            contract.validate(frame, lazy=True)
            out.append(Check(f"contract {identifier}", True, f"{frame.height} rows ({scope})"))
        except SchemaErrors as errors:
            cases = errors.failure_cases
            detail = "; ".join(sorted({f"{c['column']}: {c['check']}" for c in
                                       cases.head(50).iter_rows(named=True)}))
            out.append(Check(f"contract {identifier}", False,
                             f"{cases.height} failures in {frame.height} rows ({scope})",
                             detail))
    return out


def reconcile_raw(catalog: Catalog, record: BuildRecord | None) -> list[Check]:
    """Raw rows per site, table and UTC day equal what ingestion reported committing, for
    every day the build consumed a change of (whatever recorded the change)."""
    if not catalog.table_exists(INGEST_LOG_TABLE):
        return [Check("reconciliation", False, "no ingest log",
                      "audit.ingest_log missing: was anything ingested on this branch?")]
    changes = (consumed_changes(catalog, record.build_seq) if record is not None
               else pl.DataFrame(schema=CHANGES_SCHEMA))
    out = []
    for name, table in RAW_TABLES.items():
        if name == "profile":
            continue
        days = changes.filter(pl.col("table_name") == name).select("site_id", "utc_date")
        out.append(_reconcile_table(catalog, name, table.identifier, table.time_column,
                                    days.unique()))
    return out


def _reconcile_table(catalog: Catalog, name: str, identifier: str, time_column: str,
                     days: pl.DataFrame) -> Check:
    whole = set(days.filter(pl.col("utc_date").is_null()).get_column("site_id"))
    named = days.filter(pl.col("utc_date").is_not_null() & ~pl.col("site_id").is_in(whole))
    log_where = _days_filter(named, whole, "window_date", dates=True)
    reported = read_table(catalog, INGEST_LOG_TABLE, And(
        EqualTo(term=Reference("table_name"), value=literal(name)), log_where)).select(
        "site_id", pl.col("window_date").alias("day"), "n_committed")
    actual = _raw_counts(catalog, identifier, time_column, _days_filter(named, whole,
                                                                        time_column))
    joined = reported.join(actual, on=["site_id", "day"], how="full", coalesce=True)
    joined = joined.with_columns(pl.col("n_committed", "n_raw").fill_null(0))
    bad = joined.filter(pl.col("n_committed") != pl.col("n_raw"))
    figure = (f"{int(joined['n_raw'].sum())} rows in raw.{name} over {days.height} changed "
              f"days, {int(reported['n_committed'].sum())} reported")
    detail = "; ".join(f"{r['site_id']} {r['day']}: raw {r['n_raw']} vs reported "
                       f"{r['n_committed']}" for r in bad.head(10).iter_rows(named=True))
    return Check(f"reconcile raw.{name}", bad.height == 0, figure, detail)


def _days_filter(days: pl.DataFrame, whole: set[str], column: str,
                 dates: bool = False) -> BooleanExpression:
    """Rows of the (site, UTC day) pairs in ``days`` and of the sites in ``whole``:
    ``column`` a date (``dates``) or a UTC timestamp."""
    where: BooleanExpression = AlwaysFalse()
    if whole:
        where = In(term=Reference("site_id"), values={literal(s) for s in whole})
    for (site,), group in days.group_by("site_id"):
        site_days = sorted(group.get_column("utc_date").to_list())
        one: BooleanExpression = AlwaysFalse()
        for lo, hi in _runs(site_days):
            start = lo.isoformat() if dates else f"{lo.isoformat()}T00:00:00+00:00"
            end_day = hi + timedelta(days=1)
            end = end_day.isoformat() if dates else f"{end_day.isoformat()}T00:00:00+00:00"
            one = Or(one, And(GreaterThanOrEqual(term=Reference(column), value=literal(start)),
                              LessThan(term=Reference(column), value=literal(end))))
        where = Or(where, And(EqualTo(term=Reference("site_id"), value=literal(str(site))),
                              one))
    return where


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days as (first, last) runs."""
    out: list[tuple[date, date]] = []
    for day in days:
        if out and day == out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out


def _raw_counts(catalog: Catalog, identifier: str, time_column: str,
                where: BooleanExpression) -> pl.DataFrame:
    """Rows per site and UTC day of the raw table's rows matching ``where``, streamed in
    batches (memory follows a batch, not the rows reconciled)."""
    empty = pl.DataFrame(schema={"site_id": pl.String(), "day": pl.Date(), "n_raw": pl.Int64()})
    if not catalog.table_exists(identifier):
        return empty
    scan = catalog.load_table(identifier).scan(row_filter=where,
                                               selected_fields=("site_id", time_column))
    parts = [empty]
    for batch in scan.to_arrow_batch_reader():
        frame = pl.from_arrow(pyarrow.Table.from_batches([batch]))
        parts.append(frame.group_by("site_id", pl.col(time_column).dt.date().alias("day"))  # type: ignore[union-attr]
                     .agg(pl.len().cast(pl.Int64).alias("n_raw")))
    return pl.concat(parts).group_by("site_id", "day").agg(pl.col("n_raw").sum())


# (model, relation, model) — left's live rows must relate to right's as named
_INVARIANTS: Final = (
    ("marts.mrt_quality_coverage", "==", "silver.dim_date",
     "one quality row per day of a site's span"),
    ("silver.int_expected_readings_computed", "==", "silver.dim_date",
     "one expected count per day of a site's span"),
    ("marts.mrt_daily_glycaemia", "<=", "marts.mrt_quality_coverage",
     "a glycaemia row only for a day of the span"),
    ("silver.int_cgm_gaps_measured", "<=", "silver.fct_cgm_reading",
     "a gap per reading with glucose"),
    ("silver.fct_cgm_reading", "<=", "staging.stg_entries", "readings are entries"),
)


def check_invariants(catalog: Catalog) -> list[Check]:
    """Row counts between models that must hold on the whole tables, from the snapshot
    summaries (no data file is read)."""
    counts = {name: _live_rows(catalog, name)
              for name in {t for left, _, right, _ in _INVARIANTS for t in (left, right)}}
    out = []
    for left, relation, right, meaning in _INVARIANTS:
        a, b = counts[left], counts[right]
        if a is None or b is None:
            out.append(Check(f"invariant {left} {relation} {right}", False, "not measurable",
                             f"{left if a is None else right} missing, or has equality "
                             "deletes: its live rows are not in its snapshot summary"))
            continue
        held = a == b if relation == "==" else a <= b
        out.append(Check(f"invariant {left} {relation} {right}", held, f"{a} vs {b}",
                         "" if held else meaning))
    return out


def _live_rows(catalog: Catalog, identifier: str) -> int | None:
    if not catalog.table_exists(identifier):
        return None
    snapshot = catalog.load_table(identifier).current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    summary = snapshot.summary
    if summary.get("total-records") is None or int(summary.get("total-equality-deletes") or 0):
        return None
    return int(summary.get("total-records") or 0) - int(
        summary.get("total-position-deletes") or 0)


def render_markdown(branch: str, checks: list[Check]) -> str:
    """A markdown report: one row per check with its figure."""
    passed = sum(c.passed for c in checks)
    lines = [f"# Validation of `{branch}`", "",
             f"**{passed}/{len(checks)} checks passed** — "
             + ("promotable" if passed == len(checks) else "NOT promotable; branch kept"), "",
             "| check | result | figure | detail |", "| --- | --- | --- | --- |"]
    for c in checks:
        detail = c.detail.replace("|", "\\|")[:300]
        verdict = "✅ pass" if c.passed else "❌ FAIL"
        lines.append(f"| {c.name} | {verdict} | {c.figure} | {detail} |")
    return "\n".join(lines)
