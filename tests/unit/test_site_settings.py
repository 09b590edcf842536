"""The timezone a site's settings name is kept on the branch for the build to read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.catalog import Catalog

from tasks.branches import EmbeddedBranchCatalog
from tasks.ingest import record_site_settings
from tasks.lakehouse import read_table
from tasks.settings import NightscoutSettings
from tasks.tables import AUDIT_TABLES

TABLE = AUDIT_TABLES["site_settings"].identifier


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse").catalog("main")


def _site(site_id: str, timezone: str | None) -> NightscoutSettings:
    return NightscoutSettings("http://127.0.0.1:1", site_id, timezone=timezone)


def _rows(catalog: Catalog) -> dict[str, str | None]:
    frame = read_table(catalog, TABLE)
    assert frame.get_column("site_id").is_unique().all()
    return dict(frame.select("site_id", "timezone").iter_rows())


def _snapshots(catalog: Catalog) -> int:
    return len(catalog.load_table(TABLE).snapshots())


def test_a_site_without_a_configured_zone_gets_a_row_saying_so(catalog: Catalog) -> None:
    assert record_site_settings(catalog, _site("a", None), "run-1")
    assert _rows(catalog) == {"a": None}  # the table exists for the build to read


def test_a_zone_is_written_once_and_again_only_when_it_changes(catalog: Catalog) -> None:
    assert record_site_settings(catalog, _site("a", "Asia/Tokyo"), "run-1")
    assert record_site_settings(catalog, _site("b", "Europe/Paris"), "run-1")
    written = _snapshots(catalog)
    assert not record_site_settings(catalog, _site("a", "Asia/Tokyo"), "run-2")
    assert _snapshots(catalog) == written  # a nightly run with the same settings: no commit
    assert record_site_settings(catalog, _site("a", None), "run-3")  # the block lost its zone
    assert _rows(catalog) == {"a": None, "b": "Europe/Paris"}
    runs = dict(read_table(catalog, TABLE).select("site_id", "ingest_run_id").iter_rows())
    assert runs == {"a": "run-3", "b": "run-1"}
