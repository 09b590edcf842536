"""Publish gold marts from the lakehouse into the marts database, for BI tools.

The marts database is a SQLite file (``$CASCADE_HOME/marts.db``) on the embedded profile and
Postgres on the stack, reached through prefect-sqlalchemy's (sync-only) ``SqlAlchemyConnector``.

A publish writes only what changed since the build the database last received, when it can
tell (``plan_publish``): the rows of the rebuilt (site, day) partitions of a per-day mart
(deleted, then inserted) and the rebuilt sites of a per-site mart; a mart is replaced whole
on a first publish, after a publish of another ref, a rollback, a full rebuild, or when its
columns changed.

Readers never see half a mart, nor a mix of old and new marts: one transaction, per publish,
updates every mart (a whole mart: creates ``<mart>__new``, bulk-inserts the rows, drops
``<mart>``, renames ``<mart>__new`` to ``<mart>``) and appends one row per mart to
``cascade_publish_log`` (mart, ref, ref_hash, run_id, n_rows, published_at, and the build
and mode) so a BI user can see which lakehouse ref a mart came from. DDL is transactional
in SQLite and PostgreSQL, so the swap is all-or-nothing there; on dialects that commit DDL
implicitly (MySQL, Oracle) the same code runs but is not atomic.

On SQLite the writer switches the file to WAL (readers keep reading the old marts while a
publish runs) and takes the write lock up front with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Date,
    DateTime,
    Double,
    Engine,
    Index,
    MetaData,
    Numeric,
    Table,
    Text,
    Time,
    and_,
    inspect,
    or_,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.types import TypeEngine

from tasks import timeouts
from tasks.build_log import Grain, TouchedRange, TouchedSet
from tasks.errors import PublishError
from tasks.faults import fault_point
from tasks.mart_docs import comment_mart

__all__ = [
    "PUBLISH_LOG",
    "MartRows",
    "PublishReport",
    "PublishedState",
    "mask_url",
    "publish_marts",
    "publish_marts_task",
    "published_columns",
    "published_state",
    "read_mart",
    "validate_name",
]

PUBLISH_LOG: Final = "cascade_publish_log"
_STAGING_SUFFIX: Final = "__new"
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Postgres truncates identifiers at 63 bytes; the staging name must fit too.
_MAX_NAME: Final = 63 - len(_STAGING_SUFFIX)
_BATCH_ROWS: Final = 10_000
_RANGES_PER_DELETE: Final = 200  # SQLite caps an expression's depth at 1,000
_INTEGERS: Final = (
    pl.Int8,
    pl.Int16,
    pl.Int32,
    pl.Int64,
    pl.UInt8,
    pl.UInt16,
    pl.UInt32,
    pl.UInt64,
)


@dataclass(frozen=True)
class MartRows:
    """Rows to publish for one mart: the whole mart (``scope`` everything), or the rows of
    the partitions ``scope`` names (per site and local day, or per site, by ``grain``),
    which replace those partitions' rows in the database."""

    rows: pl.DataFrame
    scope: TouchedSet = field(default_factory=lambda: TouchedSet(None))
    grain: Grain = "table"

    @property
    def whole(self) -> bool:
        return self.scope.everything or self.grain == "table"


@dataclass(frozen=True)
class PublishedState:
    """What the marts database last received: from which ref and build."""

    ref: str
    ref_hash: str
    build_seq: int | None
    build_id: str | None


@dataclass(frozen=True)
class PublishReport:
    """What one publish wrote, where, from which ref, and how long it took."""

    marts: dict[str, int]
    database: str
    ref: str
    ref_hash: str
    run_id: str
    seconds: float = field(default=0.0)
    modes: dict[str, str] = field(default_factory=dict)  # mart -> "whole" | "partitions"
    build_seq: int | None = None


# ----------------------------------------------------------------------------- names


def mask_url(url: URL | str) -> str:
    """The database URL with its password replaced by ``***``."""
    return make_url(url).render_as_string(hide_password=True)


def validate_name(name: str, what: str = "table") -> str:
    """Return ``name`` if it is a safe lowercase SQL identifier, else raise PublishError."""
    if not _NAME.match(name) or len(name) > _MAX_NAME:
        raise PublishError(
            f"{what} name {name!r} is not allowed: use lowercase letters, digits and '_', "
            f"starting with a letter or '_', at most {_MAX_NAME} characters (rename it in the "
            "dbt model or the frame)"
        )
    if name == PUBLISH_LOG or name.endswith(_STAGING_SUFFIX):
        raise PublishError(
            f"{what} name {name!r} is reserved for the publisher ({PUBLISH_LOG}, "
            f"'*{_STAGING_SUFFIX}'): rename the mart"
        )
    return name


# -------------------------------------------------------------------------- schema


def _sql_type(dtype: pl.DataType) -> TypeEngine[Any] | None:
    """The SQLAlchemy column type for a polars dtype, or None if it has none."""
    if isinstance(dtype, _INTEGERS):
        return BigInteger()
    if isinstance(dtype, (pl.Float32, pl.Float64)):
        return Double()
    if isinstance(dtype, (pl.String, pl.Categorical, pl.Enum, pl.Null)):
        return Text()
    if isinstance(dtype, pl.Boolean):
        return Boolean()
    if isinstance(dtype, pl.Date):
        return Date()
    if isinstance(dtype, pl.Datetime):
        return DateTime(timezone=dtype.time_zone is not None)
    if isinstance(dtype, pl.Time):
        return Time()
    if isinstance(dtype, pl.Decimal):
        return Numeric(dtype.precision, dtype.scale)
    return None


def _columns(mart: str, frame: pl.DataFrame) -> list[Column[Any]]:
    """Typed columns for a mart's frame; PublishError on a bad name or an unmappable dtype."""
    columns: list[Column[Any]] = []
    for name, dtype in frame.schema.items():
        validate_name(name, f"column of mart {mart!r}:")
        sql_type = _sql_type(dtype)
        if sql_type is None:
            raise PublishError(
                f"mart {mart!r} column {name!r} has dtype {dtype}, which has no SQL column type: "
                "flatten or cast it (to String, a number or a date) in the mart model"
            )
        columns.append(Column(name, sql_type))
    return columns


def _prepare(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame as the database stores it: timezone-aware datetimes in UTC, enums as text."""
    casts = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            casts.append(pl.col(name).dt.convert_time_zone("UTC"))
        elif isinstance(dtype, (pl.Categorical, pl.Enum, pl.Null)):
            casts.append(pl.col(name).cast(pl.String))
    return frame.with_columns(casts) if casts else frame


# columns the publish log gained after its first version: added to older databases
_LOG_ADDED: Final = (("build_seq", BigInteger()), ("build_id", Text()), ("mode", Text()))


def _publish_log_table(metadata: MetaData) -> Table:
    return Table(
        PUBLISH_LOG,
        metadata,
        Column("mart", Text(), nullable=False),
        Column("ref", Text(), nullable=False),
        Column("ref_hash", Text(), nullable=False),
        Column("run_id", Text(), nullable=False),
        Column("n_rows", BigInteger(), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=False),
        *(Column(name, sql_type, nullable=True) for name, sql_type in _LOG_ADDED),
    )


def _ensure_publish_log(conn: Connection, log: Table) -> None:
    """Create the publish log, or add the columns an older one lacks."""
    log.create(conn, checkfirst=True)
    have = {c["name"] for c in inspect(conn).get_columns(PUBLISH_LOG)}
    preparer = conn.dialect.identifier_preparer
    for name, sql_type in _LOG_ADDED:
        if name not in have:
            conn.exec_driver_sql(
                f"alter table {preparer.quote(PUBLISH_LOG)} add column {preparer.quote(name)} "
                f"{sql_type.compile(dialect=conn.dialect)}")


# ---------------------------------------------------------------------------- writes


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction; on SQLite in WAL mode, with the write lock taken up front."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    # pysqlite only opens transactions before DML, so DDL would autocommit: we issue
    # BEGIN/COMMIT ourselves on a connection SQLAlchemy leaves in autocommit mode.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.url.database not in (None, "", ":memory:"):
            conn.exec_driver_sql("pragma journal_mode=wal")
        conn.exec_driver_sql("pragma busy_timeout=60000")
        conn.exec_driver_sql("begin immediate")
        try:
            yield conn
        except BaseException:
            # SQLite rolls back by itself on some errors (disk full, I/O): don't mask them.
            if getattr(conn.connection.dbapi_connection, "in_transaction", True):
                conn.exec_driver_sql("rollback")
            raise
        conn.exec_driver_sql("commit")


def _insert_rows(conn: Connection, table: Table, frame: pl.DataFrame) -> None:
    """Bulk-insert a frame's rows into ``table`` (executemany, in batches)."""
    for batch in frame.iter_slices(n_rows=_BATCH_ROWS):
        rows = batch.to_dicts()
        if rows:
            conn.execute(table.insert(), rows)


def _swap_mart(conn: Connection, name: str, frame: pl.DataFrame) -> None:
    """Load ``frame`` into ``<name>__new``, then replace ``<name>`` with it; a mart keyed
    by site (and local day) gets an index on that key, which partition updates use."""
    metadata = MetaData()
    staging = Table(name + _STAGING_SUFFIX, metadata, *_columns(name, frame))
    staging.drop(conn, checkfirst=True)
    staging.create(conn)
    _insert_rows(conn, staging, _prepare(frame))
    Table(name, metadata).drop(conn, checkfirst=True)
    preparer = conn.dialect.identifier_preparer
    conn.exec_driver_sql(
        f"alter table {preparer.quote(staging.name)} rename to {preparer.quote(name)}"
    )
    key = [c for c in ("site_id", "local_date") if c in frame.columns]
    if "site_id" in key:
        table = Table(name, MetaData(), *_columns(name, frame))
        Index(f"ix_{name}_key"[:63], *(table.c[c] for c in key)).create(conn)


def _replace_partitions(conn: Connection, name: str, mart: MartRows) -> None:
    """Delete the mart's rows of ``mart.scope``, then insert ``mart.rows``."""
    table = Table(name, MetaData(), *_columns(name, mart.rows))
    ranges = list(mart.scope.ranges or ())
    for i in range(0, len(ranges), _RANGES_PER_DELETE):
        conn.execute(table.delete().where(
            _scope_clause(table, ranges[i:i + _RANGES_PER_DELETE], mart.grain)))
    _insert_rows(conn, table, _prepare(mart.rows))


def _scope_clause(table: Table, ranges: list[TouchedRange], grain: Grain
                  ) -> ColumnElement[bool]:
    """Rows of ``ranges`` (site_day: by site and local day; site: by site) — the rows the
    build's partitions hold (tasks.build_log.TouchedSet.iceberg_filter)."""
    sites = sorted({r.site_id for r in ranges})
    if grain == "site":
        return table.c.site_id.in_(sites)
    day = table.c.local_date
    terms: list[ColumnElement[bool]] = [and_(table.c.site_id.in_(sites), day.is_(None))]
    for r in ranges:
        if r.whole_site or r.first_date is None or r.last_date is None:
            terms.append(table.c.site_id == r.site_id)
        else:
            terms.append(and_(table.c.site_id == r.site_id, day >= r.first_date,
                              day <= r.last_date))
    return or_(*terms)


def published_state(connector: SqlAlchemyConnector) -> PublishedState | None:
    """What the database last received (its latest publish), None when unknown (never
    published, or published before builds were numbered)."""
    engine = _engine(connector, None, reading=True)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(PUBLISH_LOG):
                return None
            log = Table(PUBLISH_LOG, MetaData(), autoload_with=conn)
            if "build_seq" not in log.c:
                return None
            row = conn.execute(select(log.c.ref, log.c.ref_hash, log.c.build_seq,
                                      log.c.build_id)
                               .order_by(log.c.published_at.desc()).limit(1)).first()
    except SQLAlchemyError as exc:
        raise _publish_error(exc, None, engine.url, reading=True) from None
    if row is None:
        return None
    return PublishedState(row[0], row[1], row[2], row[3])


def published_columns(connector: SqlAlchemyConnector) -> dict[str, list[str]]:
    """The columns of every mart table in the database (to tell a mart whose shape
    changed, which is then replaced whole)."""
    engine = _engine(connector, None, reading=True)
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            return {name: [c["name"] for c in inspector.get_columns(name)]
                    for name in inspector.get_table_names() if name != PUBLISH_LOG}
    except SQLAlchemyError as exc:
        raise _publish_error(exc, None, engine.url, reading=True) from None


def _hint(exc: Exception) -> str:
    """What to do about a database error, in a few words."""
    text = str(exc).lower()
    if isinstance(exc, ImportError):
        return "install the URL's database driver (psycopg2 for postgresql+psycopg2) or fix the URL"
    if "depend" in text:
        return "drop the views that depend on the mart, publish, then re-create them"
    if "locked" in text or "lock timeout" in text:
        return "another writer holds the database: wait for it to finish and retry"
    if "permission" in text or "denied" in text or "readonly" in text or "read-only" in text:
        return "grant the publishing user create/drop rights on the marts schema"
    if "connect" in text or "unable to open" in text or "password" in text:
        return "check the database is reachable and the credentials in the marts block"
    return "check the mart's columns and the database's logs, then re-run the publish"


def _publish_error(
    exc: Exception, mart: str | None, url: URL, *, reading: bool = False
) -> PublishError:
    """A PublishError naming the mart and the masked database, never the password."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    detail = f"{type(cause).__name__}: {lines[0] if lines else ''}"
    if url.password:
        detail = detail.replace(str(url.password), "***")
    where = f"mart {mart!r}" if mart else "the marts"
    if reading:
        return PublishError(
            f"reading {where} from {mask_url(url)} failed ({detail}): check it was "
            "published (see cascade_publish_log) and the database is reachable"
        )
    return PublishError(
        f"publishing {where} to {mask_url(url)} failed ({detail}); nothing was changed, "
        f"every mart keeps its previous content: {_hint(exc)}"
    )


def _connector_url(connector: SqlAlchemyConnector) -> URL:
    """The connector's URL, without creating an engine."""
    info = connector.connection_info
    url: URL = info.create_url() if isinstance(info, ConnectionComponents) else make_url(str(info))
    return url


def _engine(connector: SqlAlchemyConnector, mart: str | None, *, reading: bool = False) -> Engine:
    """The connector's engine; PublishError when the URL or its driver is unusable."""
    try:
        engine: Engine = connector.get_engine()
    except (SQLAlchemyError, ImportError) as exc:
        url = _connector_url(connector)
        raise _publish_error(exc, mart, url, reading=reading) from None
    return engine


def publish_marts(
    connector: SqlAlchemyConnector,
    marts: Mapping[str, pl.DataFrame | MartRows],
    *,
    ref: str,
    ref_hash: str,
    run_id: str,
    build_seq: int | None = None,
    build_id: str | None = None,
) -> PublishReport:
    """Update every mart in the marts database in one transaction, and log where it came from.

    Args:
        connector: the marts database.
        marts: mart name → its rows (the whole mart) or ``MartRows`` (the rows of some of its
            partitions, which replace theirs); names and column names must match
            ``^[a-z_][a-z0-9_]*$``.
        ref: lakehouse ref (branch or tag) the marts were read from.
        ref_hash: commit hash of that ref.
        run_id: the flow run that published them.
        build_seq, build_id: the latest build on ``ref`` (what the database now holds), so
            the next publish can write only what later builds changed.

    Returns:
        Rows written per mart, how (whole or by partition), the masked database URL, the
        ref and the elapsed seconds.

    Raises:
        PublishError: a name or dtype is not publishable, or the database refused; nothing
            was changed.
    """
    started = time.perf_counter()
    updates = {name: m if isinstance(m, MartRows) else MartRows(m) for name, m in marts.items()}
    for name, mart in updates.items():
        validate_name(name, "mart")
        _columns(name, mart.rows)
    engine = _engine(connector, None)
    log = _publish_log_table(MetaData())
    current: str | None = None
    try:
        with _transaction(engine) as conn:
            _ensure_publish_log(conn, log)
            published_at = datetime.now(UTC)
            for current, mart in updates.items():
                if mart.whole:
                    _swap_mart(conn, current, mart.rows)
                    comment_mart(conn, current, mart.rows.columns)  # dbt docs, where supported
                else:  # a table keeps its comments: only whole marts need them again
                    _replace_partitions(conn, current, mart)
                row = _log_row(current, mart.rows, ref, ref_hash, run_id, published_at)
                conn.execute(log.insert(), [{**row, "build_seq": build_seq,
                                             "build_id": build_id,
                                             "mode": "whole" if mart.whole else "partitions"}])
                fault_point("publish-mid-transaction")
            current = None
    except SQLAlchemyError as exc:
        error = _publish_error(exc, current, engine.url)
        raise error from (exc.orig if isinstance(exc, DBAPIError) else None)
    return PublishReport(
        marts={name: mart.rows.height for name, mart in updates.items()},
        database=mask_url(engine.url),
        ref=ref,
        ref_hash=ref_hash,
        run_id=run_id,
        seconds=round(time.perf_counter() - started, 3),
        modes={name: "whole" if mart.whole else "partitions" for name, mart in updates.items()},
        build_seq=build_seq,
    )


def _log_row(
    mart: str, frame: pl.DataFrame, ref: str, ref_hash: str, run_id: str, at: datetime
) -> dict[str, object]:
    return {
        "mart": mart,
        "ref": ref,
        "ref_hash": ref_hash,
        "run_id": run_id,
        "n_rows": frame.height,
        "published_at": at,
    }


# ----------------------------------------------------------------------------- reads


def read_mart(
    connector: SqlAlchemyConnector, name: str, schema: Mapping[str, pl.DataType] | None = None
) -> pl.DataFrame:
    """Read a published mart (or the publish log) back as a frame.

    Values come back through the columns' declared SQL types, so dates are dates even on
    SQLite. SQLite keeps no timezone: pass the frame's ``schema`` to restore timezone-aware
    datetimes (stored in UTC) and exact integer widths.
    """
    if name != PUBLISH_LOG:
        validate_name(name, "mart")
    engine = _engine(connector, name, reading=True)
    try:
        with engine.connect() as conn:
            table = Table(name, MetaData(), autoload_with=conn)
            rows = conn.execute(select(table)).all()
    except SQLAlchemyError as exc:
        raise _publish_error(exc, name, engine.url, reading=True) from None
    columns = [column.name for column in table.columns]
    dtypes: dict[str, pl.DataType | None] = {c.name: _polars_type(c.type) for c in table.columns}
    dtypes.update(schema or {})
    data = {col: [row[i] for row in rows] for i, col in enumerate(columns)}
    return pl.DataFrame([_series(c, data[c], dtypes.get(c)) for c in columns])


def _series(name: str, values: list[object], dtype: pl.DataType | None) -> pl.Series:
    """A column from database values; aware datetimes go through UTC first."""
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        utc = pl.Series(name, values, dtype=pl.Datetime(dtype.time_unit, None), strict=False)
        return utc.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone)
    return pl.Series(name, values, dtype=dtype, strict=False)


def _polars_type(sql_type: TypeEngine[Any]) -> pl.DataType | None:
    """The polars dtype for a reflected SQL type; None lets polars infer."""
    if isinstance(sql_type, DateTime):
        return pl.Datetime("us", "UTC" if sql_type.timezone else None)
    mapping: list[tuple[type[TypeEngine[Any]], Callable[[], pl.DataType]]] = [
        (Date, pl.Date),
        (Boolean, pl.Boolean),
        (BigInteger, pl.Int64),
        (Double, pl.Float64),
        (Text, pl.String),
        (Time, pl.Time),
    ]
    for sql_class, dtype in mapping:
        if isinstance(sql_type, sql_class):
            return dtype()
    return None


# ------------------------------------------------------------------------ Prefect wrapper

@task(name="publish-marts", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE,
      timeout_seconds=timeouts.PUBLISH)
def publish_marts_task(
    marts: Mapping[str, pl.DataFrame | MartRows],
    ref: str,
    ref_hash: str,
    run_id: str,
    connector: SqlAlchemyConnector,
    build_seq: int | None = None,
    build_id: str | None = None,
) -> PublishReport:
    """Publish the marts to the marts database ``connector`` (closed afterwards)."""
    with connector:
        report = publish_marts(connector, marts, ref=ref, ref_hash=ref_hash, run_id=run_id,
                               build_seq=build_seq, build_id=build_id)
    counts = ", ".join(f"{name} {n} ({report.modes[name]})"
                       for name, n in report.marts.items()) or "no marts"
    get_run_logger().info(
        "published %s from %s@%s to %s in %.1f s",
        counts,
        ref,
        ref_hash[:12],
        report.database,
        report.seconds,
    )
    return report
