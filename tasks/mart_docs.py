"""The marts' descriptions from the dbt docs, written as comments where the marts are published.

dbt's yml files (``dbt/models/marts/*.yml``) are the one place a mart and its columns are
described. Publishing to Postgres copies them onto the published tables with ``COMMENT ON
TABLE`` / ``COMMENT ON COLUMN``, in the publish's own transaction, so a BI tool (Superset's
"sync columns", Metabase, Grafana, ``\\d+`` in psql) shows what each column means. Databases
without comments (SQLite, the embedded profile) are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml
from sqlalchemy import Column, Connection, MetaData, Table, Text
from sqlalchemy.schema import ExecutableDDLElement, SetColumnComment, SetTableComment

from tasks.dbt_runner import DBT_PROJECT_DIR

__all__ = ["MartDocs", "comment_mart", "comment_statements", "load_mart_docs"]


@dataclass(frozen=True)
class MartDocs:
    """One model's description and its columns' descriptions, whitespace collapsed."""

    description: str
    columns: dict[str, str] = field(default_factory=dict)


def _text(value: object) -> str:
    return " ".join(str(value or "").split())


@cache
def load_mart_docs(models_dir: Path = DBT_PROJECT_DIR / "models" / "marts") -> dict[str, MartDocs]:
    """Model name → its docs, from every yml file in ``models_dir``."""
    docs: dict[str, MartDocs] = {}
    for path in sorted(models_dir.glob("*.yml")):
        for model in (yaml.safe_load(path.read_text()) or {}).get("models", []):
            columns = {c["name"]: _text(c.get("description")) for c in model.get("columns", [])}
            docs[model["name"]] = MartDocs(
                _text(model.get("description")), {k: v for k, v in columns.items() if v}
            )
    return docs


def comment_statements(
    mart: str, columns: Iterable[str], docs: dict[str, MartDocs] | None = None
) -> list[ExecutableDDLElement]:
    """``COMMENT ON`` statements for ``mart`` and those of its ``columns`` dbt documents."""
    model = (load_mart_docs() if docs is None else docs).get(mart)
    if model is None:
        return []
    documented = [c for c in columns if c in model.columns]
    table = Table(
        mart,
        MetaData(),
        *(Column(c, Text(), comment=model.columns[c]) for c in documented),
        comment=model.description or None,
    )
    statements: list[ExecutableDDLElement] = [SetColumnComment(c) for c in table.columns]
    if table.comment:
        statements.insert(0, SetTableComment(table))
    return statements


def comment_mart(
    conn: Connection, mart: str, columns: Iterable[str], docs: dict[str, MartDocs] | None = None
) -> int:
    """Put the dbt description of ``mart`` and of its ``columns`` on the published table.

    Returns:
        How many comments were set: 0 on a database without comments (SQLite) or for an
        undocumented mart.
    """
    if not conn.dialect.supports_comments:
        return 0
    statements = comment_statements(mart, columns, docs)
    for statement in statements:
        conn.execute(statement)
    return len(statements)
