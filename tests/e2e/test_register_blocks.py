"""`python -m flows register-blocks` on the embedded profile: types, and the site from env."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from prefect.client.orchestration import get_client

from blocks.nightscout import NightscoutSite
from flows.__main__ import main

pytestmark = pytest.mark.e2e


async def _block_type_slugs() -> set[str]:
    async with get_client() as client:
        return {t.slug for t in await client.read_block_types()}


def test_register_blocks_without_stack_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CASCADE_PROFILE", "MINIO_ROOT_USER", "NESSIE_URI", "POSTGRES_HOST",
                 "NIGHTSCOUT_URL"):
        monkeypatch.delenv(name, raising=False)

    assert main(["register-blocks", "--prefix", "embedded-test"]) == 0

    assert "saved no block document" in capsys.readouterr().out
    slugs = asyncio.run(_block_type_slugs())
    assert {"nightscout-site", "nessie-catalog", "trino-connection", "s3-bucket",
            "sqlalchemy-connector"} <= slugs


def test_register_blocks_saves_the_site_from_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CASCADE_PROFILE", raising=False)
    monkeypatch.setenv("NIGHTSCOUT_URL", "https://ns.example.org")
    monkeypatch.setenv("NIGHTSCOUT_SITE_ID", "clinic-e")
    monkeypatch.setenv("NIGHTSCOUT_API_SECRET", "register-blocks-secret")

    assert main(["register-blocks", "--prefix", "embedded-test"]) == 0

    out = capsys.readouterr().out
    assert "NIGHTSCOUT_BLOCK=embedded-test-nightscout" in out
    assert "register-blocks-secret" not in out
    site = cast(NightscoutSite, NightscoutSite.load("embedded-test-nightscout"))
    assert (site.url, site.site_id) == ("https://ns.example.org", "clinic-e")


def test_a_picked_site_reaches_the_flow_as_its_saved_block(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's block picker sends a ``$ref``; the flow gets the block and its name (which
    the run's children load it by)."""
    from flows.pipeline import _block_name, backfill

    block_id = NightscoutSite(url="https://ns.example.org", site_id="picked").save(
        "picked-site", overwrite=True)
    parameters = backfill.validate_parameters({
        "start": "2025-01-01", "end": "2025-01-02",
        "site": {"$ref": {"block_document_id": str(block_id)}}})

    assert isinstance(parameters["site"], NightscoutSite)
    assert _block_name(parameters["site"]) == "picked-site"
