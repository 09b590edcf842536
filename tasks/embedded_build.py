"""The embedded build: dbt-duckdb in a scratch file that reads the branch's Iceberg tables in
place, and the new partitions landed back into Iceberg.

Before dbt runs, the scratch file gets one view per table of the branch, over the table's
current metadata file (DuckDB's ``iceberg_scan``, so nothing is copied): the dbt sources
as ``raw.*`` and ``audit.*``, and every other table as ``prior.<namespace>__<table>``, the
rows the models held before this build. A partitioned model builds only its touched
partitions, into ``<model>__delta``; the model itself is a view of its prior rows outside
those partitions plus the delta (dbt/materializations/partitioned.sql). After dbt, each delta lands
in Iceberg in place of those partitions, streamed in batches, in one commit per model.

The file is scratch: it is rebuilt from the lakehouse at every build, and nothing is read
from it after the build. One build at a time uses it (a lock in the build directory), so
its path, and with it dbt's profile, stays the same and dbt can parse partially.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb
import polars as pl
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression

from tasks.build_log import Grain, ModelBuild, TouchedSet
from tasks.errors import CascadeError
from tasks.faults import fault_point
from tasks.lakehouse import replace_batches
from tasks.query import load_iceberg_extension
from tasks.tables import AUDIT_TABLES, CHANGES, DBT_AUDIT_SOURCES, RAW_TABLES, TableLayout

__all__ = [
    "BUILD_FILE",
    "BuiltModel",
    "build_file_lock",
    "built_models",
    "land_model",
    "model_layout",
    "prepare_build_file",
    "touched_sets",
]

logger = logging.getLogger("cascade.build")

BUILD_FILE: Final = "cascade.duckdb"
SOURCE_NAMESPACES: Final = ("raw", "audit")
PRIOR_SCHEMA: Final = "prior"
_BATCH_ROWS: Final = 250_000
# dbt sources the build needs even before anything wrote them (a fresh lakehouse)
_SOURCE_SCHEMAS: Final[dict[str, pl.Schema]] = {
    **{t.identifier: t.polars_schema for t in RAW_TABLES.values()},
    **{layout.identifier: layout.schema for name, layout in AUDIT_TABLES.items()
       if name in DBT_AUDIT_SOURCES},
    CHANGES.identifier: CHANGES.schema,
}
_META_DDL: Final = """
create schema cascade_meta;
create table cascade_meta.built_models (
    schema_name varchar, model_name varchar, grain varchar, touched varchar,
    builds_whole boolean
);
"""


@contextmanager
def build_file_lock(build_dir: Path) -> Iterator[Path]:
    """The scratch file's path, held by this build only (other builds wait)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another build is using %s: waiting for it", build_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield build_dir / BUILD_FILE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare_build_file(catalog: Catalog, path: Path) -> dict[str, int]:
    """A fresh scratch file with views of the branch's tables; rows per source table.

    Source counts come from the snapshot summaries (no data file is read).
    """
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    with duckdb.connect(str(path)) as con:
        load_iceberg_extension(con)
        con.execute(_META_DDL)
        con.execute(f"create schema {PRIOR_SCHEMA}")
        for namespace in SOURCE_NAMESPACES:
            con.execute(f'create schema "{namespace}"')
        for identifier in _tables(catalog):
            namespace, name = identifier.split(".", 1)
            view = (f'"{namespace}"."{name}"' if namespace in SOURCE_NAMESPACES
                    else f'{PRIOR_SCHEMA}."{namespace}__{name}"')
            counts[identifier] = _view_of(con, catalog, identifier, view)
        for identifier, schema in _SOURCE_SCHEMAS.items():
            if identifier not in counts:  # nothing written yet: an empty source
                namespace, name = identifier.split(".", 1)
                _empty(con, f'"{namespace}"."{name}"', pl.DataFrame(schema=schema).to_arrow())
    return {k: v for k, v in counts.items() if k.split(".", 1)[0] in SOURCE_NAMESPACES}


def _tables(catalog: Catalog) -> list[str]:
    out = []
    for (namespace,) in catalog.list_namespaces():
        try:
            out += [".".join(t) for t in catalog.list_tables(namespace)]
        except NoSuchNamespaceError:
            continue
    return sorted(out)


def _view_of(con: duckdb.DuckDBPyConnection, catalog: Catalog, identifier: str,
             view: str) -> int:
    """Create ``view`` over the table's current state; its row count (summary)."""
    table = catalog.load_table(identifier)
    snapshot = table.current_snapshot()
    if snapshot is None:  # created, never written: DuckDB cannot scan it
        _empty(con, view, table.schema().as_arrow().empty_table())
        return 0
    location = table.metadata_location.replace("'", "''")
    con.execute(f"create view {view} as select * from iceberg_scan('{location}')")
    summary = snapshot.summary
    return int(summary.get("total-records") or 0) if summary else 0


def _empty(con: duckdb.DuckDBPyConnection, name: str, empty: pa.Table) -> None:
    con.register("__empty", empty)
    con.execute(f"create table {name} as select * from __empty")
    con.unregister("__empty")


@dataclass(frozen=True)
class BuiltModel:
    """A model dbt built in the scratch file, as its materialization recorded it."""

    schema: str
    name: str
    build: ModelBuild

    @property
    def identifier(self) -> str:
        return f"{self.schema}.{self.name}"


def built_models(path: Path, tables: list[tuple[str, str]]) -> list[BuiltModel]:
    """The partitioned models the materialization recorded, then the ``tables`` (schema,
    name) dbt built as plain tables (landed whole)."""
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("select schema_name, model_name, grain, touched, builds_whole "
                           "from cascade_meta.built_models order by 1, 2").fetchall()
    out = [BuiltModel(s, n, ModelBuild(g, t, bool(w))) for s, n, g, t, w in rows]
    out += [BuiltModel(s, n, ModelBuild("table", None, True)) for s, n in tables]
    return out


def touched_sets(path: Path, models: list[BuiltModel]) -> dict[str, TouchedSet]:
    """The touched sets the models rebuilt, as dbt computed them in the scratch file."""
    names = sorted({m.build.touched for m in models if m.build.touched})
    out = {}
    with duckdb.connect(str(path), read_only=True) as con:
        for name in names:
            cursor = con.execute("select site_id, is_whole_site, first_date, last_date "
                                 f'from build."{name}"')
            columns = [d[0] for d in cursor.description]
            out[name] = TouchedSet.from_rows(dict(zip(columns, row, strict=True))
                                             for row in cursor.fetchall())
    return out


def model_layout(identifier: str, schema: pl.Schema, grain: Grain) -> TableLayout:
    """A model table's layout: by site and month of its local day, or by site."""
    return TableLayout(identifier, schema, "local_date" if grain == "site_day" else None, "")


def land_model(path: Path, catalog: Catalog, model: BuiltModel, touched: TouchedSet) -> int:
    """Write the model's new rows into Iceberg in place of its rebuilt partitions; rows."""
    relation = (f'"{model.schema}"."{model.name}__delta"' if model.build.grain != "table"
                else f'"{model.schema}"."{model.name}"')
    whole = model.build.whole or touched.everything
    where: BooleanExpression = (AlwaysTrue() if whole
                                else touched.iceberg_filter(model.build.grain))
    order = " order by site_id, local_date" if whole and model.build.grain == "site_day" else ""
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("set TimeZone = 'UTC'")
        reader = con.execute(f"select * from {relation}{order}").to_arrow_reader(_BATCH_ROWS)
        schema = pl.from_arrow(reader.schema.empty_table()).schema  # type: ignore[union-attr]
        layout = model_layout(model.identifier, _utc(schema), model.build.grain)
        _check_types(catalog, layout, whole)
        rows = replace_batches(catalog, layout, (pa.Table.from_batches([b]) for b in reader),
                               where)
    fault_point("build-mid-export")
    return rows


def _utc(schema: pl.Schema) -> pl.Schema:
    """Zoned timestamps are stored in UTC."""
    return pl.Schema({k: pl.Datetime("us", "UTC") if isinstance(v, pl.Datetime)
                      and v.time_zone is not None else v for k, v in schema.items()})


def _check_types(catalog: Catalog, layout: TableLayout, whole: bool) -> None:
    """A model whose column types changed is recreated when rebuilt whole; an incremental
    build cannot change them (its untouched partitions keep the old types)."""
    if not catalog.table_exists(layout.identifier):
        return
    existing = catalog.load_table(layout.identifier).schema().as_arrow()
    wanted = pl.DataFrame(schema=layout.schema).to_arrow().schema
    changed = [f.name for f in wanted if f.name in existing.names
               and _plain(existing.field(f.name).type) != _plain(f.type)]
    if not changed:
        return
    if not whole:
        raise CascadeError(
            f"{layout.identifier}: the types of {', '.join(changed)} changed since it was "
            "built; an incremental build cannot change them: run build_branch with "
            "full_refresh=True")
    catalog.drop_table(layout.identifier)


def _plain(arrow_type: pa.DataType) -> pa.DataType:
    """Arrow type with large/small string and binary variants folded together."""
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    if pa.types.is_large_binary(arrow_type):
        return pa.binary()
    return arrow_type
