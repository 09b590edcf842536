"""Nightscout simulator: deterministic data, v1 query semantics, auth and injected faults."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from tasks.simulator import (
    SimulatorServer,
    SiteConfig,
    default_site,
    expected_records,
    generate_day,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SECRET = "correct-horse-battery"
TOKEN = "reader-3f2a9c"
MONTH = (date(2024, 4, 1), date(2024, 5, 1))

SITE_A = default_site("a")
SITE_B = default_site("b", api_secret=SECRET, token=TOKEN)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([SITE_A, SITE_B], now=NOW, history_days=120) as server:
        yield server


@pytest.fixture(scope="module")
def month_entries() -> list[dict[str, Any]]:
    return expected_records(SITE_A, *MONTH, "entries")


@pytest.fixture(scope="module")
def month_treatments() -> list[dict[str, Any]]:
    return expected_records(SITE_A, *MONTH, "treatments")


@pytest.fixture
def a(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url_for("a"), timeout=10) as client:
        yield client


def _ms(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1000))


def _ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_id"] for d in docs]


# ----------------------------------------------------------------------------- generation


def test_same_day_generates_identical_documents() -> None:
    first = generate_day(SITE_A, date(2024, 3, 31))
    second = generate_day(SITE_A, date(2024, 3, 31))
    for name in ("entries", "treatments", "devicestatus"):
        assert json.dumps(first.collection(name)) == json.dumps(second.collection(name))


def test_a_day_does_not_depend_on_the_window_asked_for() -> None:
    alone = expected_records(SITE_A, date(2024, 4, 2), date(2024, 4, 3), "entries")
    within = expected_records(SITE_A, date(2024, 4, 1), date(2024, 4, 4), "entries")
    start, end = (int(datetime(2024, 4, d, tzinfo=UTC).timestamp() * 1000) for d in (2, 3))
    assert alone == [d for d in within if start <= d["date"] < end]


def test_sites_differ() -> None:
    day = date(2024, 4, 2)
    assert _ids(generate_day(SITE_A, day).entries) != _ids(generate_day(SITE_B, day).entries)


def test_low_39_and_dexcom_error_codes_occur_over_a_month(
    month_entries: list[dict[str, Any]],
) -> None:
    sgv = [d for d in month_entries if d["type"] == "sgv"]
    assert any(int(d["sgv"]) == 39 for d in sgv)
    errors = [d for d in sgv if 1 <= int(d["sgv"]) <= 12]
    assert errors and all(d["direction"] == "NOT COMPUTABLE" for d in errors)
    assert all(1 <= int(d["sgv"]) <= 400 for d in sgv)


def test_glucose_is_physiologically_plausible(month_entries: list[dict[str, Any]]) -> None:
    values = [int(d["sgv"]) for d in month_entries if d["type"] == "sgv" and int(d["sgv"]) > 38]
    mean = sum(values) / len(values)
    in_range = sum(70 <= v <= 180 for v in values) / len(values)
    assert 110 < mean < 170 and 0.55 < in_range < 0.95
    assert max(values) > 250 and min(values) == 39


def test_near_duplicates_share_device_and_date_with_new_ids(
    month_entries: list[dict[str, Any]],
) -> None:
    by_key = Counter((d["device"], d["date"]) for d in month_entries)
    repeated = [k for k, n in by_key.items() if n > 1]
    assert len(repeated) >= 10
    twins = [d for d in month_entries if (d["device"], d["date"]) == repeated[0]]
    assert len({d["_id"] for d in twins}) >= 2


def test_some_documents_appear_twice_with_the_same_id(
    month_entries: list[dict[str, Any]],
) -> None:
    assert any(n > 1 for n in Counter(_ids(month_entries)).values())


def test_old_uploader_quirks_present(month_entries: list[dict[str, Any]]) -> None:
    sgv = [d for d in month_entries if d["type"] == "sgv"]
    assert any(isinstance(d["sgv"], str) for d in sgv)
    assert any({"glucose", "trend_arrow", "app"} <= d.keys() for d in sgv)
    assert {d["type"] for d in month_entries} == {"sgv", "mbg", "cal"}


def test_gaps_and_sensor_warmups(
    month_entries: list[dict[str, Any]], month_treatments: list[dict[str, Any]]
) -> None:
    times = sorted({d["date"] for d in month_entries if d["type"] == "sgv"})
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a > 20 * 60_000]
    starts = [d for d in month_treatments if d["eventType"] == "Sensor Start"]
    assert len(starts) == 3  # every 10 days
    for start in starts:
        at = int(datetime.fromisoformat(start["created_at"]).timestamp() * 1000)
        assert any(a <= at and b >= at + 120 * 60_000 for a, b in gaps)
    assert len(gaps) > len(starts)  # signal-loss gaps too


def test_treatments_cover_event_types_and_string_numbers(
    month_treatments: list[dict[str, Any]],
) -> None:
    kinds = {d["eventType"] for d in month_treatments}
    assert {
        "Meal Bolus",
        "Correction Bolus",
        "Carb Correction",
        "Temp Basal",
        "Site Change",
        "Sensor Start",
        "Note",
        "BG Check",
    } <= kinds
    assert any(isinstance(d.get("duration"), str) for d in month_treatments)
    assert all(d["created_at"].endswith("Z") for d in month_treatments)


def test_date_string_carries_local_offset_across_dst() -> None:
    entries = generate_day(SITE_A, date(2024, 3, 31)).entries  # London springs forward 01:00Z
    before = [d for d in entries if d["date"] < 1711846800000]
    after = [d for d in entries if d["date"] >= 1711846800000]
    assert all(d["utcOffset"] == 0 and d["dateString"].endswith("+00:00") for d in before)
    assert all(d["utcOffset"] == 60 and d["dateString"].endswith("+01:00") for d in after)


def test_libre_site_reads_every_minute() -> None:
    libre = SiteConfig("c", seed=7, timezone="Australia/Sydney", device="libre", interval_min=1)
    sgv = [d for d in generate_day(libre, date(2024, 4, 2)).entries if d["type"] == "sgv"]
    assert len(sgv) > 1200


# ----------------------------------------------------------------------------- query semantics


def test_entries_default_count_is_10_newest_first(a: httpx.Client) -> None:
    docs = a.get("/api/v1/entries.json").json()
    assert len(docs) == 10
    dates = [d["date"] for d in docs]
    assert dates == sorted(dates, reverse=True)


def test_explicit_count(a: httpx.Client) -> None:
    assert len(a.get("/api/v1/entries.json", params={"count": 250}).json()) == 250


def test_treatments_default_count_is_100(a: httpx.Client) -> None:
    assert len(a.get("/api/v1/treatments.json").json()) == 100


def test_date_window_returns_exactly_the_expected_records(a: httpx.Client) -> None:
    start, end = datetime(2024, 5, 3, tzinfo=UTC), datetime(2024, 5, 5, tzinfo=UTC)
    params = {"find[date][$gte]": _ms(start), "find[date][$lt]": _ms(end), "count": "100000"}
    served = a.get("/api/v1/entries.json", params=params).json()
    assert served == expected_records(SITE_A, start.date(), end.date(), "entries")


def test_lte_includes_the_boundary_and_gt_excludes_it(a: httpx.Client) -> None:
    newest = a.get("/api/v1/entries.json", params={"count": 1}).json()[0]["date"]
    assert (
        a.get("/api/v1/entries.json", params={"find[date][$lte]": newest, "count": 1}).json()[0][
            "date"
        ]
        == newest
    )
    after = a.get("/api/v1/entries.json", params={"find[date][$gt]": newest}).json()
    assert after == []


def test_created_at_compares_as_strings(a: httpx.Client) -> None:
    params = {"find[created_at][$gte]": "2024-05-10", "find[created_at][$lt]": "2024-05-11"}
    served = a.get("/api/v1/treatments.json", params={**params, "count": 10000}).json()
    expected = expected_records(SITE_A, date(2024, 5, 10), date(2024, 5, 11), "treatments")
    assert served == expected


def test_devicestatus_window_on_created_at(a: httpx.Client) -> None:
    params = {
        "find[created_at][$gte]": "2024-05-20T06:00:00.000Z",
        "find[created_at][$lt]": "2024-05-20T07:00:00.000Z",
        "count": "1000",
    }
    served = a.get("/api/v1/devicestatus.json", params=params).json()
    assert 10 <= len(served) <= 12
    assert all("2024-05-20T06" in d["created_at"] for d in served)
    assert served[0]["openaps"]["iob"]["timestamp"] == served[0]["created_at"]


def test_without_date_filter_only_the_last_4_days(a: httpx.Client) -> None:
    served = a.get("/api/v1/entries.json", params={"count": 100000}).json()
    floor = NOW_MS - 4 * 86_400_000
    expected = [
        d
        for d in expected_records(SITE_A, date(2024, 5, 28), date(2024, 6, 2), "entries")
        if floor <= d["date"] <= NOW_MS
    ]
    assert served == expected


def test_nothing_after_now(a: httpx.Client) -> None:
    params = {"find[date][$gte]": _ms(NOW - timedelta(hours=1)), "count": "1000"}
    served = a.get("/api/v1/entries.json", params=params).json()
    assert served and max(d["date"] for d in served) <= NOW_MS


def test_nothing_before_the_first_day(sim: SimulatorServer, a: httpx.Client) -> None:
    before = datetime.combine(sim.first_day, datetime.min.time(), tzinfo=UTC)
    params = {"find[date][$lt]": _ms(before), "count": "10"}
    assert a.get("/api/v1/entries.json", params=params).json() == []


def test_type_endpoints_filter(a: httpx.Client) -> None:
    window = {"find[date][$gte]": _ms(NOW - timedelta(days=10)), "count": "1000"}
    assert {d["type"] for d in a.get("/api/v1/entries/mbg.json", params=window).json()} == {"mbg"}
    assert {d["type"] for d in a.get("/api/v1/entries/sgv", params=window).json()} == {"sgv"}
    assert {d["type"] for d in a.get("/api/v1/entries/cal.json", params=window).json()} == {"cal"}


def test_find_on_other_fields(a: httpx.Client) -> None:
    params = {"find[eventType]": "Site Change", "find[created_at][$gte]": "2024-05-01"}
    served = a.get("/api/v1/treatments", params=params).json()
    assert served and {d["eventType"] for d in served} == {"Site Change"}


def test_profile_carries_the_site_timezone(a: httpx.Client) -> None:
    profiles = a.get("/api/v1/profile.json").json()
    assert 1 <= len(profiles) <= 2
    for profile in profiles:
        assert profile["store"][profile["defaultProfile"]]["timezone"] == "Europe/London"
        assert profile["startDate"].endswith("Z") and profile["units"] == "mg/dl"


def test_status_reports_server_time(a: httpx.Client) -> None:
    status = a.get("/api/v1/status.json").json()
    assert status["serverTimeEpoch"] == NOW_MS and status["apiEnabled"] is True


def test_first_site_is_also_served_at_the_root(sim: SimulatorServer, a: httpx.Client) -> None:
    at_root = httpx.get(f"{sim.url}/api/v1/entries.json").json()
    assert at_root == a.get("/api/v1/entries.json").json()


def test_unknown_site_or_path_is_404(sim: SimulatorServer) -> None:
    assert httpx.get(f"{sim.url}/zz/api/v1/entries.json").status_code == 404
    assert httpx.get(f"{sim.url_for('a')}/api/v1/nothing.json").status_code == 404


# ----------------------------------------------------------------------------- auth


def test_missing_or_wrong_secret_is_401(sim: SimulatorServer) -> None:
    url = f"{sim.url_for('b')}/api/v1/entries.json"
    missing = httpx.get(url)
    wrong = httpx.get(url, headers={"api-secret": hashlib.sha1(b"nope").hexdigest()})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["message"] == "Unauthorized"


def test_plain_secret_in_header_is_refused(sim: SimulatorServer) -> None:
    url = f"{sim.url_for('b')}/api/v1/entries.json"
    assert httpx.get(url, headers={"api-secret": SECRET}).status_code == 401


@pytest.mark.parametrize("digest", [hashlib.sha1, hashlib.sha512])
def test_hashed_secret_is_accepted(sim: SimulatorServer, digest: Any) -> None:
    header = {"api-secret": digest(SECRET.encode()).hexdigest()}
    response = httpx.get(f"{sim.url_for('b')}/api/v1/entries.json", headers=header)
    assert response.status_code == 200 and len(response.json()) == 10


def test_token_is_accepted(sim: SimulatorServer) -> None:
    url = f"{sim.url_for('b')}/api/v1/treatments.json"
    assert httpx.get(url, params={"token": TOKEN}).status_code == 200
    assert httpx.get(url, params={"token": "guess"}).status_code == 401


# ----------------------------------------------------------------------------- faults


def test_injected_500_happens_once(sim: SimulatorServer, a: httpx.Client) -> None:
    sim.inject(status=500)
    assert a.get("/api/v1/entries.json").status_code == 500
    assert a.get("/api/v1/entries.json").status_code == 200


def test_injected_429_carries_retry_after(sim: SimulatorServer, a: httpx.Client) -> None:
    sim.inject(status=429, retry_after=1, times=2)
    statuses = [a.get("/api/v1/entries.json") for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, 200]
    assert statuses[0].headers["Retry-After"] == "1"


def test_injected_html_body(sim: SimulatorServer, a: httpx.Client) -> None:
    sim.inject(body="<html>maintenance</html>", status=200, content_type="text/html")
    response = a.get("/api/v1/entries.json")
    assert response.status_code == 200 and response.text == "<html>maintenance</html>"
    assert response.headers["content-type"].startswith("text/html")


def test_injected_truncation_breaks_the_json(sim: SimulatorServer, a: httpx.Client) -> None:
    sim.inject(truncate=True)
    with pytest.raises(json.JSONDecodeError):
        a.get("/api/v1/entries.json").json()
    assert len(a.get("/api/v1/entries.json").json()) == 10


def test_injected_delay_times_the_client_out(sim: SimulatorServer) -> None:
    sim.inject(delay_s=1.0)
    with httpx.Client(base_url=sim.url_for("a"), timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/api/v1/entries.json")
        # the fault is spent: the next answer comes at once (a generous timeout for a busy host)
        assert client.get("/api/v1/entries.json", timeout=30).status_code == 200


def test_faults_can_target_a_path(sim: SimulatorServer, a: httpx.Client) -> None:
    sim.inject(status=503, path="/api/v1/treatments")
    assert a.get("/api/v1/entries.json").status_code == 200
    assert a.get("/api/v1/treatments.json").status_code == 503
    assert a.get("/api/v1/treatments.json").status_code == 200


def test_request_log_records_path_query_and_status(sim: SimulatorServer, a: httpx.Client) -> None:
    a.get("/api/v1/entries.json", params={"count": 3})
    assert sim.request_log[-1] == ("/a/api/v1/entries.json", "count=3", 200)
