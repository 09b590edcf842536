"""Stack fixtures: the running services from ``scripts/stack.py up``, once per session.

Tests here carry the ``stack`` marker. They use the services the stack script started
(its ``.cascade-stack/stack.env``); nothing here starts or stops a service. When the
stack is not running they are skipped with the reason shown, except under CI
(``CI=true``), where a missing stack fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tasks.simulator import SimulatorServer, SiteConfig

REPO = Path(__file__).resolve().parents[2]
STACK_ENV = Path(os.environ.get("CASCADE_STACK_ENV", REPO / ".cascade-stack" / "stack.env"))
NOW = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)
SECRET = "stack-secret-value"
# a site id of its own per session, so a reused stack's earlier data never interferes
SITE_ID = "s" + uuid.uuid4().hex[:8]
SITE = SiteConfig(site_id=SITE_ID, seed=11, timezone="Europe/London", api_secret=SECRET)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments and blank lines ignored)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def _stack_problem() -> str | None:
    if not STACK_ENV.exists():
        return f"{STACK_ENV} not found: start the stack with `python3 scripts/cascade.py stack up`"
    env = read_env_file(STACK_ENV)
    probes = {
        "nessie": env.get("NESSIE_URI", "") + "/api/v2/config",
        "trino": f"http://{env.get('TRINO_HOST')}:{env.get('TRINO_PORT')}/v1/info",
        "prefect": env.get("PREFECT_API_URL", "") + "/health",
    }
    for name, url in probes.items():
        try:
            httpx.get(url, timeout=5).raise_for_status()
        except (httpx.HTTPError, ValueError) as exc:
            return f"{name} is not answering at {url} ({type(exc).__name__}): is the stack up?"
    return None


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: only the stack tests that will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    stack_items = [i for i in items if i.get_closest_marker("stack")]
    if not stack_items:
        return
    problem = _stack_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(f"stack tests cannot run in CI: {problem}")
    for item in stack_items:
        item.add_marker(pytest.mark.skip(reason=f"stack not running: {problem}"))


@pytest.fixture
def stack_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The stack's variables and Prefect server for one test (nothing leaks past it)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.profile import stack_lakehouse

    env = read_env_file(STACK_ENV)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stack_lakehouse.cache_clear()
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        yield env
    stack_lakehouse.cache_clear()


@pytest.fixture(scope="session")
def stack_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=120) as server:
        yield server


@pytest.fixture
def stack_site(stack_env: dict[str, str], stack_simulator: SimulatorServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> str:
    """Cascade on the stack profile, reading the session's simulator site; its site id."""
    return use_site(monkeypatch, stack_simulator, SITE_ID, tmp_path / "cascade")


def use_site(monkeypatch: pytest.MonkeyPatch, server: SimulatorServer, site_id: str,
             home: Path) -> str:
    """Point Cascade (stack profile) at ``site_id`` of ``server``, for one test."""
    monkeypatch.setenv("CASCADE_PROFILE", "stack")
    monkeypatch.setenv("CASCADE_HOME", str(home))
    monkeypatch.setenv("NIGHTSCOUT_URL", server.url_for(site_id))
    monkeypatch.setenv("NIGHTSCOUT_API_SECRET", SECRET)
    monkeypatch.setenv("NIGHTSCOUT_SITE_ID", site_id)
    monkeypatch.delenv("NIGHTSCOUT_TOKEN", raising=False)
    monkeypatch.delenv("CASCADE_TIMEZONE", raising=False)
    server.clear_faults()
    return site_id
