"""dbt project: build on DuckDB over hand-written raw rows, check the marts.

Expected values are worked out by hand from `dbt_fixtures` (see its
docstring for the two sites). clinic-a's 2024-03-31 (Europe/London, 23 hours)
holds these glucose readings, error code excluded:

    39 (LOW), 50, 65, 100, 120, 180, 181, 250, 251, 300      n = 10
    sum 1536, mean 153.6, squared deviations sum to 77 378.4
    < 54: 39, 50            70-180: 100, 120, 180        > 250: 251, 300
    < 70: 39, 50, 65        > 180: 181, 250, 251, 300
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.unit.dbt_fixtures import write_raw_database

_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
_DST_DAY = date(2024, 3, 31)


def _run_dbt(args: list[str], tmp: Path, **env: str) -> None:
    """Run dbt in a child process (dbt-duckdb keeps its connection open)."""
    command = [
        str(Path(sys.executable).with_name("dbt")),
        *args,
        "--project-dir", str(_PROJECT_DIR),
        "--profiles-dir", str(_PROJECT_DIR),
        "--target-path", str(tmp / "target"),
        "--log-path", str(tmp / "logs"),
        "--no-partial-parse",
        "--no-send-anonymous-usage-stats",
        "--no-use-colors",
    ]
    environ = {
        key: value for key, value in os.environ.items()
        if key != "CASCADE_TIMEZONE"
    }
    done = subprocess.run(
        command, env={**environ, **env}, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the whole project once on DuckDB; yield the database file."""
    tmp = tmp_path_factory.mktemp("dbt")
    database = tmp / "cascade.duckdb"
    write_raw_database(database)
    _run_dbt(["build", "--target", "duckdb", "--threads", "4"], tmp,
             CASCADE_DUCKDB_PATH=str(database))
    yield database


def _rows(database: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(database), read_only=True) as con:
        cursor = con.execute(sql)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _one(database: Path, sql: str) -> dict[str, Any]:
    rows = _rows(database, sql)
    assert len(rows) == 1, rows
    return rows[0]


def _glycaemia(database: Path, site_id: str, day: date) -> dict[str, Any]:
    return _one(database, f"""
        select * from marts.mrt_daily_glycaemia
        where site_id = '{site_id}' and local_date = '{day}'
    """)


def _quality(database: Path, site_id: str, day: date) -> dict[str, Any]:
    return _one(database, f"""
        select * from marts.mrt_quality_coverage
        where site_id = '{site_id}' and local_date = '{day}'
    """)


def test_build_runs_every_model_and_test(built: Path) -> None:
    # a partitioned model is a view over its new rows (<model>__delta) and, on later
    # builds, its prior rows; the small whole models are tables
    models = _rows(built, """
        select table_schema, count(*) as n from information_schema.tables
        where table_schema in ('build', 'staging', 'silver', 'marts')
            and table_name not like '%\\_\\_delta' escape '\\'
        group by table_schema order by table_schema
    """)
    assert models == [
        {"table_schema": "build", "n": 6},
        {"table_schema": "marts", "n": 6},
        {"table_schema": "silver", "n": 16},
        {"table_schema": "staging", "n": 6},
    ]


def test_daily_mean_excludes_error_codes_and_counts_low_as_39(
    built: Path,
) -> None:
    day = _glycaemia(built, "clinic-a", _DST_DAY)
    assert day["n_readings"] == 10
    assert day["mean_mg_dl"] == pytest.approx(1536 / 10)


def test_daily_sd_is_sample_sd(built: Path) -> None:
    day = _glycaemia(built, "clinic-a", _DST_DAY)
    assert day["sd_mg_dl"] == pytest.approx(math.sqrt(77_378.4 / 9))


def test_daily_cv_is_sd_over_mean(built: Path) -> None:
    day = _glycaemia(built, "clinic-a", _DST_DAY)
    expected = 100 * math.sqrt(77_378.4 / 9) / 153.6
    assert day["cv_pct"] == pytest.approx(expected)


def test_daily_gmi_follows_bergenstal(built: Path) -> None:
    day = _glycaemia(built, "clinic-a", _DST_DAY)
    assert day["gmi_pct"] == pytest.approx(3.31 + 0.02392 * 153.6)


def test_daily_time_in_ranges_follow_consensus_bands(built: Path) -> None:
    day = _glycaemia(built, "clinic-a", _DST_DAY)
    assert {
        key: pytest.approx(day[key])
        for key in ("tir_pct", "tbr_pct", "tbr_severe_pct", "tar_pct",
                    "tar_severe_pct")
    } == {
        "tir_pct": 30.0,
        "tbr_pct": 30.0,
        "tbr_severe_pct": 20.0,
        "tar_pct": 40.0,
        "tar_severe_pct": 20.0,
    }


def test_time_in_ranges_at_the_exact_thresholds(built: Path) -> None:
    # 53 54 69 | 70 180 | 181 250 251: < 54 holds 53 only, < 70 holds 69 but not 70,
    # 70-180 includes both ends, > 180 starts at 181, > 250 holds 251 only
    day = _glycaemia(built, "clinic-c", _DST_DAY)
    assert day["n_readings"] == 8
    assert {key: day[key] for key in ("tbr_severe_pct", "tbr_pct", "tir_pct", "tar_pct",
                                      "tar_severe_pct")} == pytest.approx(
        {"tbr_severe_pct": 12.5, "tbr_pct": 37.5, "tir_pct": 25.0, "tar_pct": 37.5,
         "tar_severe_pct": 12.5})


def test_dst_day_expects_276_readings(built: Path) -> None:
    day = _quality(built, "clinic-a", _DST_DAY)
    assert (day["n_expected"], day["n_readings"]) == (276, 10)
    assert day["coverage_pct"] == pytest.approx(100 * 10 / 276)


def test_normal_day_expects_288_readings(built: Path) -> None:
    day = _quality(built, "clinic-a", date(2024, 3, 30))
    assert day["n_expected"] == 288
    assert day["coverage_pct"] == pytest.approx(100 * 3 / 288)


def test_one_minute_sensor_expects_1440_readings(built: Path) -> None:
    day = _quality(built, "clinic-b", _DST_DAY)
    assert day["n_expected"] == 1440
    assert day["coverage_pct"] == pytest.approx(100 * 10 / 1440)


def test_glycaemia_coverage_matches_quality_coverage(built: Path) -> None:
    day = _glycaemia(built, "clinic-a", _DST_DAY)
    assert day["coverage_pct"] == pytest.approx(100 * 10 / 276)


def test_gap_over_15_minutes_is_counted_and_measured(built: Path) -> None:
    day = _quality(built, "clinic-a", _DST_DAY)
    # 00:35 -> 01:10 UTC; the error code at 00:20 leaves a 10-minute gap
    assert (day["n_gaps_over_15min"], day["longest_gap_min"]) == (1, 35.0)


def test_day_without_gaps_has_longest_gap_zero(built: Path) -> None:
    day = _quality(built, "clinic-a", date(2024, 3, 30))
    assert (day["n_gaps_over_15min"], day["longest_gap_min"]) == (0, 0.0)


def test_error_codes_are_counted(built: Path) -> None:
    assert _quality(built, "clinic-a", _DST_DAY)["n_error_codes"] == 1


def test_duplicates_from_ingest_and_staging_are_counted(built: Path) -> None:
    # a-dup (same device and time as a-04) + a-ingest-dup from audit
    day = _quality(built, "clinic-a", _DST_DAY)
    assert day["n_duplicates_removed"] == 2


def test_duplicate_reading_keeps_latest_ingested(built: Path) -> None:
    row = _one(built, """
        select reading_id, glucose_mg_dl from silver.fct_cgm_reading
        where site_id = 'clinic-a'
            and reading_at = '2024-03-31 00:05:00+00'
    """)
    assert row == {"reading_id": "a-04", "glucose_mg_dl": 50}


def test_error_code_reading_kept_without_glucose(built: Path) -> None:
    row = _one(built, """
        select is_error_code, glucose_mg_dl, sgv_raw
        from silver.fct_cgm_reading where reading_id = 'a-07'
    """)
    assert row == {"is_error_code": True, "glucose_mg_dl": None, "sgv_raw": 5}


def test_reading_without_date_gets_time_from_epoch(built: Path) -> None:
    row = _one(built, """
        select cast(reading_at as varchar) as reading_at
        from silver.fct_cgm_reading where reading_id = 'a-00'
    """)
    assert row["reading_at"] == "2024-03-30 12:00:00+00"


def test_local_hour_follows_dst(built: Path) -> None:
    # 01:10 UTC on 2024-03-31 is 02:10 BST: hour 1 does not exist that day
    hours = _rows(built, f"""
        select distinct local_hour from silver.fct_cgm_reading
        where site_id = 'clinic-a' and local_date = '{_DST_DAY}'
        order by local_hour
    """)
    assert [row["local_hour"] for row in hours] == [0, 2]


def test_local_date_is_recomputed_from_utc(built: Path) -> None:
    # 23:30 UTC on 2024-03-31 is 00:30 BST on 2024-04-01
    row = _one(built, """
        select local_date, local_at from silver.fct_cgm_reading
        where reading_id = 'a-14'
    """)
    assert row == {
        "local_date": date(2024, 4, 1),
        "local_at": datetime(2024, 4, 1, 0, 30),
    }


def test_site_without_profile_uses_utc(built: Path) -> None:
    row = _one(built, """
        select distinct timezone_name from silver.fct_cgm_reading
        where site_id = 'clinic-b'
    """)
    assert row["timezone_name"] == "UTC"


def test_dim_date_has_23_hour_dst_day(built: Path) -> None:
    days = _rows(built, """
        select local_date, day_of_week, is_weekend, day_length_min
        from silver.dim_date where site_id = 'clinic-a' order by local_date
    """)
    assert [tuple(day.values()) for day in days] == [
        (date(2024, 3, 30), 6, True, 1440),
        (date(2024, 3, 31), 7, True, 1380),
        (date(2024, 4, 1), 1, False, 1440),
    ]


def test_dim_device_measures_sensor_interval(built: Path) -> None:
    devices = _rows(built, """
        select device, n_readings, n_error_codes, sensor_interval_min
        from silver.dim_device order by device
    """)
    assert devices == [
        {"device": "dexcom-g6", "n_readings": 16, "n_error_codes": 1,
         "sensor_interval_min": 5},
        {"device": "dexcom-g7", "n_readings": 8, "n_error_codes": 0,
         "sensor_interval_min": 5},
        {"device": "libre-2", "n_readings": 10, "n_error_codes": 0,
         "sensor_interval_min": 1},
    ]


def test_dim_profile_scd_closes_superseded_version(built: Path) -> None:
    versions = _rows(built, """
        select profile_id, cast(valid_to_at as varchar) as valid_to_at,
            is_current
        from silver.dim_profile_scd order by valid_from_at
    """)
    assert versions == [
        {"profile_id": "p-1", "valid_to_at": "2024-03-01 00:00:00+00",
         "is_current": False},
        {"profile_id": "p-2", "valid_to_at": None, "is_current": True},
    ]


def test_bolus_and_carb_events_split_treatments(built: Path) -> None:
    boluses = _rows(built, "select bolus_id from silver.fct_bolus_event")
    carbs = _rows(built, "select carb_id from silver.fct_carb_event")
    assert sorted(row["bolus_id"] for row in boluses) == ["t-1", "t-2"]
    assert sorted(row["carb_id"] for row in carbs) == ["t-1", "t-3"]


def test_agp_percentiles_interpolate(built: Path) -> None:
    # 100, 110, ..., 190: quantile_cont at p is 100 + 10 * p * 9
    hour = _one(built, """
        select n_readings, p05, p25, p50, p75, p95 from marts.mrt_agp_hourly
        where site_id = 'clinic-b' and local_hour = 10
    """)
    assert hour == pytest.approx({
        "n_readings": 10, "p05": 104.5, "p25": 122.5, "p50": 145.0,
        "p75": 167.5, "p95": 185.5,
    })


def test_agp_14d_window_ends_on_last_local_day(built: Path) -> None:
    window = _one(built, """
        select distinct window_start_date, window_end_date
        from marts.mrt_agp_hourly_14d where site_id = 'clinic-a'
    """)
    assert window == {
        "window_start_date": date(2024, 3, 19),
        "window_end_date": date(2024, 4, 1),
    }


def test_trino_target_compiles(tmp_path: Path) -> None:
    # no server: compile without the adapter cache; unit tests need one
    _run_dbt(
        ["compile", "--target", "trino", "--no-populate-cache",
         "--exclude", "resource_type:unit_test"],
        tmp_path,
    )
    compiled = tmp_path / "target" / "compiled" / "cascade" / "models"
    agp = (compiled / "marts" / "mrt_agp_hourly.sql").read_text()
    # exact interpolated percentiles from the sorted values (not approx_percentile)
    assert "array_sort(array_agg(" in agp and "element_at(" in agp
    assert "approx_percentile" not in agp
