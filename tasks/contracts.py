"""Data contracts (pandera, polars backend) for every raw table, and reject routing.

Dexcom error codes (``sgv`` 1–38) and LOW (39) are valid records: they are kept and
flagged by shaping, never rejected here. Rows that break a contract are not dropped
silently: ``check`` returns them as rejects with the check that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any, Final
from zoneinfo import available_timezones

import pandera.polars as pa
import polars as pl
from pandera.engines.polars_engine import DateTime as _DateTime

from tasks._pandera import run_dataframe_check
from tasks.errors import ContractError
from tasks.shaping import ShapeContext, empty_like, set_aside
from tasks.tables import REJECTS_SCHEMA, raw_table

__all__ = [
    "CONTRACTS",
    "Checked",
    "DevicestatusContract",
    "EntriesContract",
    "ProfileContract",
    "TreatmentsContract",
    "check",
    "enforce_reject_ratio",
]

_FUTURE_SLACK: Final = timedelta(days=1)  # uploader clocks drift; a day ahead is an error
_MAX_MG_DL: Final = 1000  # no CGM or meter reports more; beyond is corruption
# every timestamp column: microseconds in UTC, as the raw tables store them
_UTC_MICROS: Final[dict[str, Any]] = {"time_unit": "us", "time_zone": "UTC"}


def _not_in_future(data: pa.PolarsData, column: str) -> pl.LazyFrame:
    limit = pl.col("ingested_at") + pl.duration(days=_FUTURE_SLACK.days)
    return data.lazyframe.select(pl.col(column) <= limit)


class _Lineage(pa.DataFrameModel):
    site_id: str = pa.Field(nullable=False, str_length={"min_value": 1})
    ingest_run_id: str = pa.Field(nullable=False)
    ingested_at: _DateTime = pa.Field(nullable=False, dtype_kwargs=_UTC_MICROS)

    class Config:
        strict = False
        coerce = False


class EntriesContract(_Lineage):
    """raw.entries: one row per Nightscout entry (sgv, mbg, cal, ...)."""

    entry_id: str = pa.Field(nullable=False, unique=True)
    entry_type: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 32})
    entry_at: _DateTime = pa.Field(nullable=False, dtype_kwargs=_UTC_MICROS)
    sgv_mg_dl: pl.Int32 = pa.Field(nullable=True, ge=1, le=_MAX_MG_DL)
    mbg_mg_dl: pl.Int32 = pa.Field(nullable=True, ge=1, le=_MAX_MG_DL)
    noise: pl.Int32 = pa.Field(nullable=True, ge=0, le=10)

    @pa.dataframe_check(name="sgv entries carry a glucose value")
    def sgv_has_value(cls, data: pa.PolarsData) -> pl.LazyFrame:
        has_value = pl.col("sgv_mg_dl").is_not_null()
        return data.lazyframe.select((pl.col("entry_type") != "sgv") | has_value)

    @pa.dataframe_check(name="mbg entries carry a glucose value")
    def mbg_has_value(cls, data: pa.PolarsData) -> pl.LazyFrame:
        has_value = pl.col("mbg_mg_dl").is_not_null()
        return data.lazyframe.select((pl.col("entry_type") != "mbg") | has_value)

    @pa.dataframe_check(name="entry_at not more than a day after ingestion")
    def not_future(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_in_future(data, "entry_at")


class TreatmentsContract(_Lineage):
    """raw.treatments: one row per Nightscout treatment."""

    treatment_id: str = pa.Field(nullable=False, unique=True)
    event_type: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 64})
    treatment_at: _DateTime = pa.Field(nullable=False, dtype_kwargs=_UTC_MICROS)
    insulin_u: float = pa.Field(nullable=True, ge=0, le=100)
    carbs_g: float = pa.Field(nullable=True, ge=0, le=1000)
    duration_min: float = pa.Field(nullable=True, ge=0, le=60 * 24 * 14)
    rate_u_per_h: float = pa.Field(nullable=True, ge=0, le=50)
    absolute_u_per_h: float = pa.Field(nullable=True, ge=0, le=50)
    glucose: float = pa.Field(nullable=True, ge=0, le=_MAX_MG_DL)

    @pa.dataframe_check(name="treatment_at not more than a day after ingestion")
    def not_future(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_in_future(data, "treatment_at")


class DevicestatusContract(_Lineage):
    """raw.devicestatus: one row per device status upload."""

    devicestatus_id: str = pa.Field(nullable=False, unique=True)
    status_at: _DateTime = pa.Field(nullable=False, dtype_kwargs=_UTC_MICROS)
    uploader_battery_pct: float = pa.Field(nullable=True, ge=0, le=100)
    pump_reservoir_u: float = pa.Field(nullable=True, ge=0, le=1000)
    iob_u: float = pa.Field(nullable=True, ge=-100, le=200)
    cob_g: float = pa.Field(nullable=True, ge=0, le=2000)
    payload: str = pa.Field(nullable=False)

    @pa.dataframe_check(name="status_at not more than a day after ingestion")
    def not_future(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_in_future(data, "status_at")


class ProfileContract(_Lineage):
    """raw.profile: one row per Nightscout profile document."""

    profile_id: str = pa.Field(nullable=False, unique=True)
    valid_from_at: _DateTime = pa.Field(nullable=False, dtype_kwargs=_UTC_MICROS)
    timezone: str = pa.Field(nullable=True, isin=sorted(available_timezones() | {"UTC"}))
    dia_h: float = pa.Field(nullable=True, ge=0, le=24)


CONTRACTS: Final[dict[str, type[pa.DataFrameModel]]] = {
    "entries": EntriesContract,
    "treatments": TreatmentsContract,
    "devicestatus": DevicestatusContract,
    "profile": ProfileContract,
}


@dataclass(frozen=True)
class Checked:
    """Rows that passed the table's contract, and those that did not (with reasons)."""

    valid: pl.DataFrame
    rejects: pl.DataFrame


def check(table_name: str, rows: pl.DataFrame, ctx: ShapeContext) -> Checked:
    """Validate ``rows`` against the table's contract; route failing rows to rejects.

    The contract's declarations (dtypes, nullability, uniqueness, ``Field`` checks and
    dataframe checks) are evaluated as Polars expressions in one pass over the frame,
    named as pandera names its failure cases, rather than through pandera's check loop.

    Raises:
        ContractError: a column is missing or has the wrong dtype (a bug in shaping).
    """
    if rows.height == 0:
        return Checked(rows, empty_like(REJECTS_SCHEMA))
    schema = _schema(table_name)
    _check_layout(table_name, schema, rows)
    broken = _broken_rules(schema, rows)
    failed = broken.select(pl.any_horizontal(pl.all())).to_series()
    if not failed.any():
        return Checked(rows, empty_like(REJECTS_SCHEMA))
    reason = pl.concat_str([pl.when(pl.col(c)).then(pl.lit(c)) for c in sorted(broken.columns)],
                           separator="; ", ignore_nulls=True)
    bad = rows.filter(failed).with_columns(broken.filter(failed).select(reason).to_series()
                                           .alias("__reason"))
    rejects = set_aside(bad, raw_table(table_name), ctx,
                        reason=pl.lit("contract: ") + pl.col("__reason"),
                        payload=pl.struct(rows.columns).struct.json_encode())
    return Checked(rows.filter(~failed), rejects)


@cache
def _schema(table_name: str) -> pa.DataFrameSchema:
    return CONTRACTS[table_name].to_schema()


def _check_layout(table_name: str, schema: pa.DataFrameSchema, rows: pl.DataFrame) -> None:
    """Every declared column is there with its declared dtype, or ContractError."""
    for name, column in schema.columns.items():
        problem = None
        if name not in rows.columns:
            problem = "column_in_dataframe"
        elif not column.dtype.check(rows.schema[name]):
            problem = f"dtype('{column.dtype}')"
        if problem is not None:
            raise ContractError(
                f"raw.{table_name} breaks its contract as a whole ({problem} on {name}): "
                "this is a bug in shaping, not bad data; nothing was written"
            )


def _broken_rules(schema: pa.DataFrameSchema, rows: pl.DataFrame) -> pl.DataFrame:
    """One boolean column per rule, true where a row breaks it, named ``column: check``."""
    frame = rows.lazy()
    plans = [frame.select(_column_rules(schema, rows))]
    for rule in schema.checks:  # dataframe checks: the model's own functions, given the frame
        out = run_dataframe_check(rule, frame)
        label = f"{schema.name}: {rule.error or rule.name}"
        plans.append(out.select(_broken(pl.all_horizontal(pl.all()), rule.ignore_na).alias(label)))
    results = [column for plan in pl.collect_all(plans) for column in plan.get_columns()]
    results += [_duplicated(rows.get_column(name)).alias(f"{name}: field_uniqueness")
                for name, column in schema.columns.items() if column.unique]
    broken: dict[str, pl.Series] = {}
    for result in results:  # two checks of one name break a row if either does
        seen = broken.get(result.name)
        broken[result.name] = result if seen is None else seen | result
    return pl.DataFrame(list(broken.values()))


def _column_rules(schema: pa.DataFrameSchema, rows: pl.DataFrame) -> list[pl.Expr]:
    """Nullability and ``Field`` checks of every column, each true where a row breaks it."""
    rules: dict[str, pl.Expr] = {}
    for name, column in schema.columns.items():
        value = pl.col(name)
        if not column.nullable:  # pandera counts NaN as null
            nan = value.is_nan() if rows.schema[name].is_float() else pl.lit(False)
            rules[f"{name}: not_nullable"] = value.is_null() | nan
        for rule in column.checks:
            rules[f"{name}: {rule.error or rule.name}"] = _broken(_builtin(rule, value),
                                                                  rule.ignore_na)
    return [broken.alias(label) for label, broken in rules.items()]


def _broken(passed: pl.Expr, ignore_na: bool) -> pl.Expr:
    """True where a check's output is false; a null output passes when ``ignore_na``."""
    return (~passed).fill_null(not ignore_na)


def _builtin(rule: pa.Check, value: pl.Expr) -> pl.Expr:
    """A built-in ``Field`` check (``ge``, ``le``, ``str_length``, ``isin``) as an expression,
    the same comparison pandera's polars backend makes."""
    stats = rule.statistics or {}
    if rule.name == "greater_than_or_equal_to":
        return value.ge(stats["min_value"])
    if rule.name == "less_than_or_equal_to":
        return value.le(stats["max_value"])
    if rule.name == "isin":
        return value.is_in(list(stats["allowed_values"]))
    if rule.name == "str_length" and stats.get("exact_value") is None:
        low, high, n_chars = stats.get("min_value"), stats.get("max_value"), value.str.len_chars()
        if low is not None and high is not None:
            return n_chars.is_between(low, high)
        if low is not None:
            return n_chars.ge(low)
        if high is not None:
            return n_chars.le(high)
    raise NotImplementedError(
        f"contract check {rule.error or rule.name} has no Polars form in tasks.contracts: "
        "add it to _builtin"
    )


def _duplicated(values: pl.Series) -> pl.Series:
    """True for every row whose value another row has (pandera's ``unique=True``).

    Sorting and comparing neighbours finds out whether there is any repeat several
    times faster than hashing strings; the hash runs only when there is one.
    """
    ordered = values.gather(values.arg_sort())  # faster than Series.sort for text
    if values.null_count() < 2 and not ordered.head(-1).eq(ordered.tail(-1)).any():
        return pl.repeat(False, values.len(), dtype=pl.Boolean, eager=True)
    return values.is_duplicated()


def enforce_reject_ratio(table_name: str, day: str, n_seen: int, n_rejected: int,
                         max_ratio: float) -> None:
    """Raise ContractError when more than ``max_ratio`` of a day's rows were rejected."""
    if n_seen == 0 or n_rejected / n_seen <= max_ratio:
        return
    raise ContractError(
        f"{table_name} {day}: {n_rejected} of {n_seen} rows ({n_rejected / n_seen:.1%}) broke "
        f"the contract, above the {max_ratio:.1%} limit; nothing was committed for this day. "
        "Inspect the rows in audit.rejects, fix the source or raise max_reject_ratio"
    )
