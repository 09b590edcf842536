"""The simulator's API v3 and its change hooks, against cgm-remote-monitor 15.x semantics."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tasks.simulator import SimulatorServer, default_site

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
TOKEN = "reader-3f2a9c"
SECRET = "correct-horse-battery"
DAY = date(2024, 5, 20)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer([default_site("a", api_secret=SECRET, token=TOKEN)], now=NOW,
                         history_days=60) as server:
        yield server


@pytest.fixture
def http(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url_for("a"), timeout=10) as client:
        yield client


def _jwt(http: httpx.Client) -> str:
    answer = http.get(f"/api/v2/authorization/request/{TOKEN}")
    assert answer.status_code == 200
    return str(answer.json()["token"])


def _history(http: httpx.Client, collection: str, after: int | str, **params: Any
             ) -> httpx.Response:
    return http.get(f"/api/v3/{collection}/history/{after}", params=params,
                    headers={"Authorization": f"Bearer {_jwt(http)}"})


def _v1(http: httpx.Client, collection: str, start: date, end: date) -> list[dict[str, Any]]:
    field = "date" if collection == "entries" else "created_at"
    lo, hi = (datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (start, end))
    bounds = ((str(int(lo.timestamp() * 1000)), str(int(hi.timestamp() * 1000)))
              if collection == "entries" else (lo.isoformat()[:19], hi.isoformat()[:19]))
    answer = http.get(f"/api/v1/{collection}.json", params={
        f"find[{field}][$gte]": bounds[0], f"find[{field}][$lt]": bounds[1], "count": "5000"},
        headers={"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()})
    assert answer.status_code == 200
    docs: list[dict[str, Any]] = answer.json()
    return docs


def test_a_jwt_is_issued_for_the_access_token_only(http: httpx.Client) -> None:
    issued = http.get(f"/api/v2/authorization/request/{TOKEN}").json()
    assert issued["exp"] - issued["iat"] == 8 * 3600 and issued["token"].count(".") == 2
    assert http.get("/api/v2/authorization/request/wrong-token").status_code == 401


def test_v3_wants_a_valid_unexpired_bearer_jwt(sim: SimulatorServer, http: httpx.Client) -> None:
    path = f"/api/v3/entries/history/{NOW_MS}"
    assert http.get(path).status_code == 401
    assert http.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert http.get(path, headers={"Authorization": f"Bearer {_jwt(http)}"}).status_code == 200
    sim.v3.jwt.lifetime_s = 0  # JWTs issued from now on are already expired
    assert http.get(path, headers={"Authorization": f"Bearer {_jwt(http)}"}).status_code == 401


def test_history_lists_v3_changes_oldest_first_and_never_v1_ones(
    sim: SimulatorServer, http: httpx.Client,
) -> None:
    changes = sim.changes("a")
    entries = sim.documents("a", "entries", DAY)
    treatments = sim.documents("a", "treatments", DAY)
    changes.edit("treatments", treatments[0], {"carbs": 42}, via="v3")
    changes.soft_delete("entries", entries[5])
    changes.edit("entries", entries[6], {"sgv": 250}, via="v1")  # no srvModified stored
    changes.add("entries", {"type": "sgv", "sgv": 99, "date": entries[7]["date"] + 60_000,
                            "device": "xDrip"}, via="v1")
    changes.delete_permanently("entries", entries[8])

    listed = _history(http, "entries", NOW_MS - 1).json()["result"]
    assert [d["identifier"] for d in listed] == [entries[5]["_id"]]
    assert listed[0]["isValid"] is False and "_id" not in listed[0]
    assert listed[0]["srvCreated"] == listed[0]["srvModified"] >= NOW_MS
    treated = _history(http, "treatments", NOW_MS - 1).json()["result"]
    assert [(d["identifier"], d["carbs"]) for d in treated] == [(treatments[0]["_id"], 42)]
    assert _history(http, "treatments", treated[0]["srvModified"]).json()["result"] == []


def test_v1_sees_edits_soft_deletes_late_documents_and_not_permanent_deletes(
    sim: SimulatorServer, http: httpx.Client,
) -> None:
    changes = sim.changes("a")
    entries = sim.documents("a", "entries", DAY)
    changes.soft_delete("entries", entries[1])
    changes.edit("entries", entries[2], {"sgv": 250}, via="v3")
    changes.delete_permanently("entries", entries[3])
    late = changes.add("entries", {"type": "sgv", "sgv": 77, "date": entries[4]["date"] + 90_000,
                                   "device": "xDrip"}, via="v1")
    listed = _v1(http, "entries", DAY, DAY + timedelta(days=1))
    seen = {d["_id"]: d for d in listed}
    assert seen[entries[1]["_id"]]["isValid"] is False
    assert seen[entries[2]["_id"]]["sgv"] == 250
    assert entries[3]["_id"] not in seen
    assert seen[late["_id"]]["sgv"] == 77 and "srvModified" not in seen[late["_id"]]
    assert len(listed) == len(entries)  # one gone, one added
    assert {d["_id"] for d in _v1(http, "entries", DAY - timedelta(days=1), DAY)}.isdisjoint(seen)


def test_history_pages_at_most_1000_and_refuses_zero_and_bad_limits(
    sim: SimulatorServer, http: httpx.Client,
) -> None:
    for doc in sim.documents("a", "entries", DAY)[:3]:
        sim.changes("a").soft_delete("entries", doc)
    assert _history(http, "entries", 0).status_code == 400  # /history/0 is refused
    assert _history(http, "entries", NOW_MS, limit=1001).status_code == 400
    page = _history(http, "entries", NOW_MS - 1, limit=2)
    assert len(page.json()["result"]) == 2
    newest = max(d["srvModified"] for d in page.json()["result"])
    assert page.headers["ETag"] == f'W/"{newest}"'
    header = parsedate_to_datetime(page.headers["Last-Modified"])
    assert int(header.timestamp() * 1000) == newest - newest % 1000  # whole seconds
    # a number below 2000-01-01 in ms is read as seconds, as moment.unix() does
    seconds = _history(http, "entries", (NOW_MS - 1000) // 1000).json()["result"]
    assert len(seconds) == 3


def test_history_without_a_path_value_reads_the_last_modified_header(
    sim: SimulatorServer, http: httpx.Client,
) -> None:
    sim.changes("a").soft_delete("entries", sim.documents("a", "entries", DAY)[0])
    auth = {"Authorization": f"Bearer {_jwt(http)}"}
    assert http.get("/api/v3/entries/history", headers=auth).status_code == 400
    since = {"Last-Modified": "Sat, 01 Jun 2024 12:00:00 GMT", **auth}  # >= NOW, floored
    assert len(http.get("/api/v3/entries/history", headers=since).json()["result"]) == 1


def test_writes_over_http_through_v3_and_v1(sim: SimulatorServer, http: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {_jwt(http)}"}
    when = int(datetime(2024, 5, 20, 8, tzinfo=UTC).timestamp() * 1000)
    created = http.post("/api/v3/treatments", headers=auth, json={
        "date": when, "eventType": "Carb Correction", "carbs": 15, "app": "AAPS",
        "device": "phone", "utcOffset": 0})
    assert created.status_code == 201
    identifier = created.json()["identifier"]
    assert http.patch(f"/api/v3/treatments/{identifier}", headers=auth,
                      json={"date": when + 1}).status_code == 400  # date is immutable
    assert http.patch(f"/api/v3/treatments/{identifier}", headers=auth,
                      json={"carbs": 20}).status_code == 200
    assert http.delete(f"/api/v3/treatments/{identifier}", headers=auth).status_code == 200
    assert http.patch(f"/api/v3/treatments/{identifier}", headers=auth,
                      json={"carbs": 25}).status_code == 410  # deleted documents are gone
    listed = _history(http, "treatments", NOW_MS - 1).json()["result"]
    assert [(d["identifier"], d["carbs"], d["isValid"]) for d in listed] == [
        (identifier, 20, False)]

    secret = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
    uploaded = http.post("/api/v1/entries.json", headers=secret, json=[
        {"type": "sgv", "sgv": 101, "date": when, "device": "xDrip"}])
    assert uploaded.status_code == 200
    oid = uploaded.json()[0]["_id"]
    assert http.post("/api/v1/entries.json", json=[{"date": when}]).status_code == 401
    assert http.delete(f"/api/v1/entries/{oid}", headers=secret).status_code == 200
    assert oid not in {d["_id"] for d in _v1(http, "entries", DAY, DAY + timedelta(days=1))}


def test_a_token_without_read_rights_and_a_server_without_v3(http: httpx.Client) -> None:
    with SimulatorServer([default_site("a", token=TOKEN)], now=NOW, history_days=5,
                         v3_enabled=False) as old:
        assert httpx.get(f"{old.url}/api/v3/version").status_code == 404
    sim = SimulatorServer([default_site("a", token=TOKEN)], now=NOW, history_days=5)
    with sim:
        sim.v3.denied.add("treatments")
        jwt = httpx.get(f"{sim.url}/api/v2/authorization/request/{TOKEN}").json()["token"]
        denied = httpx.get(f"{sim.url}/api/v3/treatments/history/{NOW_MS}",
                           headers={"Authorization": f"Bearer {jwt}"})
        assert denied.status_code == 403
        assert denied.json()["message"] == "Missing permission api:treatments:read"
        version = httpx.get(f"{sim.url}/api/v3/version").json()["result"]
        assert version["srvDate"] == NOW_MS


def test_generated_documents_are_changed_over_http_by_their_id(
    sim: SimulatorServer, http: httpx.Client,
) -> None:
    auth = {"Authorization": f"Bearer {_jwt(http)}"}
    secret = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
    treatment = sim.documents("a", "treatments", DAY)[0]
    reading = sim.documents("a", "entries", DAY)[3]
    assert http.patch(f"/api/v3/treatments/{treatment['_id']}", headers=auth,
                      json={"notes": "fixed"}).status_code == 200
    assert http.delete(f"/api/v1/entries/{reading['_id']}", headers=secret).status_code == 200
    assert http.delete(f"/api/v1/entries/{reading['_id']}", headers=secret).status_code == 404
    listed = _history(http, "treatments", NOW_MS - 1).json()["result"]
    assert [(d["identifier"], d["notes"]) for d in listed] == [(treatment["_id"], "fixed")]
    assert _history(http, "entries", NOW_MS - 1).json()["result"] == []  # v1 leaves no trace
    day = _v1(http, "entries", DAY, DAY + timedelta(days=1))
    assert reading["_id"] not in {d["_id"] for d in day}
