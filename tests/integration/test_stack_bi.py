"""BI on the stack: Superset's dashboard "Cascade — glycaemia" shows the published marts.

Needs ``stack up --with bi`` (CI starts it). One backfill of a simulated site of its own, then:

- through Superset's REST API (login, the dashboard's charts, each chart's saved query with
  the site filter the dashboard would add), every chart returns rows that agree with the
  marts: the range, GMI and CV figures with the readings themselves (Trino on
  ``silver.fct_cgm_reading``, an independent computation), the AGP and coverage with the
  published marts (Postgres, read as the read-only ``marts_reader``);
- in headless Chromium (Debian's chromium and chromium-driver), the dashboard loads for the
  site, every chart renders without an error, and the headline figures on the page are the
  API's. The screenshot goes to ``tmp_path`` and, when ``CASCADE_BI_SCREENSHOT`` names a
  file, there too (docs/img/bi-dashboard.png is made that way).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from flows.pipeline import backfill
from tasks.mart_docs import load_mart_docs
from tasks.profile import stack_lakehouse
from tasks.simulator import SimulatorServer, SiteConfig
from tasks.trino import query

from .conftest import NOW, SECRET, STACK_ENV, read_env_file, use_site

pytestmark = pytest.mark.stack

DASHBOARD = "cascade-glycaemia"
RANGE = (date(2024, 3, 1), date(2024, 3, 9))
MG_DL_PER_MMOL_L = 18.0182
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# a site of this module's own: other stack tests count the session site's rows
# (a mmol/L site: the AGP must follow the site's own unit by default)
SITE = SiteConfig(site_id="b" + uuid.uuid4().hex[:8], seed=17, timezone="America/Chicago",
                  api_secret=SECRET, units="mmol")
_published: set[str] = set()

Rows = list[dict[str, Any]]


def _missing(what: str) -> None:
    """Fail under CI (which must provide it), skip on a developer's machine."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(what)
    pytest.skip(what)


# ----------------------------------------------------------------------- superset


class Superset:
    """Superset's REST API, logged in as the stack's admin (JWT bearer)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=120)
        resp = self.client.post("/api/v1/security/login", json={
            "username": user, "password": password, "provider": "db"})
        assert resp.status_code == 200, f"login as {user} failed: {resp.status_code}"
        self.client.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def get(self, path: str) -> Any:
        resp = self.client.get(path)
        assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:500]}"
        return resp.json()["result"]

    def chart_rows(self, chart_id: int, filters: list[dict[str, Any]]) -> Rows:
        """The chart's saved query, with extra filters, answered by POST /api/v1/chart/data."""
        context = json.loads(self.get(f"/api/v1/chart/{chart_id}")["query_context"])
        for q in context["queries"]:
            q["filters"] = [*q["filters"], *filters]
        resp = self.client.post("/api/v1/chart/data", json=context)
        assert resp.status_code == 200, f"chart {chart_id}: {resp.status_code} {resp.text[:500]}"
        (result,) = resp.json()["result"]
        assert result["error"] is None, result["error"]
        rows: Rows = result["data"]
        return rows


@pytest.fixture(scope="module")
def bi_env() -> dict[str, str]:
    env = read_env_file(STACK_ENV) if STACK_ENV.exists() else {}
    url = env.get("SUPERSET_URL")
    if not url:
        _missing(f"no SUPERSET_URL in {STACK_ENV}: start BI with `stack up --with bi`")
    try:
        httpx.get(f"{url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        _missing(f"Superset is not answering at {url} ({type(exc).__name__}): "
                 "`python3 scripts/cascade.py stack up --with bi`")
    return env


@pytest.fixture
def superset(bi_env: dict[str, str]) -> Iterator[Superset]:
    api = Superset(bi_env["SUPERSET_URL"], bi_env["SUPERSET_ADMIN_USER"],
                   bi_env["SUPERSET_ADMIN_PASSWORD"])
    try:
        yield api
    finally:
        api.client.close()


@pytest.fixture(scope="module")
def bi_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE], now=NOW, history_days=45) as server:
        yield server


@pytest.fixture
def published_site(stack_env: dict[str, str], bi_simulator: SimulatorServer, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> str:
    """This module's site, backfilled (ingest → build → validate → promote → publish) once."""
    site = use_site(monkeypatch, bi_simulator, SITE.site_id, tmp_path / "cascade")
    if site not in _published:
        backfill(start=RANGE[0], end=RANGE[1], chunk_days=9, dbt_node_tasks=False)
        _published.add(site)
    return site


# ----------------------------------------------------------------------- expectations


def _marts(env: dict[str, str], sql: str, **params: Any) -> Rows:
    """Rows of the published marts, read as the read-only role."""
    url = sa.engine.URL.create(
        "postgresql+psycopg2", username="marts_reader", password=env["MARTS_READER_PASSWORD"],
        host=env["POSTGRES_HOST"], port=int(env["POSTGRES_PORT"]), database=env["MARTS_DATABASE"])
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def _readings(sql: str, site: str) -> list[tuple[Any, ...]]:
    """Trino over the lakehouse's main: the readings the marts were built from."""
    return query(stack_lakehouse().settings, sql, None, [site])


_GLUCOSE = "from silver.fct_cgm_reading where site_id = ? and glucose_mg_dl is not null"
_BANDS = """
    100e0 * count_if(glucose_mg_dl < 54) / count(*),
    100e0 * count_if(glucose_mg_dl >= 54 and glucose_mg_dl < 70) / count(*),
    100e0 * count_if(glucose_mg_dl between 70 and 180) / count(*),
    100e0 * count_if(glucose_mg_dl > 180 and glucose_mg_dl <= 250) / count(*),
    100e0 * count_if(glucose_mg_dl > 250) / count(*)"""
_RANGES = ("range_1_very_low_pct", "range_2_low_pct", "range_3_in_range_pct",
           "range_4_high_pct", "range_5_very_high_pct")


def _day(value: Any) -> date:
    """Superset sends temporal x values as epoch milliseconds (UTC midnight for a DATE)."""
    return datetime.fromtimestamp(float(value) / 1000, UTC).date()


def _close(actual: Any, expected: Any, what: str) -> None:
    assert actual is not None and expected is not None, f"{what}: {actual} vs {expected}"
    assert math.isclose(float(actual), float(expected), rel_tol=1e-9, abs_tol=1e-9), (
        f"{what}: Superset {actual}, expected {expected}")


def _by_key(rows: Rows, key: str, convert: Callable[[Any], Any]) -> dict[Any, dict[str, Any]]:
    out = {convert(row[key]): row for row in rows}
    assert len(out) == len(rows), f"{key} repeats in {rows[:3]}"
    return out


def _expect_range_day(rows: Rows, site: str) -> None:
    expected = {r[0]: r[1:] for r in _readings(
        f"select local_date, {_BANDS} {_GLUCOSE} group by local_date", site)}
    got = _by_key(rows, "local_date", _day)
    assert got.keys() == expected.keys()
    for day, bands in expected.items():
        for name, value in zip(_RANGES, bands, strict=True):
            _close(got[day][name], value, f"{day} {name}")
        _close(sum(got[day][n] for n in _RANGES), 100, f"{day} bands add up")


def _expect_week(rows: Rows, site: str) -> None:
    expected = {r[0]: r[1:] for r in _readings(
        f"select date_trunc('week', local_date), avg(glucose_mg_dl), "
        f"stddev_samp(glucose_mg_dl) {_GLUCOSE} group by 1", site)}
    got = _by_key(rows, "local_date", _day)
    assert got.keys() == expected.keys()
    for week, (mean, sd) in expected.items():
        _close(got[week]["gmi_pct"], 3.31 + 0.02392 * mean, f"GMI week of {week}")
        _close(got[week]["cv_pct"], 100 * sd / mean, f"CV week of {week}")


def _expect_agp(superset: Superset, chart_id: int, site: str, env: dict[str, str]) -> None:
    rows = _marts(env, "select * from mrt_agp_hourly_14d where site_id = :site", site=site)
    marts = _by_key(rows, "local_hour", int)
    assert len(marts) == 24
    # the filter's default, "Site's unit", is the site's profile unit (mmol/L here)
    for choice, unit, per in (("Site's unit", "mmol/L", MG_DL_PER_MMOL_L), ("mg/dL", "mg/dL", 1.0),
                              ("mmol/L", "mmol/L", MG_DL_PER_MMOL_L)):
        rows = superset.chart_rows(chart_id, [_site_filter(site),
                                              {"col": "glucose_unit", "op": "IN", "val": [choice]}])
        got = _by_key(rows, "local_hour", int)
        assert got.keys() == marts.keys(), choice
        for hour, row in got.items():
            assert row["shown_unit"] == unit, choice
            for p in ("p05", "p25", "p50", "p75", "p95"):
                _close(row[p], marts[hour][p] / per, f"{p} at {hour}h in {unit}")
            _close(row["target_low"], 70 / per, f"target_low in {unit}")
            _close(row["target_high"], 180 / per, f"target_high in {unit}")


def _site_filter(site: str) -> dict[str, Any]:
    return {"col": "site_id", "op": "IN", "val": [site]}


def _dashboard_charts(superset: Superset) -> dict[str, int]:
    charts = superset.get(f"/api/v1/dashboard/{DASHBOARD}/charts")
    return {c["slice_name"]: c["id"] for c in charts}


def _headline(superset: Superset, charts: dict[str, int], site: str) -> dict[str, float]:
    """The four big numbers, as the API answers them for the site."""
    metrics = {"Time in range": "range_3_in_range_pct", "GMI": "gmi_pct",
               "Glucose variability": "cv_pct", "CGM coverage": "coverage_pct"}
    out = {}
    for name, metric in metrics.items():
        (row,) = superset.chart_rows(charts[name], [_site_filter(site)])
        out[name] = float(row[metric])
    return out


# ----------------------------------------------------------------------- tests


def test_every_dashboard_chart_agrees_with_the_marts(
    published_site: str, superset: Superset, bi_env: dict[str, str]
) -> None:
    site, env = published_site, bi_env
    charts = _dashboard_charts(superset)
    assert set(charts) == {
        "Time in range", "GMI", "Glucose variability", "CGM coverage", "Daily time in ranges",
        "Glucose by hour of day (AGP, last 14 days)", "GMI and CV by week", "Daily CGM coverage",
    }, "a chart was added or renamed: give it an expectation here"

    headline = _headline(superset, charts, site)
    (bands,) = _readings(f"select {_BANDS}, avg(glucose_mg_dl), stddev_samp(glucose_mg_dl) "
                         f"{_GLUCOSE}", site)
    _close(headline["Time in range"], bands[2], "time in range")
    _close(headline["GMI"], 3.31 + 0.02392 * bands[5], "GMI")
    _close(headline["Glucose variability"], 100 * bands[6] / bands[5], "CV")
    coverage = _marts(env, "select local_date, n_readings, n_expected, coverage_pct "
                           "from mrt_quality_coverage where site_id = :site", site=site)
    pooled = 100 * sum(r["n_readings"] for r in coverage) / sum(r["n_expected"] for r in coverage)
    _close(headline["CGM coverage"], min(100.0, pooled), "coverage")

    _expect_range_day(superset.chart_rows(charts["Daily time in ranges"], [_site_filter(site)]),
                      site)
    _expect_week(superset.chart_rows(charts["GMI and CV by week"], [_site_filter(site)]), site)
    _expect_agp(superset, charts["Glucose by hour of day (AGP, last 14 days)"], site, env)

    daily = _by_key(superset.chart_rows(charts["Daily CGM coverage"], [_site_filter(site)]),
                    "local_date", _day)
    marts = {r["local_date"]: r["coverage_pct"] for r in coverage}
    assert daily.keys() == marts.keys()
    for day, value in marts.items():
        _close(daily[day]["coverage_pct"], value, f"coverage on {day}")


def test_published_marts_carry_the_dbt_docs_as_comments(
    published_site: str, bi_env: dict[str, str]
) -> None:
    rows = _marts(bi_env, """
        select c.relname as mart, a.attname as col,
               obj_description(c.oid, 'pg_class') as table_comment,
               col_description(c.oid, a.attnum) as column_comment
        from pg_class as c
        join pg_attribute as a on a.attrelid = c.oid and a.attnum > 0
        where c.relname like 'mrt%' and c.relkind = 'r'""")
    seen = {(r["mart"], r["col"]): r for r in rows}
    docs = load_mart_docs()
    for mart in ("mrt_daily_glycaemia", "mrt_quality_coverage", "mrt_agp_hourly_14d"):
        for column, text in docs[mart].columns.items():
            assert seen[(mart, column)]["column_comment"] == text, (mart, column)
        assert seen[(mart, "site_id")]["table_comment"] == docs[mart].description, mart


# ----------------------------------------------------------------------- browser


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium through its chromedriver, with the network log on."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _missing("Chromium is missing: `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1600,2100",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _log_in(driver: Any, env: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{env['SUPERSET_URL']}/login/")
    wait = WebDriverWait(driver, 60)
    user = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-test=username-input]"))
    user.send_keys(env["SUPERSET_ADMIN_USER"])
    driver.find_element(By.CSS_SELECTOR, "[data-test=password-input]").send_keys(
        env["SUPERSET_ADMIN_PASSWORD"] + "\n")
    wait.until(lambda d: "/login" not in d.current_url)


def _dashboard_url(env: dict[str, str], site: str) -> str:
    """The dashboard with its Site filter set to ``site`` (rison in ``native_filters``)."""
    state = (f"('NATIVE_FILTER-site':(id:'NATIVE_FILTER-site',extraFormData:(filters:!("
             f"(col:site_id,op:IN,val:!('{site}')))),filterState:(value:!('{site}'))))")
    return (f"{env['SUPERSET_URL']}/superset/dashboard/{DASHBOARD}/"
            f"?native_filters={urllib.parse.quote(state)}")


_CHART_STATE = """
return Array.from(document.querySelectorAll('[data-test-chart-name]')).map(e => ({
    name: e.getAttribute('data-test-chart-name'),
    drawn: e.querySelectorAll('canvas, .superset-legacy-chart-big-number .header-line').length,
    alerts: e.querySelectorAll('[role=alert], .ant-alert-error').length,
    text: e.innerText}))
"""


_PIXELS = "return Array.from(document.querySelectorAll('canvas')).map(c => c.toDataURL())"


def _rendered(driver: Any, expected: int, timeout: float) -> list[dict[str, Any]]:
    """Every chart holder's state once all ``expected`` charts have drawn and their entry
    animations have ended (two looks a second apart see the same pixels), or the timeout."""
    deadline, charts, pixels = time.monotonic() + timeout, [], None
    while time.monotonic() < deadline:
        charts = driver.execute_script(_CHART_STATE)
        if len(charts) == expected and all(c["drawn"] or c["alerts"] for c in charts):
            now = driver.execute_script(_PIXELS)
            if now == pixels:
                break
            pixels = now
        time.sleep(1)
    return list(charts)


def _chart_data_statuses(driver: Any) -> list[int]:
    """HTTP statuses of the page's /api/v1/chart/data calls, from Chromium's network log."""
    statuses = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if "/api/v1/chart/data" in response["url"]:
                statuses.append(int(response["status"]))
    return statuses


def test_dashboard_renders_every_chart_in_chromium(
    published_site: str, superset: Superset, bi_env: dict[str, str], chromium: Any,
    tmp_path: Path,
) -> None:
    site = published_site
    charts = _dashboard_charts(superset)
    headline = _headline(superset, charts, site)
    _log_in(chromium, bi_env)
    chromium.get(_dashboard_url(bi_env, site))

    state = _rendered(chromium, len(charts), timeout=240)
    screenshot = tmp_path / "bi-dashboard.png"
    chromium.save_screenshot(str(screenshot))
    if os.environ.get("CASCADE_BI_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["CASCADE_BI_SCREENSHOT"])
    assert {c["name"] for c in state} == set(charts), state
    for chart in state:
        assert chart["drawn"] and not chart["alerts"], f"{chart['name']}: {chart['text'][:300]}"
        assert "No results" not in chart["text"], chart["name"]
    statuses = _chart_data_statuses(chromium)
    assert len(statuses) >= len(charts) and set(statuses) == {200}, statuses
    texts = {c["name"]: c["text"] for c in state}
    for name, value in headline.items():  # what the page shows is what the API answered
        assert f"{value:.1f}" in texts[name], (name, value, texts[name])


def test_superset_keeps_no_secret_in_its_database_or_log(
    superset: Superset, bi_env: dict[str, str], tmp_path: Path
) -> None:
    """Superset's metadata and log hold no stack secret in any form: the marts connection
    has no stored password (superset_config.py hands it over at connect time)."""
    (database,) = [d for d in superset.get("/api/v1/database/")
                   if d["database_name"] == "Cascade marts"]
    detail = superset.get(f"/api/v1/database/{database['id']}/connection")
    assert detail["sqlalchemy_uri"].startswith("postgresql+psycopg2://marts_reader@")
    dump = tmp_path / "superset.sql"
    pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
    with dump.open("wb") as out:
        subprocess.run([pg_dump, "-h", bi_env["POSTGRES_HOST"], "-p", bi_env["POSTGRES_PORT"],
                        "-U", bi_env["POSTGRES_USER"], "-d", "superset", "--data-only"],
                       env={**os.environ, "PGPASSWORD": bi_env["POSTGRES_PASSWORD"]},
                       stdout=out, check=True, timeout=120)
    text = dump.read_text(errors="replace").lower()
    assert "marts_reader" in text  # the dump does hold the connection
    log = STACK_ENV.parent / "logs" / "superset.log"
    if log.exists():  # natively started (compose keeps its logs in Docker)
        text += log.read_text(errors="replace").lower()
    for key in ("POSTGRES_PASSWORD", "MARTS_READER_PASSWORD", "MINIO_ROOT_PASSWORD",
                "SUPERSET_ADMIN_PASSWORD", "SUPERSET_SECRET_KEY", "SUPERSET_DB_PASSWORD"):
        secret = bi_env[key]
        for form in (secret, hashlib.sha1(secret.encode()).hexdigest(),
                     hashlib.sha512(secret.encode()).hexdigest()):
            assert form.lower() not in text, f"{key} is in Superset's database or log"
