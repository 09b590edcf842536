"""Catalog-level branches and tags: one interface, an embedded SQLite implementation.

A *ref* (branch or tag) is a whole catalog: the set of (table → metadata file) pointers.
Iceberg metadata files are immutable, so refs share them safely.

Embedded implementation, over PyIceberg's SQL catalog in one SQLite file:

* each ref is a ``catalog_name`` in PyIceberg's ``iceberg_tables`` table, so
  ``SqlCatalog(<ref>, uri=...)`` *is* "the catalog as of that ref";
* fork = copy the source's pointer rows, and remember them as the branch's base;
* merge = in one SQL transaction, compare-and-swap every pointer the branch changed:
  refused (``BranchConflict``, nothing changed) when ``main`` moved under a table that
  the branch changed since its base;
* every change to a branch's pointers through merge/reset is logged in ``cascade_ref_log``.

The stack profile implements the same ``BranchCatalog`` protocol over Nessie.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, NoReturn, Protocol

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy import Connection, Engine, create_engine, event, text

from tasks.errors import BranchConflict, BranchError, BranchExists, BranchNotFound
from tasks.faults import fault_point

__all__ = [
    "MAIN",
    "BranchCatalog",
    "EmbeddedBranchCatalog",
    "MergeResult",
    "RefInfo",
    "TableChange",
    "drop_if_untouched",
    "validate_ref_name",
]

MAIN: Final = "main"
_REF_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RefKind = Literal["branch", "tag"]


@dataclass(frozen=True)
class RefInfo:
    """A branch or tag and the hash of its pointer set."""

    name: str
    kind: RefKind
    hash: str
    created_at: str


@dataclass(frozen=True)
class TableChange:
    """One table whose pointer differs between two refs."""

    table: str
    kind: Literal["added", "changed", "removed"]
    from_location: str | None
    to_location: str | None


@dataclass(frozen=True)
class MergeResult:
    """What a merge did: the tables it moved and the target's hash before and after."""

    source: str
    target: str
    tables: list[str]
    hash_before: str
    hash_after: str


class _TagCatalog(SqlCatalog):
    """A tag's catalog: readable like any ref, refusing every change (tags never move)."""

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise BranchError(
            f"{self.name!r} is a tag and tags never move: write to a branch instead"
        )

    commit_table = _refuse
    create_table = _refuse
    drop_table = _refuse
    rename_table = _refuse
    register_table = _refuse
    create_namespace = _refuse
    drop_namespace = _refuse


class BranchCatalog(Protocol):
    """Branch and tag operations over a whole catalog (embedded SQLite or Nessie)."""

    def catalog(self, ref: str) -> Catalog: ...
    def create_branch(self, name: str, from_ref: str = MAIN) -> RefInfo: ...
    def list_refs(self) -> list[RefInfo]: ...
    def ref(self, name: str) -> RefInfo: ...
    def diff(self, ref: str, against: str = MAIN) -> list[TableChange]: ...
    def delete_branch(self, name: str) -> None: ...
    def tag(self, name: str, ref: str = MAIN) -> RefInfo: ...
    def merge(self, branch: str, into: str = MAIN, expected_hash: str | None = None,
              tag: str | None = None) -> MergeResult: ...
    def reset(self, branch: str, to_ref: str) -> RefInfo: ...


def validate_ref_name(name: str) -> str:
    """Return ``name`` if it is a valid branch/tag name, else raise BranchError."""
    if not _REF_NAME.match(name):
        raise BranchError(
            f"invalid branch or tag name {name!r}: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


_SCHEMA: Final = (
    """create table if not exists cascade_refs (
        name varchar(128) primary key,
        kind varchar(8) not null,
        created_at varchar(40) not null,
        created_from varchar(128)
    )""",
    """create table if not exists cascade_ref_base (
        ref varchar(128) not null,
        table_namespace varchar(255) not null,
        table_name varchar(255) not null,
        metadata_location varchar(1000),
        primary key (ref, table_namespace, table_name)
    )""",
    """create table if not exists cascade_ref_log (
        id integer primary key autoincrement,
        ref varchar(128) not null,
        at varchar(40) not null,
        operation varchar(16) not null,
        source varchar(128),
        hash_before varchar(64),
        hash_after varchar(64),
        pointers text not null
    )""",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _hash(pointers: dict[str, str | None]) -> str:
    blob = json.dumps(sorted(pointers.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class EmbeddedBranchCatalog:
    """Branches and tags over PyIceberg's SQL catalog in a SQLite file.

    Args:
        catalog_path: the SQLite file (``$CASCADE_HOME/catalog.db``).
        warehouse: the directory Iceberg data and metadata are written under.
    """

    def __init__(self, catalog_path: Path, warehouse: Path) -> None:
        catalog_path.parent.mkdir(parents=True, exist_ok=True)
        warehouse.mkdir(parents=True, exist_ok=True)
        self.catalog_path = catalog_path
        self.warehouse = warehouse
        self._uri = f"sqlite:///{catalog_path}?timeout=60"
        self._engine = _sqlite_engine(self._uri)
        self._catalogs: dict[str, SqlCatalog] = {}
        self._init()

    # ---------------------------------------------------------------- catalogs

    def catalog(self, ref: str) -> SqlCatalog:
        """The PyIceberg catalog as of ``ref``; writes through it land on that branch."""
        info = self.ref(ref)
        if ref not in self._catalogs:
            kind = _TagCatalog if info.kind == "tag" else SqlCatalog
            self._catalogs[ref] = kind(info.name, uri=self._uri,
                                       warehouse=self.warehouse.as_uri())
        return self._catalogs[ref]

    @property
    def uri(self) -> str:
        """SQLAlchemy URI of the catalog database."""
        return self._uri

    # ---------------------------------------------------------------- refs

    def create_branch(self, name: str, from_ref: str = MAIN) -> RefInfo:
        """Fork branch ``name`` from ``from_ref`` (copies pointers; no data is copied)."""
        validate_ref_name(name)
        with self._tx() as conn:
            self._require(conn, from_ref)
            self._refuse_existing(conn, name)
            self._insert_ref(conn, name, "branch", from_ref)
            self._copy_pointers(conn, from_ref, name)
            self._set_base(conn, name, self._pointers(conn, from_ref))
        return self.ref(name)

    def tag(self, name: str, ref: str = MAIN) -> RefInfo:
        """Tag the current state of ``ref`` as ``name`` (tags never move)."""
        validate_ref_name(name)
        with self._tx() as conn:
            self._require(conn, ref)
            self._refuse_existing(conn, name)
            self._insert_ref(conn, name, "tag", ref)
            self._copy_pointers(conn, ref, name)
        return self.ref(name)

    def list_refs(self) -> list[RefInfo]:
        """All branches and tags, main first."""
        with self._engine.connect() as conn:
            rows = conn.execute(text("select name from cascade_refs order by name")).all()
            names = [r[0] for r in rows]
        names.sort(key=lambda n: (n != MAIN, n))
        return [self.ref(n) for n in names]

    def ref(self, name: str) -> RefInfo:
        """One branch or tag, with the hash of its pointers."""
        with self._engine.connect() as conn:
            row = self._require(conn, name)
            kind: RefKind = "tag" if row["kind"] == "tag" else "branch"
            return RefInfo(name, kind, _hash(self._pointers(conn, name)), row["created_at"])

    def delete_branch(self, name: str) -> None:
        """Delete branch or tag ``name`` (its data files stay until maintenance)."""
        if name == MAIN:
            raise BranchError("refusing to delete main")
        with self._tx() as conn:
            self._require(conn, name)
            for table in ("iceberg_tables", "iceberg_namespace_properties"):
                conn.execute(text(f"delete from {table} where catalog_name = :n"), {"n": name})
            conn.execute(text("delete from cascade_ref_base where ref = :n"), {"n": name})
            conn.execute(text("delete from cascade_refs where name = :n"), {"n": name})
        self._catalogs.pop(name, None)

    def diff(self, ref: str, against: str = MAIN) -> list[TableChange]:
        """Tables whose pointer differs in ``ref`` compared with ``against``."""
        with self._engine.connect() as conn:
            self._require(conn, ref)
            self._require(conn, against)
            mine, theirs = self._pointers(conn, ref), self._pointers(conn, against)
        return _changes(theirs, mine)

    def history(self, ref: str = MAIN) -> list[dict[str, object]]:
        """Merges and resets applied to ``ref``, newest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                text("select id, at, operation, source, hash_before, hash_after from "
                     "cascade_ref_log where ref = :r order by id desc"), {"r": ref}
            ).mappings().all()
        return [dict(r) for r in rows]

    # ---------------------------------------------------------------- merge / reset

    def merge(self, branch: str, into: str = MAIN, expected_hash: str | None = None,
              tag: str | None = None) -> MergeResult:
        """Atomically move every pointer ``branch`` changed since its base onto ``into``.

        With ``tag``, the merged state is tagged in the same transaction: either both
        happen or neither does.

        Raises:
            BranchConflict: ``into`` moved under a table the branch changed (or, when
                ``expected_hash`` is given, moved at all). Nothing is changed.
        """
        with self._tx() as conn:
            self._require(conn, branch)
            if self._require(conn, into)["kind"] != "branch":
                raise BranchError(f"cannot merge into tag {into!r}: tags never move")
            if tag is not None:
                validate_ref_name(tag)
                self._refuse_existing(conn, tag)
            target, source = self._pointers(conn, into), self._pointers(conn, branch)
            base = self._base(conn, branch)
            before = _hash(target)
            if expected_hash is not None and expected_hash != before:
                raise BranchConflict(
                    f"{into} moved since it was checked (expected {expected_hash}, found "
                    f"{before}); nothing was merged: re-run validation on {branch!r}", []
                )
            changed = [t for t, loc in source.items() if base.get(t) != loc]
            conflicts = [t for t in changed if target.get(t) != base.get(t)]
            if conflicts:
                raise BranchConflict(
                    f"cannot merge {branch!r} into {into!r}: {into} changed since the branch "
                    f"was created in {', '.join(sorted(conflicts))}; nothing was merged. "
                    f"Re-run the pipeline on a fresh branch (ingestion is idempotent).",
                    sorted(conflicts),
                )
            for table in changed:
                self._put_pointer(conn, into, table, source[table])
                fault_point("promote-mid-merge")
            self._copy_namespaces(conn, branch, into)
            after = _hash(self._pointers(conn, into))
            self._log(conn, into, "merge", branch, before, after)
            self._set_base(conn, branch, self._pointers(conn, branch))
            if tag is not None:
                self._insert_ref(conn, tag, "tag", into)
                self._copy_pointers(conn, into, tag)
        self._catalogs.pop(into, None)
        return MergeResult(branch, into, sorted(changed), before, after)

    def reset(self, branch: str, to_ref: str) -> RefInfo:
        """Point every table of ``branch`` where ``to_ref`` points (e.g. undo a promote)."""
        with self._tx() as conn:
            if self._require(conn, branch)["kind"] != "branch":
                raise BranchError(f"cannot reset tag {branch!r}: tags never move")
            self._require(conn, to_ref)
            before = _hash(self._pointers(conn, branch))
            for table in ("iceberg_tables", "iceberg_namespace_properties"):
                conn.execute(text(f"delete from {table} where catalog_name = :n"), {"n": branch})
            self._copy_pointers(conn, to_ref, branch)
            after = _hash(self._pointers(conn, branch))
            self._log(conn, branch, "reset", to_ref, before, after)
        self._catalogs.pop(branch, None)
        return self.ref(branch)

    # ---------------------------------------------------------------- internals

    def _init(self) -> None:
        SqlCatalog(MAIN, uri=self._uri, warehouse=self.warehouse.as_uri())  # creates its tables
        with self._tx() as conn:
            for ddl in _SCHEMA:
                conn.execute(text(ddl))
            exists = conn.execute(text("select 1 from cascade_refs where name = :n"), {"n": MAIN})
            if exists.first() is None:
                self._insert_ref(conn, MAIN, "branch", None)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction, taking SQLite's write lock up front (BEGIN IMMEDIATE)."""
        with self._engine.connect() as conn:
            conn.exec_driver_sql("begin immediate")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("rollback")
                raise
            conn.exec_driver_sql("commit")

    def _require(self, conn: Connection, name: str) -> dict[str, str]:
        row = conn.execute(
            text("select name, kind, created_at from cascade_refs where name = :n"), {"n": name}
        ).mappings().first()
        if row is None:
            raise BranchNotFound(
                f"no branch or tag named {name!r} in {self.catalog_path}: list them with "
                "`python -m flows refs`"
            )
        return dict(row)

    def _refuse_existing(self, conn: Connection, name: str) -> None:
        found = conn.execute(text("select kind from cascade_refs where name = :n"), {"n": name})
        row = found.first()
        if row is not None:
            raise BranchExists(f"a {row[0]} named {name!r} already exists")

    def _insert_ref(self, conn: Connection, name: str, kind: str, source: str | None) -> None:
        conn.execute(
            text("insert into cascade_refs (name, kind, created_at, created_from) "
                 "values (:n, :k, :t, :s)"),
            {"n": name, "k": kind, "t": _now(), "s": source},
        )

    def _pointers(self, conn: Connection, ref: str) -> dict[str, str | None]:
        rows = conn.execute(
            text("select table_namespace, table_name, metadata_location from iceberg_tables "
                 "where catalog_name = :r"), {"r": ref}
        ).all()
        return {f"{ns}.{name}": (str(loc) if loc is not None else None) for ns, name, loc in rows}

    def _base(self, conn: Connection, ref: str) -> dict[str, str | None]:
        rows = conn.execute(
            text("select table_namespace, table_name, metadata_location from cascade_ref_base "
                 "where ref = :r"), {"r": ref}
        ).all()
        return {f"{ns}.{name}": (str(loc) if loc is not None else None) for ns, name, loc in rows}

    def _set_base(self, conn: Connection, ref: str, pointers: dict[str, str | None]) -> None:
        conn.execute(text("delete from cascade_ref_base where ref = :r"), {"r": ref})
        for table, loc in pointers.items():
            ns, name = table.rsplit(".", 1)
            conn.execute(
                text("insert into cascade_ref_base values (:r, :ns, :t, :loc)"),
                {"r": ref, "ns": ns, "t": name, "loc": loc},
            )

    def _copy_pointers(self, conn: Connection, source: str, target: str) -> None:
        columns = self._table_columns(conn, "iceberg_tables")
        rest = ", ".join(c for c in columns if c != "catalog_name")
        conn.execute(
            text(f"insert into iceberg_tables (catalog_name, {rest}) "
                 f"select :t, {rest} from iceberg_tables where catalog_name = :s"),
            {"s": source, "t": target},
        )
        self._copy_namespaces(conn, source, target)

    def _copy_namespaces(self, conn: Connection, source: str, target: str) -> None:
        conn.execute(
            text("insert or ignore into iceberg_namespace_properties "
                 "(catalog_name, namespace, property_key, property_value) "
                 "select :t, namespace, property_key, property_value "
                 "from iceberg_namespace_properties where catalog_name = :s"),
            {"s": source, "t": target},
        )

    def _put_pointer(self, conn: Connection, ref: str, table: str, location: str | None) -> None:
        ns, name = table.rsplit(".", 1)
        updated = conn.execute(
            text("update iceberg_tables set previous_metadata_location = metadata_location, "
                 "metadata_location = :loc where catalog_name = :r and table_namespace = :ns "
                 "and table_name = :t"),
            {"loc": location, "r": ref, "ns": ns, "t": name},
        )
        if updated.rowcount == 0:
            conn.execute(
                text("insert into iceberg_tables (catalog_name, table_namespace, table_name, "
                     "metadata_location, previous_metadata_location) "
                     "values (:r, :ns, :t, :loc, null)"),
                {"loc": location, "r": ref, "ns": ns, "t": name},
            )

    def _log(self, conn: Connection, ref: str, op: str, source: str, before: str,
             after: str) -> None:
        conn.execute(
            text("insert into cascade_ref_log (ref, at, operation, source, hash_before, "
                 "hash_after, pointers) values (:r, :at, :op, :s, :b, :a, :p)"),
            {"r": ref, "at": _now(), "op": op, "s": source, "b": before, "a": after,
             "p": json.dumps(self._pointers(conn, ref), sort_keys=True)},
        )

    @staticmethod
    def _table_columns(conn: Connection, table: str) -> list[str]:
        return [row[1] for row in conn.exec_driver_sql(f"pragma table_info({table})").all()]


def _changes(old: dict[str, str | None], new: dict[str, str | None]) -> list[TableChange]:
    out: list[TableChange] = []
    for table in sorted(old.keys() | new.keys()):
        before, after = old.get(table), new.get(table)
        if before == after:
            continue
        kind: Literal["added", "changed", "removed"] = (
            "added" if table not in old else "removed" if table not in new else "changed"
        )
        out.append(TableChange(table, kind, before, after))
    return out


def _sqlite_engine(uri: str) -> Engine:
    """An engine whose connections use WAL (readers never block the writer) and no
    pysqlite auto-transactions, so ``BEGIN IMMEDIATE`` is ours to issue."""
    engine = create_engine(uri)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cursor.execute("pragma journal_mode=wal")
        cursor.execute("pragma busy_timeout=60000")
        cursor.close()

    return engine


# ----------------------------------------------------------------------- Prefect wrappers


def drop_if_untouched(branches: BranchCatalog, name: str) -> bool:
    """Delete branch ``name`` when it holds nothing ``main`` does not (a run that failed
    before writing anything leaves nothing to inspect or resume); True if it was deleted."""
    try:
        if branches.diff(name):
            return False
    except BranchNotFound:
        return False
    branches.delete_branch(name)
    return True


@task(name="create-branch", task_run_name="branch {name} from {from_ref}",
      cache_policy=NO_CACHE)
def ensure_branch_task(branches: BranchCatalog, name: str, from_ref: str = MAIN) -> str:
    """Create branch ``name`` from ``from_ref`` unless it exists; return its name."""
    try:
        info = branches.ref(name)
    except BranchNotFound:
        info = branches.create_branch(name, from_ref)
        get_run_logger().info("created branch %s from %s at %s", name, from_ref, info.hash)
        return name
    if info.kind != "branch":
        raise BranchError(f"{name!r} is a tag; ingest into a branch")
    get_run_logger().info("writing to existing branch %s at %s", name, info.hash)
    return name
