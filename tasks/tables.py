"""Every table Cascade writes, declared once: raw collections, audit trail, and layouts.

Read by shaping, contracts, ingestion, validation and the lakehouse.

Every raw table carries the same lineage columns (``site_id``, ``ingest_run_id``,
``ingested_at``), a UTC event time used for partitioning (``<event>_at``), the site-local
wall-clock time and date, and ``extra``: a JSON object holding every field Nightscout sent
that the table does not model, so nothing an uploader adds is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

__all__ = [
    "AUDIT_TABLES",
    "BUILD_LOG",
    "CHANGES",
    "CHANGES_SCHEMA",
    "CHANGE_CURSOR_SCHEMA",
    "DELETIONS_SCHEMA",
    "DUPLICATES_SCHEMA",
    "INGEST_LOG_SCHEMA",
    "INGEST_LOG_TABLE",
    "RAW_NAMESPACE",
    "RAW_TABLES",
    "REJECTS_SCHEMA",
    "SITE_PARAMETERS",
    "RawTable",
    "TableLayout",
    "raw_layout",
    "raw_table",
]

RAW_NAMESPACE = "raw"

_UTC = pl.Datetime("us", "UTC")
_LOCAL = pl.Datetime("us")

_LINEAGE: dict[str, pl.DataType] = {
    "site_id": pl.String(),
    "ingest_run_id": pl.String(),
    "ingested_at": _UTC,
}


@dataclass(frozen=True)
class TableLayout:
    """Where a table lives and how it is partitioned and replaced."""

    identifier: str
    schema: pl.Schema
    partition_time: str | None  # month(partition_time), after identity(site_id)
    window_column: str  # column the replace filter bounds: a timestamp or a date
    partition_identity: tuple[str, ...] = ()  # identity partitions after those two


@dataclass(frozen=True)
class RawTable:
    """Layout of one raw table: its columns in order, key, and partition time column."""

    name: str
    endpoint: str
    id_column: str
    time_column: str
    columns: dict[str, pl.DataType]

    @property
    def identifier(self) -> str:
        return f"{RAW_NAMESPACE}.{self.name}"

    @property
    def polars_schema(self) -> pl.Schema:
        return pl.Schema(self.columns)


ENTRIES = RawTable(
    name="entries",
    endpoint="entries",
    id_column="entry_id",
    time_column="entry_at",
    columns={
        "entry_id": pl.String(),
        "entry_type": pl.String(),
        "entry_at": _UTC,
        "entry_epoch_ms": pl.Int64(),
        "local_at": _LOCAL,
        "local_date": pl.Date(),
        "date_string": pl.String(),
        "utc_offset_min": pl.Int32(),
        "device": pl.String(),
        "sgv_mg_dl": pl.Int32(),
        "mbg_mg_dl": pl.Int32(),
        "direction": pl.String(),
        "noise": pl.Int32(),
        "filtered": pl.Float64(),
        "unfiltered": pl.Float64(),
        "rssi": pl.Int32(),
        "slope": pl.Float64(),
        "intercept": pl.Float64(),
        "scale": pl.Float64(),
        "is_error_code": pl.Boolean(),
        "is_low": pl.Boolean(),
        "extra": pl.String(),
        **_LINEAGE,
    },
)

TREATMENTS = RawTable(
    name="treatments",
    endpoint="treatments",
    id_column="treatment_id",
    time_column="treatment_at",
    columns={
        "treatment_id": pl.String(),
        "event_type": pl.String(),
        "treatment_at": _UTC,
        "local_at": _LOCAL,
        "local_date": pl.Date(),
        "created_at_raw": pl.String(),
        "insulin_u": pl.Float64(),
        "carbs_g": pl.Float64(),
        "duration_min": pl.Float64(),
        "rate_u_per_h": pl.Float64(),
        "absolute_u_per_h": pl.Float64(),
        "glucose": pl.Float64(),
        "glucose_type": pl.String(),
        "units": pl.String(),
        "entered_by": pl.String(),
        "notes": pl.String(),
        "extra": pl.String(),
        **_LINEAGE,
    },
)

DEVICESTATUS = RawTable(
    name="devicestatus",
    endpoint="devicestatus",
    id_column="devicestatus_id",
    time_column="status_at",
    columns={
        "devicestatus_id": pl.String(),
        "device": pl.String(),
        "status_at": _UTC,
        "local_at": _LOCAL,
        "local_date": pl.Date(),
        "created_at_raw": pl.String(),
        "uploader_battery_pct": pl.Float64(),
        "pump_reservoir_u": pl.Float64(),
        "iob_u": pl.Float64(),
        "cob_g": pl.Float64(),
        "payload": pl.String(),
        "extra": pl.String(),
        **_LINEAGE,
    },
)

PROFILE = RawTable(
    name="profile",
    endpoint="profile",
    id_column="profile_id",
    time_column="valid_from_at",
    columns={
        "profile_id": pl.String(),
        "valid_from_at": _UTC,
        "created_at_raw": pl.String(),
        "default_profile": pl.String(),
        "timezone": pl.String(),
        "units": pl.String(),
        "dia_h": pl.Float64(),
        "store": pl.String(),
        "extra": pl.String(),
        **_LINEAGE,
    },
)

RAW_TABLES: dict[str, RawTable] = {t.name: t for t in (ENTRIES, TREATMENTS, DEVICESTATUS, PROFILE)}


def raw_table(name: str) -> RawTable:
    """Return the layout of raw table ``name`` (``entries``, ``treatments``, ...)."""
    try:
        return RAW_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown raw table {name!r}; "
                       f"expected one of {sorted(RAW_TABLES)}") from None


def raw_layout(table: RawTable) -> TableLayout:
    """The lakehouse layout of a raw table (profile is replaced per site, not per window)."""
    if table.name == "profile":
        return TableLayout(table.identifier, table.polars_schema, table.time_column, "")
    return TableLayout(table.identifier, table.polars_schema, table.time_column,
                       table.time_column)


# ------------------------------------------------------------------ audit trail


def _set_aside_schema(*, with_duplicate_of: bool) -> pl.Schema:
    """Columns of a set-aside row (reject or duplicate): what, where, why, and the payload."""
    kept = {"duplicate_of": pl.String()} if with_duplicate_of else {}
    return pl.Schema({
        "table_name": pl.String(),
        "site_id": pl.String(),
        "record_id": pl.String(),
        **kept,
        "event_at": _UTC,
        "reason": pl.String(),
        "payload": pl.String(),
        "window_date": pl.Date(),
        "ingest_run_id": pl.String(),
        "ingested_at": _UTC,
    })


REJECTS_SCHEMA: Final = _set_aside_schema(with_duplicate_of=False)
DUPLICATES_SCHEMA: Final = _set_aside_schema(with_duplicate_of=True)

INGEST_LOG_SCHEMA: Final = pl.Schema(
    {
        "table_name": pl.String(),
        "site_id": pl.String(),
        "window_date": pl.Date(),
        "n_fetched": pl.Int64(),
        "n_duplicates": pl.Int64(),
        "n_rejected": pl.Int64(),
        "n_committed": pl.Int64(),
        "n_deleted": pl.Int64(),  # marked deleted at the source (isValid false): not landed
        "ingest_run_id": pl.String(),
        "ingested_at": pl.Datetime("us", "UTC"),
    }
)


# audit.deletions: rows a run removed from raw (see tasks/landing.py), one per table, id and run
DELETIONS_SCHEMA: Final = pl.Schema(
    {
        "table_name": pl.String(),
        "site_id": pl.String(),
        "record_id": pl.String(),
        "event_at": _UTC,  # the removed row's time
        "local_date": pl.Date(),  # and its local day: the mart day that changes
        "reason": pl.String(),
        "payload": pl.String(),  # the removed row as JSON, its lineage included
        "window_date": pl.Date(),  # UTC day of event_at
        "ingest_run_id": pl.String(),  # the run that removed it
        "removed_at": _UTC,
    }
)

# audit.change_cursor: per site and collection, the newest API v3 srvModified landed (see
# tasks/change_feed.py); it reaches main only with a promote
CHANGE_CURSOR_SCHEMA: Final = pl.Schema(
    {
        "site_id": pl.String(),
        "collection": pl.String(),
        "cursor_ms": pl.Int64(),
        "n_changes": pl.Int64(),
        "status": pl.String(),
        "ingest_run_id": pl.String(),
        "updated_at": _UTC,
    }
)

# audit.site_settings: per site, the timezone its settings name (its block's, or
# CASCADE_TIMEZONE; null when neither does), as the last ingest saw them; dbt resolves
# each site's timezone from it before the profile's (int_site_timezone_resolved)
SITE_SETTINGS_SCHEMA: Final = pl.Schema(
    {
        "site_id": pl.String(),
        "timezone": pl.String(),
        "ingest_run_id": pl.String(),
        "updated_at": _UTC,
    }
)

AUDIT_TABLES: Final[dict[str, TableLayout]] = {
    "rejects": TableLayout("audit.rejects", REJECTS_SCHEMA, None, "window_date"),
    "duplicates": TableLayout("audit.duplicates", DUPLICATES_SCHEMA, None, "window_date"),
    "ingest_log": TableLayout("audit.ingest_log", INGEST_LOG_SCHEMA, None, "window_date"),
    "deletions": TableLayout("audit.deletions", DELETIONS_SCHEMA, None, "window_date"),
    "change_cursor": TableLayout("audit.change_cursor", CHANGE_CURSOR_SCHEMA, None, ""),
    "site_settings": TableLayout("audit.site_settings", SITE_SETTINGS_SCHEMA, None, ""),
}
# the audit tables dbt reads as sources (dbt/models/staging/__sources.yml), besides the
# change rows (CHANGES)
DBT_AUDIT_SOURCES: Final = ("duplicates", "ingest_log", "site_settings")

INGEST_LOG_TABLE: Final = AUDIT_TABLES["ingest_log"].identifier


# --------------------------------------------------------------- incremental build

CHANGES_SCHEMA: Final = pl.Schema({
    "site_id": pl.String(),
    "table_name": pl.String(),
    "utc_date": pl.Date(),  # null: every day of the site
    "source": pl.String(),
    "run_id": pl.String(),
    "recorded_at": _UTC,
    "build_seq": pl.Int64(),  # null while pending; the build that consumed the row
})
# what runs changed on the branch (tasks.changes): the incremental build's input
CHANGES: Final = TableLayout("audit.changed_partitions", CHANGES_SCHEMA, None, "",
                             partition_identity=("build_seq",))

# one row per build on the branch (tasks.build_log), read by validate and publish
BUILD_LOG: Final = TableLayout("audit.build_log", pl.Schema({
    "build_seq": pl.Int64(),
    "build_id": pl.String(),
    "branch": pl.String(),
    "built_at": _UTC,
    "full_refresh": pl.Boolean(),
    "reason": pl.String(),
    "project_checksum": pl.String(),
    "models_checksum": pl.String(),  # the project the branch's model tables were built with
    "status": pl.String(),
    "n_models": pl.Int64(),
    "n_tests": pl.Int64(),
    "n_failed": pl.Int64(),
    "n_changes": pl.Int64(),
    "failures": pl.String(),  # JSON list of lines
    "nodes": pl.String(),  # JSON {unique_id: status}
    "models": pl.String(),  # JSON {schema.name: [grain, touched set, whole]}
    "touched": pl.String(),  # JSON {set: null (everything) | [[site, whole, first, last]]}
    "tables": pl.String(),  # JSON {namespace.table: metadata location}
    "seconds": pl.String(),  # JSON {step: seconds}
}), None, "")

# the site-level values of the last successful build (dbt's int_site_parameters), which the
# next build compares its own with (dbt/models/build)
SITE_PARAMETERS: Final = TableLayout("build.site_parameters", pl.Schema({
    "site_id": pl.String(),
    "timezone_name": pl.String(),
    "sensor_interval_min": pl.Int32(),
    "first_date": pl.Date(),
    "last_date": pl.Date(),
    "basal_latest_from_at": pl.Datetime("us", "UTC"),
    "basal_history_digest": pl.String(),
    "basal_latest_digest": pl.String(),
}), None, "")
