"""Embedded end-to-end fixtures: one Prefect test harness and one simulator per session."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness
from pydantic import SecretStr

from blocks.nightscout import NightscoutSite
from tasks.simulator import SimulatorServer, SiteConfig

NOW = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
SECRET = "e2e-secret-value"
SITE = SiteConfig(site_id="a", seed=11, timezone="Europe/London", api_secret=SECRET)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        # the server stores events every 0.5 s instead of 5 s, so a test that waits for
        # an event it sent (tests/e2e/test_hostile_runs.py) waits less
        patch.setenv("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=120) as server:
        yield server


@pytest.fixture
def site_env(simulator: SimulatorServer, cascade_home: Path,
             monkeypatch: pytest.MonkeyPatch) -> SimulatorServer:
    """Point Cascade at the simulator's site ``a`` and a fresh lakehouse."""
    monkeypatch.setenv("NIGHTSCOUT_URL", simulator.url_for("a"))
    monkeypatch.setenv("NIGHTSCOUT_API_SECRET", SECRET)
    monkeypatch.setenv("NIGHTSCOUT_SITE_ID", "a")
    monkeypatch.delenv("NIGHTSCOUT_TOKEN", raising=False)
    monkeypatch.delenv("CASCADE_TIMEZONE", raising=False)
    simulator.clear_faults()
    return simulator


def register_site_blocks(server: SimulatorServer, sites: list[SiteConfig],
                         monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One ``nightscout-site`` block per simulated site of ``server`` (named ``ns-<site>``),
    and no site in the environment; the block names."""
    for var in ("NIGHTSCOUT_URL", "NIGHTSCOUT_API_SECRET", "NIGHTSCOUT_SITE_ID",
                "NIGHTSCOUT_BLOCK", "NIGHTSCOUT_TOKEN", "CASCADE_TIMEZONE"):
        monkeypatch.delenv(var, raising=False)
    names = []
    for site in sites:
        name = f"ns-{site.site_id}"
        NightscoutSite(url=server.url_for(site.site_id), site_id=site.site_id,
                       api_secret=SecretStr(site.api_secret or "")).save(name, overwrite=True)
        names.append(name)
    server.clear_faults()
    return names
