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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr

from tasks.errors import ConfigError

__all__ = [
    "LakehouseSettings",
    "NightscoutSettings",
    "load_lakehouse_settings",
    "load_nightscout_settings",
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


@dataclass(frozen=True)
class LakehouseSettings:
    """Where the embedded lakehouse lives."""

    home: Path
    timezone_override: str | None = None

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
    """Resolve the embedded lakehouse root and timezone override from the environment."""
    root = Path(home or _env("CASCADE_HOME") or Path.cwd() / ".cascade").expanduser()
    override = _env("CASCADE_TIMEZONE")
    if override is not None:
        validate_timezone(override)
    return LakehouseSettings(home=root.resolve(), timezone_override=override)
