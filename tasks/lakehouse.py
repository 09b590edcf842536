"""Iceberg tables on a branch: create with partitioning, evolve additively, replace windows.

Writes are idempotent per partition window: ``replace_rows`` replaces exactly the rows
of one site inside ``[start, end)`` in one catalog commit. A window the table holds no
rows of (the first ingest of a day) is a plain append; otherwise the commit holds a
delete snapshot (files wholly inside the window are dropped, files that straddle its
edge are rewritten without the window's rows) and an append snapshot, published
together. Re-ingesting a day replaces that day; it never duplicates it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import date, datetime
from typing import Any, Final

import polars as pl
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table, Transaction
from pyiceberg.transforms import DayTransform, IdentityTransform, MonthTransform, Transform

from tasks._pyiceberg import (
    StagedTransaction,
    check_schema_compatible,
    iceberg_schema,
    write_data_files,
)
from tasks.tables import TableLayout

__all__ = [
    "read_table",
    "replace_batches",
    "replace_rows",
    "site_window",
]

logger = logging.getLogger("cascade.lakehouse")

_COMMIT_ATTEMPTS: Final = 12
_TABLE_PROPERTIES: Final = {
    # PyIceberg 0.12's own commit retry rebuilds manifests of a partitioned overwrite
    # wrongly (IndexError in the avro writer under concurrent writers): we retry ourselves,
    # re-planning the overwrite against the refreshed table.
    "commit.retry.num-retries": "0",
    "write.parquet.compression-codec": "zstd",
}
_FIRST_PARTITION_FIELD_ID: Final = 1000  # Iceberg numbers partition fields from 1000

def _arrow_schema(schema: pl.Schema) -> pa.Schema:
    return pl.DataFrame(schema=schema).to_arrow().schema


def ensure_table(catalog: Catalog, layout: TableLayout) -> Table:
    """Load the table, creating it (with its partitioning) or adding new columns as needed.

    Safe against concurrent writers: the table is created with its partition spec in one
    catalog commit, and spec or schema updates that lose a race are retried on the
    reloaded table.
    """
    try:
        table = catalog.load_table(layout.identifier)
    except NoSuchTableError:
        table = _create(catalog, layout)
    return _prepare(catalog, layout, table)


def _prepare(catalog: Catalog, layout: TableLayout, table: Table) -> Table:
    """Give ``table`` its declared partition fields and columns (no commit when it has them)."""
    table = _update_with_retry(catalog, layout.identifier, table, lambda t: _partition(t, layout))
    return _update_with_retry(catalog, layout.identifier, table,
                              lambda t: _evolve(t, layout.schema))


def _create(catalog: Catalog, layout: TableLayout) -> Table:
    """Create the table with its partition spec in one commit (or load a concurrent one's)."""
    namespace = layout.identifier.rsplit(".", 1)[0]
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass
    except Exception:  # another writer's namespace won the insert between check and write
        if not catalog.namespace_exists(namespace):
            raise
    schema = iceberg_schema(_arrow_schema(layout.schema))
    try:
        return catalog.create_table(layout.identifier, schema=schema,
                                    partition_spec=_partition_spec(schema, layout),
                                    properties=_TABLE_PROPERTIES)
    except TableAlreadyExistsError:  # a concurrent writer created it first
        return catalog.load_table(layout.identifier)


def _partition_fields(layout: TableLayout) -> list[tuple[str, Transform[Any, Any], str]]:
    """(source column, transform, partition field name): identity(site_id), then the month.

    Month, not day: a 30-day window lands as one or two files per table instead of 30, and a
    site-year as a dozen files of a few hundred KiB rather than 365 of 10-35 KiB (see
    docs/benchmarks.md). A window that covers only part of a file's days rewrites that file
    when it is replaced (copy-on-write); a whole-file window drops it.
    """
    fields: list[tuple[str, Transform[Any, Any], str]] = []
    if "site_id" in layout.schema.names():
        fields.append(("site_id", IdentityTransform(), "site_id"))
    if layout.partition_time is not None:
        fields.append((layout.partition_time, MonthTransform(),
                       f"{layout.partition_time}_month"))
    fields.extend((column, IdentityTransform(), column) for column in layout.partition_identity)
    return fields


def _partition_spec(schema: Schema, layout: TableLayout) -> PartitionSpec:
    fields = [PartitionField(source_id=schema.find_field(column).field_id,
                             field_id=_FIRST_PARTITION_FIELD_ID + i, transform=transform, name=name)
              for i, (column, transform, name) in enumerate(_partition_fields(layout))]
    return PartitionSpec(*fields)


def _partition(table: Table, layout: TableLayout) -> None:
    """Add declared partition fields the table lacks (a table created before specs were
    part of creation, or by a writer that died between create and spec)."""
    schema = table.schema()
    have = {field.name for field in table.spec().fields}
    # a table partitioned by day of its time column (created before months) keeps its spec
    by_time = {schema.find_column_name(field.source_id) for field in table.spec().fields
               if isinstance(field.transform, (DayTransform, MonthTransform))}
    missing = [f for f in _partition_fields(layout) if f[2] not in have and f[0] not in by_time]
    if missing:
        with table.update_spec() as spec:
            for column, transform, name in missing:
                spec.add_field(column, transform, name)


def _evolve(table: Table, schema: pl.Schema) -> None:
    """Add columns the table lacks (additive evolution only; nothing is dropped)."""
    known = {f.name for f in table.schema().fields}
    if set(schema.names()) - known:
        with table.update_schema() as update:
            update.union_by_name(_arrow_schema(schema))


def _update_with_retry(catalog: Catalog, identifier: str, table: Table,
                       update: Callable[[Table], None]) -> Table:
    """Apply a metadata ``update`` (a no-op when already applied), reloading the table and
    retrying when a concurrent writer committed first."""
    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        try:
            update(table)
            return table
        except CommitFailedException:
            if attempt == _COMMIT_ATTEMPTS:
                raise
            _back_off(identifier, attempt)
            table = catalog.load_table(identifier)
    return table


def _back_off(identifier: str, attempt: int) -> None:
    logger.info("commit conflict on %s, retry %d", identifier, attempt)
    time.sleep(random.uniform(0.05, 0.2) * attempt)


def site_window(layout: TableLayout, site_id: str, start: datetime | date | None = None,
                end: datetime | date | None = None, **equals: str) -> BooleanExpression:
    """Rows of one site (and ``column=value`` pairs) with ``window_column`` in ``[start, end)``.

    Without ``start``/``end`` (or for a layout with no window column): all the site's rows.
    """
    where: BooleanExpression = EqualTo(term=Reference("site_id"), value=literal(site_id))
    for column, value in equals.items():
        where = And(where, EqualTo(term=Reference(column), value=literal(value)))
    if start is None or end is None or not layout.window_column:
        return where
    bound = Reference(layout.window_column)
    bounds = And(GreaterThanOrEqual(term=bound, value=literal(start.isoformat())),
                 LessThan(term=bound, value=literal(end.isoformat())))
    return And(where, bounds)


def replace_rows(
    catalog: Catalog, layout: TableLayout, rows: pl.DataFrame, where: BooleanExpression,
    snapshot_properties: dict[str, str] | None = None,
) -> int | None:
    """Replace the rows matching ``where`` with ``rows``, in one catalog commit.

    The commit is planned against the table's current snapshot: when no file holds rows
    matching ``where`` (a window written for the first time) the rows are appended;
    when only whole files match (whole-day partitions of the site) they are swapped for
    the new files in one snapshot; otherwise PyIceberg's overwrite deletes (rewriting
    files that match in part) and appends. Every commit asserts that the table has not
    moved since that snapshot, so when another writer commits first the table is
    reloaded and the commit planned again, with backoff.

    ``snapshot_properties`` go into the summary of the snapshot that adds the rows.

    Returns the snapshot id written (None when there was nothing to change).
    """
    data = rows.select(layout.schema.names()).cast(layout.schema).to_arrow()
    with _commit_lock(catalog, layout.identifier):
        return _replace_with_retry(catalog, layout, data, where, snapshot_properties or {})


def replace_batches(
    catalog: Catalog, layout: TableLayout, batches: Iterator[pa.Table], where: BooleanExpression,
) -> int:
    """Replace the rows matching ``where`` with the rows of ``batches``, in one catalog commit,
    holding one batch in memory at a time: each batch is written as data files as it comes
    (one per partition), and the commit then swaps them in as ``replace_rows`` does.

    Returns the number of rows written.
    """
    table = ensure_table(catalog, layout)
    metadata = table.metadata
    schema = _arrow_schema(layout.schema)
    files: list[DataFile] = []
    rows = 0
    write_uuid = uuid.uuid4()
    for batch in batches:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        data = frame.select(layout.schema.names()).cast(layout.schema).to_arrow().cast(schema)
        check_schema_compatible(metadata, data.schema)
        files += write_data_files(metadata, table.io, data, write_uuid, first=len(files))
        rows += data.num_rows
    with _commit_lock(catalog, layout.identifier):
        _replace_with_retry(catalog, layout, files, where)
    return rows


_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _commit_lock(catalog: Catalog, identifier: str) -> threading.Lock:
    """One lock per (catalog, table) in this process: threads take turns to commit, so
    in-process writers never race; writers in other processes are handled by retrying."""
    key = (f"{catalog.name}@{catalog.properties.get('uri', '')}", identifier)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


# Tables as last committed through each catalog object, so a commit does not reload the
# table's metadata (a catalog read and a metadata file that grows with every snapshot).
# A cached table that another process has since moved only costs a retry: the commit
# asserts the snapshot it was planned against.
_TABLES: OrderedDict[tuple[int, str], Table] = OrderedDict()
_TABLES_KEPT: Final = 64


def _open_table(catalog: Catalog, layout: TableLayout) -> Table:
    """The table to plan the next commit on: cached, else loaded (created, evolved)."""
    with _LOCKS_GUARD:
        table = _TABLES.get((id(catalog), layout.identifier))
    if table is None or table.catalog is not catalog:
        return ensure_table(catalog, layout)
    return _prepare(catalog, layout, table)


def _keep_table(catalog: Catalog, identifier: str, table: Table | None) -> None:
    key = (id(catalog), identifier)
    with _LOCKS_GUARD:
        if table is None:
            _TABLES.pop(key, None)
            return
        _TABLES[key] = table
        _TABLES.move_to_end(key)
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)


def _replace_with_retry(catalog: Catalog, layout: TableLayout, data: pa.Table | list[DataFile],
                        where: BooleanExpression,
                        properties: dict[str, str] | None = None) -> int | None:
    table = _open_table(catalog, layout)
    for attempt in range(1, _COMMIT_ATTEMPTS + 1):
        try:
            written = _replace(table, data, where, properties or {})
        except (CommitFailedException, NoSuchTableError):
            _keep_table(catalog, layout.identifier, None)
            if attempt == _COMMIT_ATTEMPTS:
                raise
            _back_off(layout.identifier, attempt)
            table = ensure_table(catalog, layout)
            continue
        except BaseException:
            _keep_table(catalog, layout.identifier, None)
            raise
        _keep_table(catalog, layout.identifier, table)
        return written
    return None


def _replace(table: Table, data: pa.Table | list[DataFile], where: BooleanExpression,
             properties: dict[str, str]) -> int | None:
    """One commit replacing the rows matching ``where`` with ``data`` (see replace_rows):
    rows to write, or data files already written for the table (``replace_batches``)."""
    matching = _plan(table, where)
    empty = len(data) == 0 if isinstance(data, list) else data.num_rows == 0
    if not matching and empty:
        return None
    with StagedTransaction(table) as tx:
        if matching:  # so PyIceberg's delete never warns that it matched no records
            tx.delete(where)
        if isinstance(data, list):
            _append_files(tx, data, properties)
        else:
            _append(tx, table, data, properties)
    snapshot = table.current_snapshot()
    return snapshot.snapshot_id if snapshot else None


def _plan(table: Table, where: BooleanExpression) -> list[FileScanTask]:
    """Files that may hold rows matching ``where`` (pruned by partition, then metrics)."""
    if table.current_snapshot() is None:
        return []
    return list(table.scan(row_filter=where).plan_files())


def _append(tx: Transaction, table: Table, data: pa.Table,
            properties: dict[str, str] | None = None) -> None:
    """Stage ``data`` as new files in one append snapshot."""
    if data.num_rows == 0:
        return
    metadata = tx.table_metadata  # the staged view, cheap to read on a StagedTransaction
    check_schema_compatible(metadata, data.schema)
    with tx.update_snapshot(snapshot_properties=properties or {}).fast_append() as append:
        for data_file in write_data_files(metadata, table.io, data, append.commit_uuid):
            append.append_data_file(data_file)


def _append_files(tx: Transaction, files: list[DataFile], properties: dict[str, str]) -> None:
    """Stage data files already written for the table in one append snapshot."""
    if not files:
        return
    with tx.update_snapshot(snapshot_properties=properties).fast_append() as append:
        for data_file in files:
            append.append_data_file(data_file)


def read_table(catalog: Catalog, identifier: str,
               row_filter: BooleanExpression | None = None) -> pl.DataFrame:
    """A table (or the rows matching ``row_filter``) as a Polars frame."""
    table = catalog.load_table(identifier)
    arrow = table.scan(row_filter=row_filter or AlwaysTrue()).to_arrow()
    return pl.from_arrow(arrow)  # type: ignore[return-value]
