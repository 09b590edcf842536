"""PyIceberg internals Cascade relies on, in one place (pyiceberg 0.12.0, pinned exactly).

Two things PyIceberg does not offer through its public API, each pinned by
tests/unit/test_private_apis.py so that an upgrade breaks here, by name:

* ``StagedTransaction``: a transaction whose staged metadata view is not deep-copied on
  every read (``Transaction.table_metadata`` copies every snapshot each time);
* ``write_data_files``: Parquet data files written the way PyIceberg's own writer writes
  them, with its schema work done once per commit instead of once per file.

It also names the private helpers those two need, and ``iceberg_schema``, which turns an
Arrow schema into an Iceberg schema exactly as ``Catalog.create_table`` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    ParquetFormatModel,
    _check_pyarrow_schema_compatible,
    _determine_partitions,
    _get_parquet_writer_kwargs,
    _to_requested_schema,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionKey, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids, sanitize_column_names
from pyiceberg.table import TableProperties, Transaction
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableUpdate, _apply_table_update, _TableMetadataUpdateContext
from pyiceberg.typedef import Record
from pyiceberg.utils.datetime import datetime_to_millis
from pyiceberg.utils.properties import property_as_int

__all__ = [
    "StagedTransaction",
    "check_schema_compatible",
    "iceberg_schema",
    "staged_metadata",
    "write_data_files",
]


def iceberg_schema(schema: pa.Schema) -> Schema:
    """The Iceberg schema of an Arrow schema, with the field ids a new table gets."""
    return assign_fresh_schema_ids(Catalog._convert_schema_if_needed(schema))


def check_schema_compatible(metadata: TableMetadata, schema: pa.Schema) -> None:
    """Raise as PyIceberg's append does when ``schema`` cannot be written to the table."""
    _check_pyarrow_schema_compatible(metadata.schema(), schema,
                                     format_version=metadata.format_version)


class StagedTransaction(Transaction):
    """PyIceberg's transaction, without copying the whole table history on every look.

    ``Transaction.table_metadata`` replays the staged updates and then deep-copies the
    table metadata, every snapshot included, on each read; a delete plus an append reads it
    more than a dozen times, so at a few hundred snapshots that copying was most of a
    commit, and commits got slower as a table's history grew (PyIceberg's own proposal
    caches the read). Here the staged view is worked out once per change of the table or
    of the staged updates (both are replaced, never changed in place) and without the deep
    copy: the updates build new metadata objects and leave the old ones alone, and nothing
    here writes to the view. The catalog still applies and checks the updates itself when
    the transaction commits.
    """

    _staged: tuple[TableMetadata, tuple[object, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates, staged = self._staged or (None, None, None)
        if staged is None or base is not self._table.metadata or updates is not self._updates:
            staged = staged_metadata(self._table.metadata, self._updates)
            self._staged = (self._table.metadata, self._updates, staged)
        return staged


def staged_metadata(base: TableMetadata, updates: tuple[TableUpdate, ...]) -> TableMetadata:
    """``update_table_metadata`` as PyIceberg 0.12 has it, less its final deep copy."""
    context = _TableMetadataUpdateContext()
    staged = base
    for update in updates:
        staged = _apply_table_update(update, staged, context)
    if context.has_changes() and base.last_updated_ms == staged.last_updated_ms:
        staged = staged.model_copy(
            update={"last_updated_ms": datetime_to_millis(datetime.now().astimezone())})
    staged.spec().check_compatible(staged.schema())
    staged.sort_order().check_compatible(staged.schema())
    return staged


# PyIceberg's writer (``_dataframe_to_data_files``) redoes its schema work (sanitising
# names, the statistics plan, the field-id projection) for every file, which cost more
# than writing the Parquet itself: a 30-day window on a day-partitioned table (as tables
# made before month partitioning are) is 30 files per table. Here that work is done once
# per commit; files, statistics and partition values
# are the same as PyIceberg writes (one file per partition: windows are far below the
# target file size).


def write_data_files(metadata: TableMetadata, io: FileIO, data: pa.Table,
                     write_uuid: uuid.UUID, first: int = 0) -> list[DataFile]:
    """Write ``data`` as one Parquet file per partition and describe each as a DataFile
    (files numbered from ``first``, so several calls for one commit do not collide)."""
    schema = metadata.schema()
    file_schema = sanitize_column_names(schema)
    parquet = ParquetFormatModel()
    stats_plan = compute_statistics_plan(file_schema, metadata.properties)
    column_ids = parquet_path_to_id_mapping(file_schema)
    writer_kwargs = _get_parquet_writer_kwargs(metadata.properties)
    row_group_rows = property_as_int(metadata.properties, TableProperties.PARQUET_ROW_GROUP_LIMIT,
                                     TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT)
    locations = load_location_provider(metadata.location, metadata.properties)
    data_schema = pyarrow_to_schema(data.schema, name_mapping=schema.name_mapping,
                                    format_version=metadata.format_version)
    converted = pa.Table.from_batches([  # to the file schema (field ids) once, not per file
        _to_requested_schema(file_schema, data_schema, batch, include_field_ids=True,
                             format_model=parquet) for batch in data.to_batches()])
    files = []
    for n, (key, arrow) in enumerate(_partitions_of(metadata.spec(), file_schema, converted),
                                     start=first):
        name = f"00000-{n}-{write_uuid}.parquet"
        path = locations.new_data_location(data_file_name=name, partition_key=key)
        output = io.new_output(path)
        with output.create(overwrite=True) as stream:
            with pq.ParquetWriter(stream, schema=arrow.schema, store_decimal_as_integer=True,
                                  **writer_kwargs) as writer:
                writer.write_table(arrow, row_group_size=row_group_rows)
            stats = data_file_statistics_from_parquet_metadata(
                parquet_metadata=writer.writer.metadata, stats_columns=stats_plan,
                parquet_column_mapping=column_ids)
        files.append(DataFile.from_args(
            content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET,
            partition=key.partition if key else Record(), file_size_in_bytes=len(output),
            sort_order_id=None, spec_id=metadata.default_spec_id, equality_ids=None,
            key_metadata=None, **stats.to_serialized_dict()))
    return files


def _partitions_of(spec: PartitionSpec, schema: Schema, data: pa.Table,
                ) -> Iterator[tuple[PartitionKey | None, pa.Table]]:
    if spec.is_unpartitioned():
        yield None, data
        return
    for part in _determine_partitions(spec, schema, data):
        yield part.partition_key, part.arrow_table_partition
