"""The whole chain on the real stack: Nessie branches, MinIO files, dbt on Trino, Postgres marts.

Every test reads a simulated site of its own (a fresh site id per test), so its counts
hold whatever earlier tests or earlier runs already landed on the stack's main.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from flows.build_branch import build_branch
from flows.pipeline import backfill
from flows.validate import validate
from tasks.errors import ValidationFailed
from tasks.lakehouse import read_table
from tasks.profile import stack_lakehouse
from tasks.settings import marts_url_from_env
from tasks.simulator import SimulatorServer, SiteConfig
from tasks.trino import branch_catalog, query
from tests._iceberg import eq
from tests.e2e.model_compare import canonical
from tests.integration.conftest import NOW, SECRET, use_site

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
MARTS = ("mrt_daily_glycaemia", "mrt_quality_coverage", "mrt_agp_hourly", "mrt_agp_hourly_14d")
FIRST = (date(2024, 3, 1), date(2024, 3, 3))
SECOND = (date(2024, 3, 4), date(2024, 3, 4))


@pytest.fixture
def own_site(stack_env: dict[str, str], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Cascade on the stack profile, reading a simulated site no other test reads."""
    site = SiteConfig(site_id="p" + uuid.uuid4().hex[:8], seed=11, timezone="Europe/London",
                      api_secret=SECRET)
    with SimulatorServer([site], now=NOW, history_days=45) as server:
        yield use_site(monkeypatch, server, site.site_id, tmp_path / "cascade")


def _site_rows(catalog_name: str | None, table: str, site_id: str) -> int:
    settings = stack_lakehouse().settings
    rows = query(settings, f"select count(*) from {table} where site_id = ?", catalog_name,
                 [site_id])
    return int(rows[0][0])


def _postgres_mart(name: str, site_id: str) -> pl.DataFrame:
    url = marts_url_from_env()
    assert url is not None
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pl.read_database(sa.text(f"select * from {name} where site_id = :s"), conn,
                                    execute_options={"parameters": {"s": site_id}})
    finally:
        engine.dispose()


def _normalise(frame: pl.DataFrame) -> pl.DataFrame:
    """Comparable form: floats as Float64, times as naive UTC µs, in canonical order."""
    columns = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_numeric() and not dtype.is_integer():
            col = col.cast(pl.Float64)
        elif dtype.is_integer():
            col = col.cast(pl.Int64)
        elif isinstance(dtype, pl.Datetime):
            col = (col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
                   if dtype.time_zone else col).cast(pl.Datetime("us"))
        columns.append(col.alias(name))
    return canonical(frame.select(columns))


def _assert_same(stack: pl.DataFrame, embedded: pl.DataFrame, name: str) -> None:
    left, right = _normalise(stack), _normalise(embedded)
    assert left.columns == right.columns, name
    assert left.height == right.height > 0, name
    for column in left.columns:
        a, b = left.get_column(column), right.get_column(column)
        if a.dtype == pl.Float64:
            diff = (a - b).abs()
            ok = (diff <= 1e-6 + 1e-9 * b.abs()) | (a.is_null() & b.is_null())
            assert ok.all(), f"{name}.{column}: largest difference {diff.max()!r}"
        else:
            assert a.to_list() == b.to_list(), f"{name}.{column}"


def test_pipeline_lands_on_main_with_one_merge_tag_time_travel_and_same_marts(
    own_site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake = stack_lakehouse()
    branches = lake.branches
    seen = {c["hash"] for c in branches.history("main", limit=500)}

    first = backfill(start=FIRST[0], end=FIRST[1], chunk_days=2, dbt_node_tasks=False)

    new = [c for c in branches.history("main", limit=500) if c["hash"] not in seen]
    assert len(new) == 1, "a run lands on main as exactly one (merge) commit"
    assert first.branch in str(new[0]["message"])
    assert branches.ref(str(first.tag)).kind == "tag"
    assert branches.ref(str(first.tag)).hash == branches.ref("main").hash == new[0]["hash"]
    assert first.branch not in {r.name for r in branches.list_refs()}

    entries_first = first.ingest.tables["entries"].committed
    assert entries_first > 500
    assert _site_rows(None, "raw.entries", own_site) == entries_first  # Trino on main
    days = _site_rows(None, "marts.mrt_daily_glycaemia", own_site)
    assert days >= 3

    second = backfill(start=SECOND[0], end=SECOND[1], chunk_days=1, dbt_node_tasks=False)
    entries_all = _site_rows(None, "raw.entries", own_site)
    assert entries_all > entries_first
    # time travel: the tag of the first promote still reads the data as it was then,
    # through Trino (a catalog at that ref) and through PyIceberg
    with branch_catalog(lake.settings, str(first.tag)) as before:
        assert _site_rows(before, "raw.entries", own_site) == entries_first
        assert _site_rows(before, "marts.mrt_daily_glycaemia", own_site) == days
    old = read_table(branches.catalog(str(first.tag)), "raw.entries",
                     eq("site_id", own_site))
    assert old.height == entries_first
    assert str(second.tag) != str(first.tag)

    # the same input through the embedded profile gives the same marts
    monkeypatch.setenv("CASCADE_PROFILE", "embedded")
    monkeypatch.setenv("CASCADE_HOME", str(tmp_path / "embedded"))
    backfill(start=FIRST[0], end=FIRST[1], chunk_days=2, dbt_node_tasks=False)
    backfill(start=SECOND[0], end=SECOND[1], chunk_days=1, dbt_node_tasks=False)
    from tasks.profile import embedded_lakehouse

    embedded_main = embedded_lakehouse().branches.catalog("main")
    for name in MARTS:
        embedded = read_table(embedded_main, f"marts.{name}",
                              eq("site_id", own_site))
        _assert_same(_postgres_mart(name, own_site), embedded, name)


def test_failing_validation_leaves_nessie_main_unchanged(own_site: str) -> None:
    branches = stack_lakehouse().branches
    result = backfill(start=date(2024, 3, 10), end=date(2024, 3, 10), promote_to_main=False)
    branch = result.branch
    try:
        # lose the site's rows on the branch behind ingestion's back
        branches.catalog(branch).load_table("raw.entries").delete(eq("site_id", own_site))
        main_before = branches.ref("main").hash
        build_branch(branch, node_tasks=False)
        with pytest.raises(ValidationFailed, match=re.escape("reconcile raw.entries")):
            validate(branch)
        assert branches.ref("main").hash == main_before
        assert branches.ref(branch).kind == "branch"  # kept for inspection
    finally:
        branches.delete_branch(branch)


def test_two_backfills_at_once_both_land(own_site: str, stack_env: dict[str, str]) -> None:
    """Two processes backfill disjoint ranges at the same time; both end up on main."""
    ranges = [("2024-03-20", "2024-03-21"), ("2024-03-22", "2024-03-23")]
    env = {**os.environ, **stack_env}
    procs = [subprocess.Popen([sys.executable, "-m", "flows", "backfill", lo, hi,
                               "--chunk-days", "1", "--plain-dbt"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for lo, hi in ranges]
    outputs = [p.communicate(timeout=1500)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    # both forked from the same main: whichever promoted second found main moved and
    # redid its range on a fresh branch
    assert any("(attempt 2)" in out for out in outputs), outputs[0][-2000:]
    entries = read_table(stack_lakehouse().branches.catalog("main"), "raw.entries",
                         eq("site_id", own_site))
    landed = set(entries.get_column("entry_at").dt.date().unique().to_list())
    assert {date(2024, 3, d) for d in range(20, 24)} <= landed
    assert entries.get_column("entry_id").n_unique() == entries.height  # nothing twice
