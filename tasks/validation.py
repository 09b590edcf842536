"""Audit checks on a branch before it may be promoted.

Three kinds of check, each a ``Check`` with the figure it measured:

* dbt's own tests (from the build's ``run_results.json``);
* pandera contracts on the built marts, read back from Iceberg on the branch;
* reconciliation of raw row counts against what ingestion reported (``audit.ingest_log``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from tasks.lakehouse import read_table
from tasks.tables import INGEST_LOG_TABLE, RAW_TABLES

__all__ = [
    "MART_CONTRACTS",
    "Check",
    "check_dbt_results",
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


def check_dbt_results(build_dir: Path, branch_hash: str) -> list[Check]:
    """The build is of the branch as it is now, every model built and every test passed."""
    run_results = build_dir / "target" / "run_results.json"
    state_file = build_dir / "build_state.json"
    if not run_results.exists() or not state_file.exists():
        return [Check("dbt build results", False, "missing",
                      f"no build results in {build_dir}: run build_branch on this branch")]
    built = json.loads(state_file.read_text()).get("hash")
    if built != branch_hash:
        return [Check("dbt build is current", False, f"built {built}, branch now {branch_hash}",
                      "the branch changed since its last build: run build_branch again")]
    results = json.loads(run_results.read_text())["results"]
    bad = [r for r in results if r["status"] in ("error", "fail", "runtime error")]
    tests = [r for r in results if r["unique_id"].startswith(("test.", "unit_test."))]
    models = [r for r in results if r["unique_id"].startswith("model.")]
    figure = f"{len(models)} models, {len(tests)} tests, {len(bad)} failed"
    detail = "; ".join(f"{r['unique_id']}: {r.get('message') or r['status']}" for r in bad[:20])
    return [Check("dbt build and tests", not bad, figure, detail)]


def check_marts(catalog: Catalog) -> list[Check]:
    """Validate each gold mart on the branch against its pandera contract."""
    out = []
    for identifier, contract in MART_CONTRACTS.items():
        try:
            frame = read_table(catalog, identifier)
        except NoSuchTableError as exc:  # a missing mart is a failed check, not a crash
            out.append(Check(f"contract {identifier}", False, "missing", str(exc)[:200]))
            continue
        try:
            contract.validate(frame, lazy=True)
            out.append(Check(f"contract {identifier}", True, f"{frame.height} rows"))
        except SchemaErrors as errors:
            cases = errors.failure_cases
            detail = "; ".join(sorted({f"{c['column']}: {c['check']}" for c in
                                       cases.head(50).iter_rows(named=True)}))
            out.append(Check(f"contract {identifier}", False,
                             f"{cases.height} failures in {frame.height} rows", detail))
    return out


def reconcile_raw(catalog: Catalog) -> list[Check]:
    """Raw rows per site, table and UTC day equal what ingestion reported committing."""
    try:
        log = read_table(catalog, INGEST_LOG_TABLE)
    except NoSuchTableError:
        return [Check("reconciliation", False, "no ingest log",
                      "audit.ingest_log missing: was anything ingested on this branch?")]
    out = []
    for name, table in RAW_TABLES.items():
        if name == "profile":
            continue
        reported = log.filter(pl.col("table_name") == name).select(
            "site_id", pl.col("window_date").alias("day"), "n_committed")
        try:
            raw = read_table(catalog, table.identifier)
        except NoSuchTableError:
            raw = pl.DataFrame(schema={"site_id": pl.String, table.time_column: pl.Datetime("us", "UTC")})
        actual = raw.group_by("site_id", pl.col(table.time_column).dt.date().alias("day")).agg(
            pl.len().cast(pl.Int64).alias("n_raw"))
        joined = reported.join(actual, on=["site_id", "day"], how="full", coalesce=True)
        joined = joined.with_columns(pl.col("n_committed", "n_raw").fill_null(0))
        bad = joined.filter(pl.col("n_committed") != pl.col("n_raw"))
        figure = (f"{raw.height} rows in raw.{name}, {int(reported['n_committed'].sum())} "
                  f"reported over {reported.height} days")
        detail = "; ".join(f"{r['site_id']} {r['day']}: raw {r['n_raw']} vs reported "
                           f"{r['n_committed']}" for r in bad.head(10).iter_rows(named=True))
        out.append(Check(f"reconcile raw.{name}", bad.height == 0, figure, detail))
    return out


def render_markdown(branch: str, checks: list[Check]) -> str:
    """A markdown report: one row per check with its figure."""
    passed = sum(c.passed for c in checks)
    lines = [f"# Validation of `{branch}`", "",
             f"**{passed}/{len(checks)} checks passed** — "
             + ("promotable" if passed == len(checks) else "NOT promotable; branch kept"), "",
             "| check | result | figure | detail |", "| --- | --- | --- | --- |"]
    for c in checks:
        detail = c.detail.replace("|", "\\|")[:300]
        lines.append(f"| {c.name} | {'✅ pass' if c.passed else '❌ FAIL'} | {c.figure} | {detail} |")
    return "\n".join(lines)
