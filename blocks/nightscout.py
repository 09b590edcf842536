"""Prefect block for one Nightscout site: where it is and how to authenticate."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

__all__ = ["NightscoutSite"]


class NightscoutSite(Block):
    """A Nightscout site Cascade ingests from.

    The API secret is stored as the plain secret and sent as its SHA-1 hex in the
    ``api-secret`` header, as Nightscout expects; a token is sent as ``token=``.
    """

    _block_type_name = "Nightscout Site"
    _block_type_slug = "nightscout-site"
    _description = "Endpoint and credentials of a Nightscout site (v1 API)."

    url: str = Field(description="Base URL of the site, e.g. https://my-site.example.org")
    site_id: str = Field(
        default="default",
        description="Short id stored on every row and partition from this site.",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
    )
    api_secret: SecretStr | None = Field(
        default=None, description="The site's API_SECRET (plain text; hashed before sending)."
    )
    token: SecretStr | None = Field(
        default=None, description="An access token created in Nightscout's admin tools."
    )
    timezone: str | None = Field(
        default=None,
        description="IANA timezone overriding the site's profile timezone, e.g. Europe/London.",
    )
