"""Shared fixtures: real Nightscout samples and a throw-away lakehouse home."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

SAMPLES = Path(os.environ.get(
    "CASCADE_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples" / "nightscout"
))
FIXTURES = Path(__file__).parent / "fixtures"


def load_sample(name: str) -> pl.DataFrame:
    """A real Nightscout payload (see shared/samples/nightscout/SOURCES.md), as the client
    parses it."""
    path = SAMPLES / name
    if not path.exists():
        path = FIXTURES / "nightscout" / name
    docs = json.loads(path.read_text())
    if not isinstance(docs, list):
        return pl.DataFrame()
    return pl.read_json(path, infer_schema_length=None)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Groups for ``--dist loadgroup``: the stack tests run one after another on one worker
    (some stop a service the others use), every other module's tests stay together (so a
    module's fixtures, such as one dbt build or one simulator, are made once). Marked as each
    item is collected: pytest-xdist reads the groups in its own collection_modifyitems, which
    may run before a conftest's."""
    module = item.nodeid.split("::", 1)[0]
    group = "stack" if item.get_closest_marker("stack") else module
    item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def cascade_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CASCADE_HOME for one test."""
    home = tmp_path / "cascade"
    monkeypatch.setenv("CASCADE_HOME", str(home))
    return home
