"""What the Prefect UI shows for each flow's parameters: a description each, a block picker
for the site."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import Flow

from flows.build_branch import build_branch
from flows.ingest_day import ingest_day
from flows.ingest_window import ingest_window
from flows.maintain import maintain
from flows.pipeline import backfill, daily
from flows.promote import promote
from flows.publish import publish
from flows.validate import validate

FLOWS: list[Flow[Any, Any]] = [backfill, daily, ingest_day, ingest_window, build_branch,
                               validate, promote, publish, maintain]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_is_described(flow: Flow[Any, Any]) -> None:
    properties = flow.parameters.model_dump()["properties"]

    assert {name for name, p in properties.items() if not p.get("description")} == set()


@pytest.mark.parametrize("flow", [backfill, daily], ids=lambda f: f.name)
def test_site_is_a_nightscout_site_block_picker(flow: Flow[Any, Any]) -> None:
    schema = flow.parameters.model_dump()
    refs = [option.get("$ref") for option in schema["properties"]["site"]["anyOf"]]
    assert "#/definitions/NightscoutSite" in refs
    assert schema["definitions"]["NightscoutSite"]["block_type_slug"] == "nightscout-site"


@pytest.mark.parametrize("flow", [backfill, daily, publish], ids=lambda f: f.name)
def test_units_can_be_overridden(flow: Flow[Any, Any]) -> None:
    assert "mmol/L" in flow.parameters.model_dump()["properties"]["units"]["description"]


def test_a_picked_site_names_the_run() -> None:
    from blocks.nightscout import NightscoutSite
    from tasks.fanout import _picked

    assert _picked(NightscoutSite(url="https://ns.example.org", site_id="clinic-p")) == "clinic-p"
    assert _picked({"url": "https://ns.example.org", "site_id": "clinic-q"}) == "clinic-q"
    assert _picked(None) is None
