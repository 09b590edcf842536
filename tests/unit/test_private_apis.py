"""Pins for the private library APIs Cascade uses, one module each (tasks/_*.py).

Each test states the behaviour a private name is relied on for, so an upgrade of the
library that changes it fails here, by name. (The PyIceberg writer and the staged view
are also compared with PyIceberg's own results in test_lakehouse_commits.py.)
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandera.polars as pa
import polars as pl
import pyarrow as pa_arrow
import pytest
from pyiceberg.table import Transaction

from tasks._pandera import run_dataframe_check
from tasks._pyiceberg import StagedTransaction, iceberg_schema
from tasks.branches import EmbeddedBranchCatalog


class _Model(pa.DataFrameModel):
    low: int
    high: int

    @pa.dataframe_check(name="low not above high")
    def ordered(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("low") <= pl.col("high"))


def test_a_dataframe_check_runs_on_a_lazy_frame_and_marks_the_rows_pandera_fails() -> None:
    frame = pl.DataFrame({"low": [1, 5, 2], "high": [2, 4, 2]})
    schema = _Model.to_schema()
    (rule,) = schema.checks

    passed = run_dataframe_check(rule, frame.lazy()).collect().to_series().to_list()

    assert passed == [True, False, True]
    with pytest.raises(pa.errors.SchemaErrors) as failed:
        schema.validate(frame, lazy=True)
    assert failed.value.failure_cases.get_column("index").to_list() == [1]


def test_iceberg_schema_is_the_one_create_table_gives(tmp_path: Path) -> None:
    arrow = pa_arrow.schema([("site_id", pa_arrow.large_string()),
                             ("at", pa_arrow.timestamp("us", tz="UTC")),
                             ("value", pa_arrow.int64())])
    catalog = EmbeddedBranchCatalog(tmp_path / "c.db", tmp_path / "w").catalog("main")
    catalog.create_namespace("t")

    created = catalog.create_table("t.x", schema=arrow).schema()

    assert iceberg_schema(arrow) == created


def test_the_staged_view_equals_pyiceberg_s_own(tmp_path: Path) -> None:
    catalog = EmbeddedBranchCatalog(tmp_path / "c.db", tmp_path / "w").catalog("main")
    catalog.create_namespace("t")
    table = catalog.create_table("t.x", schema=pa_arrow.schema([("v", pa_arrow.int64())]))
    table.append(pa_arrow.table({"v": [1, 2]}))
    data = pa_arrow.table({"v": [3]})

    ours, theirs = StagedTransaction(table), Transaction(table)
    for tx in (ours, theirs):
        tx.set_properties(note="staged")
        tx.append(data)

    assert ours.table_metadata.properties == theirs.table_metadata.properties
    assert ([s.summary.operation for s in ours.table_metadata.snapshots if s.summary]
            == [s.summary.operation for s in theirs.table_metadata.snapshots if s.summary])
    assert len(ours.table_metadata.snapshots) == len(table.metadata.snapshots) + 1
    assert ours.table_metadata.last_updated_ms >= table.metadata.last_updated_ms
    assert ours.table_metadata is ours.table_metadata  # worked out once, not per read
    assert table.metadata.properties.get("note") is None  # the table itself is untouched


def test_dbt_duckdb_keeps_one_process_wide_handle_behind_a_lock() -> None:
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager as manager

    assert hasattr(manager, "_LOCK") and hasattr(manager._LOCK, "acquire")
    assert hasattr(manager, "_ENV")


def test_timestamps_keep_their_zone_through_iceberg_schema() -> None:
    arrow = pa_arrow.schema([("at", pa_arrow.timestamp("us", tz="UTC"))])
    field = iceberg_schema(arrow).find_field("at")

    assert str(field.field_type) == "timestamptz"


def test_every_node_of_a_dbt_invocation_sees_one_graph_object(tmp_path: Path) -> None:
    """dbt/macros/touched.sql keeps the touched sets it read in ``graph``, relying on dbt
    handing every node of one invocation the same dict (its cache key also names the
    invocation, so an in-process rerun cannot read an earlier build's sets)."""
    import os
    import subprocess
    import sys

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "macros").mkdir()
    (project / "dbt_project.yml").write_text(
        "name: pin\nversion: '1.0.0'\nprofile: pin\nconfig-version: 2\n")
    (project / "profiles.yml").write_text(
        "pin:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: '{tmp_path / 'pin.duckdb'}'\n      threads: 1\n")
    (project / "macros" / "seen.sql").write_text(
        "{% macro seen() %}{% set calls = graph.setdefault('pin_calls', []) %}"
        "{% do calls.append(model.name) %}{{ return(calls | length) }}{% endmacro %}")
    (project / "models" / "first.sql").write_text(
        "select {{ seen() if execute else 0 }} as calls")
    (project / "models" / "second.sql").write_text(
        "select {{ seen() if execute else 0 }} as calls from {{ ref('first') }}")
    dbt = str(Path(sys.executable).with_name("dbt"))
    env = {**os.environ, "DBT_PROFILES_DIR": str(project)}
    done = subprocess.run([dbt, "run", "--project-dir", str(project), "--target-path",
                           str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"),
                           "--no-partial-parse", "--no-send-anonymous-usage-stats"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    with duckdb.connect(str(tmp_path / "pin.duckdb"), read_only=True) as con:
        calls = con.execute("select (select calls from main.first), "
                            "(select calls from main.second)").fetchone()
    assert calls == (1, 2)  # the second model saw the first one's call
