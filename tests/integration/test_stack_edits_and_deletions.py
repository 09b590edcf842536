"""Edits and deletions reach the lake (issue 20) on the stack: branches in Nessie, files in
MinIO, dbt on Trino. The same check as the embedded one, under a site id of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.simulator import SimulatorServer, SiteConfig
from tests.e2e.test_edits_and_deletions import SECRET, TOKEN, edits_reach_the_marts
from tests.integration.conftest import NOW

pytestmark = pytest.mark.stack

SITE = SiteConfig(site_id="e" + uuid.uuid4().hex[:8], seed=13, timezone="Europe/London",
                  api_secret=SECRET, token=TOKEN)


@pytest.fixture(scope="module")
def source() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=90) as server:
        yield server


def test_edits_and_deletions_of_any_age_reach_the_marts_on_the_stack(
    stack_env: dict[str, str], source: SimulatorServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = {"CASCADE_PROFILE": "stack", "CASCADE_HOME": str(tmp_path / "cascade"),
            "NIGHTSCOUT_URL": source.url_for(SITE.site_id), "NIGHTSCOUT_API_SECRET": SECRET,
            "NIGHTSCOUT_TOKEN": TOKEN, "NIGHTSCOUT_SITE_ID": SITE.site_id}
    for name, value in site.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CASCADE_TIMEZONE", raising=False)
    monkeypatch.delenv("NIGHTSCOUT_BLOCK", raising=False)
    edits_reach_the_marts(source, SITE.site_id, {**stack_env, **site}, "build-mid-dbt")
