"""Apache Superset settings for Cascade's stack, natively and in docker-compose.

Superset imports this file through ``SUPERSET_CONFIG_PATH``. Every secret comes from the
environment (``scripts/stack.py`` passes them from ``.cascade-stack/stack.env``; compose
from ``.env``); none is written to Superset's metadata database:

- ``SUPERSET_SECRET_KEY`` signs sessions and encrypts what Superset stores encrypted.
- ``SUPERSET_DB_PASSWORD`` is the password of the ``superset`` role that owns the
  metadata database ``superset`` in the stack's Postgres.
- ``MARTS_READER_PASSWORD`` is handed to the "Cascade marts" connection when it connects
  (``DB_CONNECTION_MUTATOR``): its URI carries the read-only role ``marts_reader`` and no
  password, so rotating the password needs no change inside Superset.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine.url import URL


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(
            f"{name} is not set: start Superset with `python3 scripts/cascade.py stack up "
            "--with bi` (it reads .cascade-stack/stack.env), or set it in docker-compose's .env"
        )
    return value


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


_PG_HOST = _env("POSTGRES_HOST", "127.0.0.1")
_PG_PORT = _env("POSTGRES_PORT", "5432")
MARTS_READER = "marts_reader"

SECRET_KEY = _required("SUPERSET_SECRET_KEY")
SQLALCHEMY_DATABASE_URI = (
    f"postgresql+psycopg2://superset:{quote(_required('SUPERSET_DB_PASSWORD'), safe='')}"
    f"@{_PG_HOST}:{_PG_PORT}/superset"
)
# Examples are never loaded; point their connection at the metadata database's
# server rather than at a SQLite file Superset would create in its home.
SQLALCHEMY_EXAMPLES_URI = SQLALCHEMY_DATABASE_URI


def DB_CONNECTION_MUTATOR(  # the name Superset looks up
    uri: URL, params: dict[str, Any], username: str | None, security_manager: Any, source: Any
) -> tuple[URL, dict[str, Any]]:
    """Give the read-only marts role its password at connect time (none is stored)."""
    if uri.username == MARTS_READER and not uri.password:
        uri = uri.set(password=_required("MARTS_READER_PASSWORD"))
    return uri, params


# No Redis on the stack: Superset's defaults keep filter and form state in the metadata
# database; rate-limit counters live in memory (one process). Chart results are not cached:
# the marts are small, and a dashboard opened after a publish must show the new rows at
# once, not a day-old cached answer (Superset's default keeps results for 24 h).
RATELIMIT_STORAGE_URI = "memory://"
DATA_CACHE_CONFIG = {"CACHE_TYPE": "NullCache"}
FEATURE_FLAGS = {
    "DASHBOARD_NATIVE_FILTERS": True,
    "ALERT_REPORTS": False,
    "THUMBNAILS": False,
}
# Served on 127.0.0.1 over plain HTTP: cookies must work without TLS.
SESSION_COOKIE_SECURE = False
SESSION_COOKIE_SAMESITE = "Lax"
# Charts read small marts; keep a query from holding a worker thread for long.
SQLLAB_TIMEOUT = 60
SUPERSET_WEBSERVER_TIMEOUT = 120
ROW_LIMIT = 50_000
LOG_LEVEL = "INFO"
