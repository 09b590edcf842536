"""Publishing marts to the marts database: SQLite files in tmp_path, no Prefect server."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypedDict

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from tasks import publish
from tasks.errors import PublishError
from tasks.profile import embedded_profile, sqlite_marts
from tasks.publish import (
    PUBLISH_LOG,
    mask_url,
    publish_marts,
    read_mart,
    validate_name,
)
from tasks.settings import LakehouseSettings


class _Ref(TypedDict):
    ref: str
    ref_hash: str
    run_id: str


REF: _Ref = {"ref": "main", "ref_hash": "a1b2c3d4e5f6", "run_id": "run-7f3a"}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "marts" / "marts.db"


@pytest.fixture
def connector(db_path: Path) -> Iterator[SqlAlchemyConnector]:
    block = sqlite_marts(LakehouseSettings(home=db_path.parent))
    with block:
        yield block


def daily(n: int, offset: int = 0) -> pl.DataFrame:
    """A daily-glycaemia-shaped mart with ``n`` days; ``checksum`` sums to a known value."""
    return pl.DataFrame(
        {
            "site_id": ["clinic-a"] * n,
            "reading_date": [date(2025, 3, 1) + timedelta(days=i) for i in range(n)],
            "n_readings": [288 - i for i in range(n)],
            "mean_glucose_mg_dl": [120.5 + i / 4 for i in range(n)],
            "is_complete": [i % 2 == 0 for i in range(n)],
            "first_reading_at": [
                datetime(2025, 3, 1, 0, 2, 30, tzinfo=UTC) + timedelta(days=i) for i in range(n)
            ],
            "checksum": [offset + i for i in range(n)],
        },
        schema_overrides={"first_reading_at": pl.Datetime("us", "UTC")},
    )


def patients(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "tir_pct": [70.0 + i for i in range(n)],
            "note": [None if i % 2 else "ok" for i in range(n)],
        },
        schema_overrides={"note": pl.String},
    )


def read(connector: SqlAlchemyConnector, name: str, like: pl.DataFrame) -> pl.DataFrame:
    return read_mart(connector, name, like.schema).sort(like.columns[0])


def test_marts_connector_defaults_to_sqlite_file_under_home(db_path: Path) -> None:
    block = embedded_profile(LakehouseSettings(home=db_path.parent)).marts_connector()
    with block:
        url = block.get_engine().url
    assert url.drivername == "sqlite+pysqlite"
    assert url.database == str(db_path)
    assert db_path.parent.is_dir()


def test_publish_two_marts_round_trip(connector: SqlAlchemyConnector) -> None:
    marts = {"mrt_daily_glycaemia": daily(5), "mrt_patient_summary": patients(4)}
    report = publish_marts(connector, marts, **REF)
    assert report.marts == {"mrt_daily_glycaemia": 5, "mrt_patient_summary": 4}
    assert report.database.startswith("sqlite+pysqlite:///")
    assert report.ref == "main"
    for name, frame in marts.items():
        assert_frame_equal(read(connector, name, frame), frame.sort(frame.columns[0]))


def test_read_mart_without_schema_returns_dates_as_dates(connector: SqlAlchemyConnector) -> None:
    publish_marts(connector, {"mrt_daily_glycaemia": daily(3)}, **REF)
    back = read_mart(connector, "mrt_daily_glycaemia")
    assert back.schema["reading_date"] == pl.Date
    assert back.schema["n_readings"] == pl.Int64
    assert back.schema["is_complete"] == pl.Boolean
    assert back["reading_date"].to_list()[0] == date(2025, 3, 1)


def test_naive_datetimes_stay_naive(connector: SqlAlchemyConnector) -> None:
    frame = pl.DataFrame({"seen_at": [datetime(2025, 3, 1, 12, 0)], "n": [1]})
    publish_marts(connector, {"mrt_naive": frame}, **REF)
    assert_frame_equal(read_mart(connector, "mrt_naive"), frame)


def test_republish_replaces_rows(connector: SqlAlchemyConnector) -> None:
    publish_marts(connector, {"mrt_daily_glycaemia": daily(5)}, **REF)
    publish_marts(connector, {"mrt_daily_glycaemia": daily(2, offset=100)}, **REF)
    back = read(connector, "mrt_daily_glycaemia", daily(2))
    assert_frame_equal(back, daily(2, offset=100))


def test_empty_mart_publishes_an_empty_table(connector: SqlAlchemyConnector) -> None:
    publish_marts(connector, {"mrt_daily_glycaemia": daily(0)}, **REF)
    assert read(connector, "mrt_daily_glycaemia", daily(0)).height == 0


def test_publish_log_records_ref_hash_and_run(connector: SqlAlchemyConnector) -> None:
    publish_marts(connector, {"mrt_a": patients(2), "mrt_b": patients(3)}, **REF)
    publish_marts(
        connector, {"mrt_a": patients(1)}, ref="tag-2025-03", ref_hash="ff00", run_id="r2"
    )
    log = read_mart(connector, PUBLISH_LOG).sort("published_at", "mart")
    assert log.select("mart", "ref", "ref_hash", "run_id", "n_rows").rows() == [
        ("mrt_a", "main", "a1b2c3d4e5f6", "run-7f3a", 2),
        ("mrt_b", "main", "a1b2c3d4e5f6", "run-7f3a", 3),
        ("mrt_a", "tag-2025-03", "ff00", "r2", 1),
    ]
    assert log["published_at"].is_not_null().all()


def test_readers_see_only_whole_marts(connector: SqlAlchemyConnector, db_path: Path) -> None:
    versions = [daily(n, offset=1000 * k) for k, n in enumerate([50, 3, 400, 1, 120, 7])]
    expected = {(v.height, int(v["checksum"].sum())) for v in versions}
    publish_marts(connector, {"mrt_daily_glycaemia": versions[0]}, **REF)
    seen: list[tuple[int, int]] = []
    errors: list[sqlite3.Error] = []
    done = threading.Event()

    def poll() -> None:
        reader = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        reader.execute("pragma journal_mode=wal")
        try:
            while not done.is_set():
                sql = "select count(*), coalesce(sum(checksum), 0) from mrt_daily_glycaemia"
                seen.append(reader.execute(sql).fetchone())
        except sqlite3.Error as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            reader.close()

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        for _ in range(3):
            for version in versions[1:] + versions[:1]:
                publish_marts(connector, {"mrt_daily_glycaemia": version}, **REF)
    finally:
        done.set()
        thread.join(timeout=30)
    assert not errors
    assert len(seen) > 10
    assert set(seen) <= expected
    assert len(set(seen)) > 1


def test_failure_between_marts_leaves_every_mart_unchanged(
    connector: SqlAlchemyConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {"mrt_a": patients(2), "mrt_b": patients(3)}
    publish_marts(connector, before, **REF)
    real_insert = publish.__dict__["_insert_rows"]
    calls = 0

    def failing_insert(conn, table, frame):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OperationalError("insert", {}, Exception("disk I/O error"))
        real_insert(conn, table, frame)

    monkeypatch.setattr(publish, "_insert_rows", failing_insert)
    with pytest.raises(PublishError, match=r"mart 'mrt_b'.*sqlite\+pysqlite:///.*nothing was"):
        publish_marts(connector, {"mrt_a": patients(7), "mrt_b": patients(9)}, **REF)
    for name, frame in before.items():
        assert_frame_equal(read(connector, name, frame), frame)
    assert read_mart(connector, PUBLISH_LOG).height == 2
    tables = read_tables(connector)
    assert not [t for t in tables if t.endswith("__new")]


def test_invalid_column_name_rejected_before_any_change(connector: SqlAlchemyConnector) -> None:
    publish_marts(connector, {"mrt_a": patients(2)}, **REF)
    bad = pl.DataFrame({"Patient ID": ["x"]})
    with pytest.raises(PublishError, match="'Patient ID'"):
        publish_marts(connector, {"mrt_a": patients(5), "mrt_b": bad}, **REF)
    assert read_mart(connector, "mrt_a").height == 2


def test_unmappable_dtype_rejected(connector: SqlAlchemyConnector) -> None:
    frame = pl.DataFrame({"values": [[1, 2]]})
    with pytest.raises(PublishError, match="List"):
        publish_marts(connector, {"mrt_lists": frame}, **REF)


@pytest.mark.parametrize(
    "name",
    [
        "Mrt_upper",
        "mrt-dash",
        "1mrt",
        "mrt; drop table x",
        'mrt"quote',
        "",
        "m" * 59,
        "mrt_a__new",
        PUBLISH_LOG,
    ],
)
def test_invalid_table_names_rejected(name: str, connector: SqlAlchemyConnector) -> None:
    with pytest.raises(PublishError):
        validate_name(name)
    with pytest.raises(PublishError):
        publish_marts(connector, {name: patients(1)}, **REF)


def test_valid_names_accepted() -> None:
    assert validate_name("mrt_daily_glycaemia") == "mrt_daily_glycaemia"
    assert validate_name("_private2") == "_private2"


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg2://bi:s3cret@localhost/marts")
    assert masked == "postgresql+psycopg2://bi:***@localhost/marts"


def test_unreachable_postgres_error_never_carries_the_password() -> None:
    # psycopg2 is not installed here (driver error); where it is, port 1 refuses at once.
    block = SqlAlchemyConnector(connection_info="postgresql+psycopg2://bi:s3cret@127.0.0.1:1/marts")
    with pytest.raises(PublishError) as info:
        publish_marts(block, {"mrt_a": patients(1)}, **REF)
    message = str(info.value)
    assert "s3cret" not in message
    assert "postgresql+psycopg2://bi:***@127.0.0.1:1/marts" in message
    assert "nothing was changed" in message


def test_unopenable_sqlite_file_raises_publish_error(tmp_path: Path) -> None:
    block = SqlAlchemyConnector(connection_info=f"sqlite:///{tmp_path}/missing/marts.db")
    with block, pytest.raises(PublishError) as info:
        publish_marts(block, {"mrt_a": patients(1)}, **REF)
    assert "unable to open" in str(info.value)


def test_task_publishes_to_the_home_marts_file(
    cascade_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("CASCADE_MARTS_BLOCK", raising=False)
    monkeypatch.setattr(publish, "get_run_logger", lambda: logging.getLogger("test-publish"))
    with caplog.at_level(logging.INFO, logger="test-publish"):
        connector = embedded_profile().marts_connector()
        report = publish.publish_marts_task.fn({"mrt_a": patients(3)}, **REF,
                                               connector=connector)
    assert report.marts == {"mrt_a": 3}
    assert report.database.endswith(str(cascade_home / "marts.db"))
    assert "mrt_a 3" in caplog.text
    assert "main@a1b2c3d4e5f6" in caplog.text


def read_tables(connector: SqlAlchemyConnector) -> list[str]:
    names: list[str] = inspect(connector.get_engine()).get_table_names()
    return names
