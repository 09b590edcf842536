"""Hand-written raw.* and audit.duplicates rows for the dbt model tests.

Two sites:

- ``clinic-a``: Europe/London (from its profile), a Dexcom every 5 minutes
  over 2024-03-30 (24 h), 2024-03-31 (clocks go forward: 23 h) and the first
  minutes of 2024-04-01 local. The DST day holds LOW (39), an error code, a
  duplicate reading, a 35-minute gap and one duplicate dropped at ingest.
- ``clinic-b``: no profile, so UTC; a Libre-like sensor every minute.
- ``clinic-c``: no profile, so UTC; one reading exactly at and beside every consensus
  threshold on 2024-03-31: 53, 54, 69, 70, 180, 181, 250, 251 mg/dL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["BOUNDARY_READINGS", "write_generated_database", "write_raw_database"]

# clinic-c's readings: each consensus threshold (< 54, < 70, 70-180, > 180, > 250) with the
# value on either side of it
BOUNDARY_READINGS = (53, 54, 69, 70, 180, 181, 250, 251)

_INGESTED_AT = datetime(2024, 4, 2, 6, 0, tzinfo=UTC)

_RAW_DDL = """
create schema raw;
create schema audit;
create table raw.entries (
    entry_id varchar, entry_type varchar, entry_at timestamptz,
    entry_epoch_ms bigint, local_at timestamp, local_date date,
    date_string varchar, utc_offset_min integer, device varchar,
    sgv_mg_dl integer, mbg_mg_dl integer, direction varchar, noise integer,
    filtered double, unfiltered double, rssi integer, slope double,
    intercept double, scale double, is_error_code boolean, is_low boolean,
    extra varchar, site_id varchar, ingest_run_id varchar,
    ingested_at timestamptz
);
create table raw.treatments (
    treatment_id varchar, event_type varchar, treatment_at timestamptz,
    local_at timestamp, local_date date, created_at_raw varchar,
    insulin_u double, carbs_g double, duration_min double,
    rate_u_per_h double, absolute_u_per_h double, glucose double,
    glucose_type varchar, units varchar, entered_by varchar, notes varchar,
    extra varchar, site_id varchar, ingest_run_id varchar,
    ingested_at timestamptz
);
create table raw.devicestatus (
    devicestatus_id varchar, device varchar, status_at timestamptz,
    local_at timestamp, local_date date, created_at_raw varchar,
    uploader_battery_pct double, pump_reservoir_u double, iob_u double,
    cob_g double, payload varchar, extra varchar, site_id varchar,
    ingest_run_id varchar, ingested_at timestamptz
);
create table raw.profile (
    profile_id varchar, valid_from_at timestamptz, created_at_raw varchar,
    default_profile varchar, timezone varchar, units varchar, dia_h double,
    store varchar, extra varchar, site_id varchar, ingest_run_id varchar,
    ingested_at timestamptz
);
create table audit.ingest_log (
    table_name varchar, site_id varchar, window_date date, n_fetched bigint,
    n_duplicates bigint, n_rejected bigint, n_committed bigint, n_deleted bigint,
    ingest_run_id varchar, ingested_at timestamptz
);
create table audit.changed_partitions (
    site_id varchar, table_name varchar, utc_date date, source varchar,
    run_id varchar, recorded_at timestamptz, build_seq bigint
);
create table audit.site_settings (
    site_id varchar, timezone varchar, ingest_run_id varchar, updated_at timestamptz
);
create schema cascade_meta;
create table cascade_meta.built_models (
    schema_name varchar, model_name varchar, grain varchar, touched varchar,
    builds_whole boolean
);
create table audit.duplicates (
    table_name varchar, site_id varchar, record_id varchar,
    duplicate_of varchar, event_at timestamptz, reason varchar,
    payload varchar, window_date date, ingest_run_id varchar,
    ingested_at timestamptz
);
"""


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _clinic_a_sgv() -> list[tuple[str, int]]:
    """(UTC time, sgv) of clinic-a's CGM readings, before dedup."""
    day_0 = [("2024-03-30 12:00", 100), ("2024-03-30 12:05", 110),
             ("2024-03-30 12:10", 120)]
    # 2024-03-31: GMT until 01:00 UTC, then BST (local = UTC + 1 h)
    dst_day = [
        ("2024-03-31 00:00", 39),   # LOW
        ("2024-03-31 00:05", 50),
        ("2024-03-31 00:10", 65),
        ("2024-03-31 00:15", 100),
        ("2024-03-31 00:20", 5),    # device error code
        ("2024-03-31 00:25", 120),
        ("2024-03-31 00:30", 180),
        ("2024-03-31 00:35", 181),
        ("2024-03-31 01:10", 250),  # 35 min after 00:35; 02:10 BST
        ("2024-03-31 01:15", 251),
        ("2024-03-31 01:20", 300),
    ]
    # 23:30 UTC on 2024-03-31 is 00:30 BST on 2024-04-01
    day_2 = [("2024-03-31 23:30", 140), ("2024-03-31 23:35", 160)]
    return day_0 + dst_day + day_2


def _entry(
    entry_id: str, site_id: str, device: str, at: datetime, sgv: int | None,
    *, entry_type: str = "sgv", mbg: int | None = None,
    ingested_at: datetime = _INGESTED_AT, epoch_only: bool = False,
) -> tuple[object, ...]:
    # local_* are deliberately the UTC wall clock: dbt must recompute them
    return (
        entry_id, entry_type, None if epoch_only else at,
        int(at.timestamp() * 1000), at.replace(tzinfo=None), at.date(),
        at.isoformat(), 0, device, sgv, mbg, "Flat", 1, None, None, None,
        None, None, None, sgv is not None and 1 <= sgv <= 38, sgv == 39,
        "{}", site_id, "run-1", ingested_at,
    )


def _entries() -> list[tuple[object, ...]]:
    rows = [
        _entry(f"a-{i:02d}", "clinic-a", "dexcom-g6", _utc(at), sgv,
               epoch_only=(i == 0))
        for i, (at, sgv) in enumerate(_clinic_a_sgv())
    ]
    # same device and time as a-04 (00:05, 50), ingested earlier: dropped
    rows.append(_entry("a-dup", "clinic-a", "dexcom-g6",
                       _utc("2024-03-31 00:05"), 52,
                       ingested_at=_INGESTED_AT - timedelta(days=1)))
    # a meter reading is an entry but not a CGM reading
    rows.append(_entry("a-mbg", "clinic-a", "meter", _utc("2024-03-30 12:02"),
                       None, entry_type="mbg", mbg=105))
    start = _utc("2024-03-31 10:00")
    rows.extend(
        _entry(f"b-{i:02d}", "clinic-b", "libre-2",
               start + timedelta(minutes=i), 100 + 10 * i)
        for i in range(10)
    )
    at = _utc("2024-03-31 08:00")
    rows.extend(
        _entry(f"c-{i:02d}", "clinic-c", "dexcom-g7", at + timedelta(minutes=5 * i), sgv)
        for i, sgv in enumerate(BOUNDARY_READINGS)
    )
    return rows


def _treatments() -> list[tuple[object, ...]]:
    def row(tid: str, event: str, at: str, insulin: float | None,
            carbs: float | None) -> tuple[object, ...]:
        t = _utc(at)
        return (tid, event, t, t.replace(tzinfo=None), t.date(), at, insulin,
                carbs, None, None, None, None, None, "mg/dl", "care", None,
                "{}", "clinic-a", "run-1", _INGESTED_AT)

    return [
        row("t-1", "Meal Bolus", "2024-03-30 12:00", 4.0, 45.0),
        row("t-2", "Correction Bolus", "2024-03-31 01:15", 1.5, None),
        row("t-3", "Carb Correction", "2024-03-31 00:05", None, 15.0),
        row("t-4", "Site Change", "2024-03-31 09:00", None, None),
    ]


def _devicestatus() -> list[tuple[object, ...]]:
    at = _utc("2024-03-31 09:00")
    payload = '{"uploader": {"battery": 81}, "pump": {"battery": {"percent": 64}}}'
    return [("d-1", "loop://iphone", at, at.replace(tzinfo=None), at.date(),
             "2024-03-31T09:00:00Z", None, 120.0, 1.2, 10.0, payload, "{}",
             "clinic-a", "run-1", _INGESTED_AT)]


def _profiles() -> list[tuple[object, ...]]:
    def row(pid: str, at: str, tz: str) -> tuple[object, ...]:
        return (pid, _utc(at), at, "Default", tz, "mg/dl", 5.0, "{}", "{}",
                "clinic-a", "run-1", _INGESTED_AT)

    return [
        row("p-1", "2024-01-01 00:00", "America/New_York"),
        row("p-2", "2024-03-01 00:00", "Europe/London"),
    ]


def _duplicates() -> list[tuple[object, ...]]:
    at = _utc("2024-03-31 00:40")
    return [("entries", "clinic-a", "a-ingest-dup", "a-10", at, "same_id",
             '{"type": "sgv", "sgv": 181}', at.date(), "run-1", _INGESTED_AT)]


def write_raw_database(path: Path) -> None:
    """Create the DuckDB file `path` with the raw and audit tables filled."""
    tables = {
        "raw.entries": _entries(),
        "raw.treatments": _treatments(),
        "raw.devicestatus": _devicestatus(),
        "raw.profile": _profiles(),
        "audit.duplicates": _duplicates(),
    }
    with duckdb.connect(str(path)) as con:
        con.execute("set TimeZone = 'UTC'")
        con.execute(_RAW_DDL)
        for table, rows in tables.items():
            marks = ", ".join("?" * len(rows[0]))
            con.executemany(f"insert into {table} values ({marks})", rows)


def write_generated_database(
    path: Path, entries: list[Any], profiles: list[tuple[object, ...]]
) -> None:
    """Create the DuckDB file ``path`` with generated entries (polars frames in the
    ``raw.entries`` layout) and profile rows; the other raw tables stay empty."""
    with duckdb.connect(str(path)) as con:
        con.execute("set TimeZone = 'UTC'")
        con.execute(_RAW_DDL)
        for frame in entries:
            con.register("generated_entries", frame.to_arrow())
            con.execute("insert into raw.entries select * from generated_entries")
            con.unregister("generated_entries")
        marks = ", ".join("?" * len(profiles[0]))
        con.executemany(f"insert into raw.profile values ({marks})", profiles)
