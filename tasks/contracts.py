"""Data contracts (pandera, polars backend) for every raw table, and reject routing.

Dexcom error codes (``sgv`` 1–38) and LOW (39) are valid records: they are kept and
flagged by shaping, never rejected here. Rows that break a contract are not dropped
silently: ``check`` returns them as rejects with the check that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final
from zoneinfo import available_timezones

import pandera.polars as pa
import polars as pl
from pandera.engines.polars_engine import DateTime as _DateTime
from pandera.errors import SchemaErrors

from tasks.errors import ContractError
from tasks.schemas import raw_table
from tasks.shaping import REJECTS_SCHEMA, ShapeContext, empty_like, set_aside

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


def _not_in_future(data: pa.PolarsData, column: str) -> pl.LazyFrame:
    limit = pl.col("ingested_at") + pl.duration(days=_FUTURE_SLACK.days)
    return data.lazyframe.select(pl.col(column) <= limit)


class _Lineage(pa.DataFrameModel):
    site_id: str = pa.Field(nullable=False, str_length={"min_value": 1})
    ingest_run_id: str = pa.Field(nullable=False)
    ingested_at: _DateTime = pa.Field(nullable=False, dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})

    class Config:
        strict = False
        coerce = False


class EntriesContract(_Lineage):
    """raw.entries: one row per Nightscout entry (sgv, mbg, cal, ...)."""

    entry_id: str = pa.Field(nullable=False, unique=True)
    entry_type: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 32})
    entry_at: _DateTime = pa.Field(nullable=False, dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})
    sgv_mg_dl: pl.Int32 = pa.Field(nullable=True, ge=1, le=_MAX_MG_DL)
    mbg_mg_dl: pl.Int32 = pa.Field(nullable=True, ge=1, le=_MAX_MG_DL)
    noise: pl.Int32 = pa.Field(nullable=True, ge=0, le=10)

    @pa.dataframe_check(name="sgv entries carry a glucose value")
    def sgv_has_value(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("entry_type") != "sgv") | pl.col("sgv_mg_dl").is_not_null())

    @pa.dataframe_check(name="mbg entries carry a glucose value")
    def mbg_has_value(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("entry_type") != "mbg") | pl.col("mbg_mg_dl").is_not_null())

    @pa.dataframe_check(name="entry_at not more than a day after ingestion")
    def not_future(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_in_future(data, "entry_at")


class TreatmentsContract(_Lineage):
    """raw.treatments: one row per Nightscout treatment."""

    treatment_id: str = pa.Field(nullable=False, unique=True)
    event_type: str = pa.Field(nullable=False, str_length={"min_value": 1, "max_value": 64})
    treatment_at: _DateTime = pa.Field(nullable=False, dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})
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
    status_at: _DateTime = pa.Field(nullable=False, dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})
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
    valid_from_at: _DateTime = pa.Field(nullable=False, dtype_kwargs={"time_unit": "us", "time_zone": "UTC"})
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
    """Validate ``rows`` against the table's contract; route failing rows to rejects."""
    contract = CONTRACTS[table_name]
    if rows.height == 0:
        return Checked(rows, empty_like(REJECTS_SCHEMA))
    try:
        contract.validate(rows, lazy=True)
        return Checked(rows, empty_like(REJECTS_SCHEMA))
    except SchemaErrors as errors:
        cases = errors.failure_cases
    row_cases = cases.filter(pl.col("index").is_not_null())
    if row_cases.height < cases.height:  # a table-level failure (wrong dtype, missing column)
        first = cases.filter(pl.col("index").is_null()).row(0, named=True)
        raise ContractError(
            f"raw.{table_name} breaks its contract as a whole ({first['check']} on "
            f"{first['column']}): this is a bug in shaping, not bad data; nothing was written"
        )
    reasons = row_cases.group_by("index").agg(
        (pl.col("column") + pl.lit(": ") + pl.col("check")).unique().sort().str.join("; ")
        .alias("__reason")
    )
    indexed = rows.with_row_index("__i").with_columns(pl.col("__i").cast(pl.Int32))
    flagged = indexed.join(reasons, left_on="__i", right_on="index", how="left")
    valid = flagged.filter(pl.col("__reason").is_null()).drop("__i", "__reason")
    bad = flagged.filter(pl.col("__reason").is_not_null())
    payload_cols = [c for c in bad.columns if c not in ("__i", "__reason")]
    rejects = set_aside(bad, raw_table(table_name), ctx,
                        reason=pl.lit("contract: ") + pl.col("__reason"),
                        payload=pl.struct(payload_cols).struct.json_encode())
    return Checked(valid, rejects)


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
