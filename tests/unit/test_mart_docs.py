"""The dbt docs of the marts become database comments where the marts are published."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import sqlalchemy as sa
from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver
from sqlalchemy.dialects import postgresql

from tasks.mart_docs import MartDocs, comment_mart, comment_statements, load_mart_docs
from tasks.publish import publish_marts


def test_docs_come_from_the_dbt_yml_files() -> None:
    docs = load_mart_docs()
    daily = docs["mrt_daily_glycaemia"]
    assert daily.description.startswith("One row per site and local day")
    assert daily.columns["tir_pct"] == "Readings in 70-180 mg/dL inclusive."
    assert "site_id" not in daily.columns  # undocumented columns get no comment
    assert {"mrt_agp_hourly", "mrt_agp_hourly_14d", "mrt_quality_coverage"} <= docs.keys()


def test_postgres_statements_quote_the_text_and_skip_undocumented_columns() -> None:
    docs = {"mrt_x": MartDocs("It's one row per day.", {"a_pct": "Share of 'a'.", "b": "B."})}
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = [str(s.compile(dialect=dialect))
           for s in comment_statements("mrt_x", ["a_pct", "c"], docs)]
    assert sql == [
        "COMMENT ON TABLE mrt_x IS 'It''s one row per day.'",
        "COMMENT ON COLUMN mrt_x.a_pct IS 'Share of ''a''.'",
    ]
    assert comment_statements("mrt_unknown", ["a"], docs) == []


def test_sqlite_marts_publish_without_comments(tmp_path: Path) -> None:
    path = tmp_path / "marts.db"
    connector = SqlAlchemyConnector(connection_info=ConnectionComponents(
        driver=SyncDriver.SQLITE_PYSQLITE, database=str(path)))
    frame = pl.DataFrame({"site_id": ["s"], "tir_pct": [71.5]})
    with connector:
        publish_marts(connector, {"mrt_daily_glycaemia": frame}, ref="main", ref_hash="h",
                      run_id="r")
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert comment_mart(conn, "mrt_daily_glycaemia", frame.columns) == 0
        assert conn.execute(sa.text("select tir_pct from mrt_daily_glycaemia")).scalar() == 71.5
    engine.dispose()
