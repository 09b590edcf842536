"""Settings, 12-factor: environment variables, with Prefect blocks taking precedence.

Precedence for every value: an explicit argument, then a block document (when one is
named), then the environment, then the default.

| variable                 | meaning                                                    |
| ------------------------ | ---------------------------------------------------------- |
| NIGHTSCOUT_URL           | base URL of the Nightscout site (unset: bundled simulator)  |
| NIGHTSCOUT_API_SECRET    | plain API secret; sent as its SHA-1 hex                    |
| NIGHTSCOUT_TOKEN         | access token; sent as ``token=``                           |
| NIGHTSCOUT_SITE_ID       | site id stored on every row (default ``default``)          |
| NIGHTSCOUT_BLOCK         | name of a ``nightscout-site`` block to load instead        |
| CASCADE_HOME             | root of the embedded lakehouse (default ``./.cascade``)     |
| CASCADE_TIMEZONE         | IANA timezone overriding the site's profile timezone        |
| CASCADE_PROFILE          | ``embedded`` (default) or ``stack``                        |
| CASCADE_MARTS_BLOCK      | name of a ``sqlalchemy-connector`` block for the marts DB   |

Stack profile (``CASCADE_PROFILE=stack``; ``scripts/stack.py up`` writes these to
``.cascade-stack/stack.env``; blocks named by ``CASCADE_*_BLOCK`` take precedence):

| variable                 | meaning                                                    |
| ------------------------ | ---------------------------------------------------------- |
| NESSIE_URI               | Nessie base URL (REST API v2 under /api/v2, Iceberg under /iceberg) |
| NESSIE_TOKEN             | bearer token for Nessie, when it requires one              |
| S3_ENDPOINT, S3_REGION   | the object store (MinIO) holding the warehouse             |
| MINIO_ROOT_USER / _PASSWORD | S3 access key and secret (or S3_ACCESS_KEY / S3_SECRET_KEY) |
| LAKE_BUCKET              | the warehouse bucket (default ``lake``)                     |
| TRINO_HOST, TRINO_PORT, TRINO_USER, TRINO_CATALOG | Trino and its catalog for ``main`` |
| TRINO_PASSWORD / TRINO_JWT | Trino password (https + basic auth) or JWT bearer        |
| POSTGRES_HOST/_PORT/_USER/_PASSWORD, MARTS_DATABASE | the marts database         |
| CASCADE_NESSIE_BLOCK, CASCADE_TRINO_BLOCK, CASCADE_S3_BLOCK | block names instead  |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr

from tasks.errors import ConfigError
from tasks.redaction import register_secret, register_token

__all__ = [
    "LakehouseSettings",
    "NightscoutSettings",
    "StackSettings",
    "load_lakehouse_settings",
    "load_nightscout_settings",
    "load_stack_settings",
    "validate_timezone",
]

_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class NightscoutSettings:
    """Where a Nightscout site is and how to authenticate; secrets stay wrapped."""

    url: str
    site_id: str = "default"
    api_secret: SecretStr | None = None
    token: SecretStr | None = None
    timezone: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"Nightscout URL {self.url!r} must start with http:// or https:// "
                "(set NIGHTSCOUT_URL or the block's url)"
            )
        if not _SITE_ID.match(self.site_id):
            raise ConfigError(
                f"site id {self.site_id!r} must be lowercase letters, digits, '-' or '_'"
            )
        if self.timezone is not None:
            validate_timezone(self.timezone)
        if self.api_secret is not None:
            register_secret(self.api_secret.get_secret_value())
        if self.token is not None:
            register_token(self.token.get_secret_value())


@dataclass(frozen=True)
class LakehouseSettings:
    """Where the embedded lakehouse lives."""

    home: Path

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse"

    @property
    def marts_path(self) -> Path:
        return self.home / "marts.db"


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA timezone, else raise ConfigError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown timezone {name!r}: use an IANA name such as Europe/London "
            "(check CASCADE_TIMEZONE or the site's profile)"
        ) from None
    return name


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None


def load_nightscout_settings(
    url: str | None = None, block_name: str | None = None
) -> NightscoutSettings | None:
    """Resolve the Nightscout site: argument, then block, then environment.

    Returns None when nothing names a site (the caller may start the simulator).
    """
    block_name = block_name or _env("NIGHTSCOUT_BLOCK")
    if block_name:
        from blocks.nightscout import NightscoutSite

        block = cast(NightscoutSite, NightscoutSite.load(block_name))
        return NightscoutSettings(
            url=url or block.url,
            site_id=block.site_id,
            api_secret=block.api_secret,
            token=block.token,
            timezone=_env("CASCADE_TIMEZONE") or block.timezone,
        )
    url = url or _env("NIGHTSCOUT_URL")
    if url is None:
        return None
    return NightscoutSettings(
        url=url,
        site_id=_env("NIGHTSCOUT_SITE_ID") or "default",
        api_secret=_secret(_env("NIGHTSCOUT_API_SECRET")),
        token=_secret(_env("NIGHTSCOUT_TOKEN")),
        timezone=_env("CASCADE_TIMEZONE"),
    )


def load_lakehouse_settings(home: str | Path | None = None) -> LakehouseSettings:
    """Resolve the embedded lakehouse root from the environment."""
    root = Path(home or _env("CASCADE_HOME") or Path.cwd() / ".cascade").expanduser()
    return LakehouseSettings(home=root.resolve())


@dataclass(frozen=True)
class StackSettings:
    """Endpoints and credentials of the stack profile; every secret stays wrapped."""

    nessie_uri: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: SecretStr = field(repr=False)
    s3_region: str = "us-east-1"
    bucket: str = "lake"
    nessie_token: SecretStr | None = field(default=None, repr=False)
    trino_host: str = "127.0.0.1"
    trino_port: int = 8080
    trino_user: str = "cascade"
    trino_catalog: str = "lake"
    trino_http_scheme: str = "http"
    trino_password: SecretStr | None = field(default=None, repr=False)
    trino_jwt: SecretStr | None = field(default=None, repr=False)
    trino_verify: bool = True

    def __post_init__(self) -> None:
        for name in ("nessie_uri", "s3_endpoint"):
            if not getattr(self, name).startswith(("http://", "https://")):
                raise ConfigError(f"{name} {getattr(self, name)!r} must be an http(s) URL")
        for secret in (self.s3_secret_key, self.nessie_token, self.trino_password,
                       self.trino_jwt):
            if secret is not None:
                register_token(secret.get_secret_value())

    @property
    def s3_properties(self) -> dict[str, str]:
        """PyIceberg FileIO properties for the warehouse (static keys, path-style)."""
        return {
            "s3.endpoint": self.s3_endpoint,
            "s3.region": self.s3_region,
            "s3.access-key-id": self.s3_access_key,
            "s3.secret-access-key": self.s3_secret_key.get_secret_value(),
            "s3.path-style-access": "true",
        }


def _require_env(name: str, hint: str) -> str:
    value = _env(name)
    if value is None:
        raise ConfigError(f"{name} is not set: {hint}")
    return value


_STACK_HINT = ("start the stack (`python3 scripts/cascade.py stack up`) and load "
               "`.cascade-stack/stack.env`, or name blocks with CASCADE_NESSIE_BLOCK, "
               "CASCADE_TRINO_BLOCK and CASCADE_S3_BLOCK (`python -m flows register-blocks`)")


def load_stack_settings() -> StackSettings:
    """Resolve the stack profile's endpoints: blocks when named, else the environment."""
    from blocks.stack import load_stack_blocks

    values: dict[str, object] = {
        "nessie_uri": _env("NESSIE_URI"),
        "nessie_token": _secret(_env("NESSIE_TOKEN")),
        "s3_endpoint": _env("S3_ENDPOINT"),
        "s3_region": _env("S3_REGION") or "us-east-1",
        "s3_access_key": _env("S3_ACCESS_KEY") or _env("MINIO_ROOT_USER"),
        "s3_secret_key": _secret(_env("S3_SECRET_KEY") or _env("MINIO_ROOT_PASSWORD")),
        "bucket": _env("LAKE_BUCKET") or "lake",
        "trino_host": _env("TRINO_HOST") or "127.0.0.1",
        "trino_port": int(_env("TRINO_PORT") or 8080),
        "trino_user": _env("TRINO_USER") or "cascade",
        "trino_catalog": _env("TRINO_CATALOG") or "lake",
        "trino_http_scheme": _env("TRINO_HTTP_SCHEME") or "http",
        "trino_password": _secret(_env("TRINO_PASSWORD")),
        "trino_jwt": _secret(_env("TRINO_JWT")),
    }
    values.update(load_stack_blocks(nessie=_env("CASCADE_NESSIE_BLOCK"),
                                    trino=_env("CASCADE_TRINO_BLOCK"),
                                    s3=_env("CASCADE_S3_BLOCK")))
    for key, variable in (("nessie_uri", "NESSIE_URI"), ("s3_endpoint", "S3_ENDPOINT"),
                          ("s3_access_key", "MINIO_ROOT_USER"),
                          ("s3_secret_key", "MINIO_ROOT_PASSWORD")):
        if values[key] is None:
            raise ConfigError(f"{variable} is not set: {_STACK_HINT}")
    return StackSettings(**values)  # type: ignore[arg-type]


def marts_url_from_env() -> str | None:
    """SQLAlchemy URL of the stack's marts database from POSTGRES_* variables, if set."""
    host = _env("POSTGRES_HOST")
    if host is None:
        return None
    from sqlalchemy.engine import URL

    password = _require_env("POSTGRES_PASSWORD", "the marts database password")
    register_token(password)
    url = URL.create(
        "postgresql+psycopg2",
        username=_require_env("POSTGRES_USER", "the marts database user"),
        password=password,
        host=host,
        port=int(_env("POSTGRES_PORT") or 5432),
        database=_env("MARTS_DATABASE") or "marts",
    )
    return url.render_as_string(hide_password=False)
