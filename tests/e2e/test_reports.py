"""Reports where users look: an mmol/L site's report and the parent run's summary, as
Prefect artifacts, with the HTML in the lakehouse's storage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact
from pydantic import SecretStr

from blocks.nightscout import NightscoutSite
from flows.pipeline import backfill
from flows.publish import publish
from tasks.simulator import SimulatorServer, SiteConfig
from tests.e2e.conftest import NOW

pytestmark = pytest.mark.e2e

UK = SiteConfig(site_id="uk-mmol", seed=21, timezone="Europe/London", api_secret="uk-secret",
                units="mmol")


@pytest.fixture(scope="module")
def uk_server() -> Iterator[SimulatorServer]:
    with SimulatorServer([UK], now=NOW, history_days=30) as server:
        yield server


@pytest.fixture
def uk_site(uk_server: SimulatorServer, cascade_home: Path,
            monkeypatch: pytest.MonkeyPatch) -> NightscoutSite:
    """The site as a saved nightscout-site block, as the UI's picker hands it to a flow."""
    for name in ("NIGHTSCOUT_URL", "NIGHTSCOUT_API_SECRET", "NIGHTSCOUT_SITE_ID",
                 "NIGHTSCOUT_TOKEN", "NIGHTSCOUT_BLOCK", "CASCADE_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    NightscoutSite(url=uk_server.url_for("uk-mmol"), site_id="uk-mmol",
                   api_secret=SecretStr("uk-secret")).save("uk-mmol-site", overwrite=True)
    return cast(NightscoutSite, NightscoutSite.load("uk-mmol-site"))


async def _artifacts(key: str) -> list[Artifact]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created or 0)


def test_mmol_site_report_and_run_summary_in_the_ui(uk_site: NightscoutSite,
                                                     cascade_home: Path) -> None:
    state = backfill(start=date(2024, 4, 1), end=date(2024, 4, 3), site=uk_site,
                     chunk_days=3, dbt_node_tasks=False, return_state=True)
    result = state.result()

    (report,) = asyncio.run(_artifacts("cgm-report-uk-mmol"))
    markdown = str(report.data)
    assert "Glucose in mmol/L" in markdown
    assert "| Time in range 3.9–10.0 mmol/L (> 70%) |" in markdown
    assert "mg/dL" not in markdown
    assert "**Cascade is not a medical device.**" in markdown
    assert "![AGP for uk-mmol](data:image/png;base64," in markdown

    # other tests' backfills in this session leave summaries under the same key
    (summary,) = [a for a in asyncio.run(_artifacts("cascade-backfill-summary"))
                  if a.flow_run_id == state.state_details.flow_run_id]
    text = str(summary.data)
    assert f"promoted as {result.tag}" in text
    assert "## uk-mmol: last 14 days (2024-03-21 – 2024-04-03), mmol/L" in text  # 04-04 partial

    assert result.published is not None
    (published,) = result.published.reports
    assert (published.site_id, published.unit) == ("uk-mmol", "mmol/L")
    page = Path(urlparse(published.url).path)
    assert page.is_relative_to(cascade_home / "reports")
    assert "<strong>Cascade is not a medical device.</strong>" in page.read_text("utf-8")

    publish("main", units="mg/dL")  # the override: the same site read in mg/dL

    first, second = asyncio.run(_artifacts("cgm-report-uk-mmol"))  # history under one key
    assert "| Time in range 70–180 mg/dL (> 70%) |" in str(second.data)
    assert first.id == report.id
