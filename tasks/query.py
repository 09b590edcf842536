"""Query a ref (main, a branch or a tag) of the embedded lakehouse with DuckDB.

``open_ref(catalog)`` returns a DuckDB connection with one view per Iceberg table of a
ref's catalog (``raw.entries``, ``marts.mrt_daily_glycaemia``, ...), read straight from the Iceberg
metadata by DuckDB's iceberg extension, installed offline from its PyPI wheel.
"""

from __future__ import annotations

import glob
import os
from typing import Final

import duckdb
from pyiceberg.catalog import Catalog

__all__ = ["load_iceberg_extension", "open_ref"]

_EXTENSIONS: Final = ("duckdb_extension_avro", "duckdb_extension_iceberg")


def load_iceberg_extension(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's iceberg (and avro) extension from the wheels, without network."""
    for module_name in _EXTENSIONS:
        module = __import__(module_name)
        pattern = os.path.join(os.path.dirname(str(module.__file__)), "extensions", "*",
                               "*.duckdb_extension")
        found = sorted(glob.glob(pattern))
        if not found:
            raise RuntimeError(f"{module_name} ships no extension for this platform")
        con.execute(f"load '{found[-1]}'")


def open_ref(catalog: Catalog) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view for every table of ``catalog`` (a ref's)."""
    con = duckdb.connect()
    load_iceberg_extension(con)
    for (namespace,) in catalog.list_namespaces():
        con.execute(f'create schema if not exists "{namespace}"')
        for _, name in catalog.list_tables(namespace):
            location = catalog.load_table(f"{namespace}.{name}").metadata_location
            con.execute(f"create view \"{namespace}\".\"{name}\" as "
                        f"select * from iceberg_scan('{location}')")
    return con
