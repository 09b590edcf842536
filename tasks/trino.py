"""Trino on the stack profile: connections, and one Iceberg catalog per Nessie ref.

Trino picks a Nessie ref per catalog (``iceberg.rest-catalog.prefix``). The static
catalog (``TRINO_CATALOG``, default ``lake``) reads ``main``; a run's branch gets its own
catalog, created with ``CREATE CATALOG`` (Trino's dynamic catalog management) just for
its build, and dropped afterwards. Catalog properties name the S3 keys as
``${ENV:…}`` references that the Trino server resolves from its own environment, so no
secret travels in SQL text (which Trino shows in its query history).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from tasks.errors import ConfigError, ServiceUnavailable, unreachable
from tasks.settings import StackSettings

__all__ = [
    "branch_catalog",
    "catalog_name",
    "connect",
    "query",
]

# The Trino server's environment holds the warehouse keys under these names
# (scripts/stack.py and docker-compose.yml set them).
S3_KEY_ENV: Final = "MINIO_ROOT_USER"
S3_SECRET_ENV: Final = "MINIO_ROOT_PASSWORD"
_UNSAFE: Final = re.compile(r"[^a-z0-9_]+")


def catalog_name(ref: str) -> str:
    """The Trino catalog for a Nessie ref: ``lake_<ref>`` in lowercase SQL identifier form."""
    name = "lake_" + _UNSAFE.sub("_", ref.lower()).strip("_")
    return name[:120]


def connect(settings: StackSettings, catalog: str | None = None) -> Any:
    """A Trino DB-API connection (password or JWT auth over https when configured)."""
    import trino

    auth: Any = None
    if settings.trino_password is not None:
        auth = trino.auth.BasicAuthentication(settings.trino_user,
                                              settings.trino_password.get_secret_value())
    elif settings.trino_jwt is not None:
        auth = trino.auth.JWTAuthentication(settings.trino_jwt.get_secret_value())
    if auth is not None and settings.trino_http_scheme != "https":
        raise ConfigError("Trino credentials need TRINO_HTTP_SCHEME=https (or the block's "
                          "http_scheme): Trino refuses passwords over plain http")
    return trino.dbapi.connect(  # type: ignore[no-untyped-call]
        host=settings.trino_host, port=settings.trino_port, user=settings.trino_user,
        catalog=catalog or settings.trino_catalog, http_scheme=settings.trino_http_scheme,
        auth=auth, verify=settings.trino_verify, source="cascade",
    )


def query(settings: StackSettings, sql: str, catalog: str | None = None,
          params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement and return all its rows."""
    con = connect(settings, catalog)
    try:
        cur = con.cursor()
        cur.execute(sql, params) if params else cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
    except Exception as exc:
        if unreachable(exc) is None:
            raise
        raise ServiceUnavailable(
            f"Trino at {settings.trino_http_scheme}://{settings.trino_host}:"
            f"{settings.trino_port} did not answer ({type(exc).__name__}): check that it runs "
            "(`python3 scripts/cascade.py stack status`), then re-run; nothing was promoted"
        ) from None
    finally:
        con.close()


def _catalog_properties(settings: StackSettings, ref: str) -> dict[str, str]:
    return {
        "iceberg.catalog.type": "rest",
        "iceberg.rest-catalog.uri": settings.nessie_uri.rstrip("/") + "/iceberg",
        "iceberg.rest-catalog.prefix": ref,
        "iceberg.rest-catalog.vended-credentials-enabled": "false",
        "iceberg.file-format": "PARQUET",
        "fs.native-s3.enabled": "true",
        "s3.endpoint": settings.s3_endpoint,
        "s3.region": settings.s3_region,
        "s3.path-style-access": "true",
        "s3.aws-access-key": "${ENV:" + S3_KEY_ENV + "}",
        "s3.aws-secret-key": "${ENV:" + S3_SECRET_ENV + "}",
    }


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@contextmanager
def branch_catalog(settings: StackSettings, ref: str) -> Iterator[str]:
    """A Trino catalog reading and writing Nessie ref ``ref``, for the ``with`` block only."""
    name = catalog_name(ref)
    existing = {row[0] for row in query(settings, "show catalogs")}
    if name not in existing:
        props = ", ".join(f'"{k}" = {_literal(v)}'
                          for k, v in _catalog_properties(settings, ref).items())
        query(settings, f"create catalog {name} using iceberg with ({props})")
    try:
        yield name
    finally:
        query(settings, f"drop catalog if exists {name}")
