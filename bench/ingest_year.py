"""Benchmark: one site-year through ingestion on the embedded profile, stage by stage.

    uv run python bench/ingest_year.py [--days 365] [--chunk-days 30]

Prints rows/s of fetch, shaping + contract, and Iceberg commit, then the snapshots, data
files and average file size each table ended with. No Prefect: the plain functions the
tasks wrap, so the figures are ours, not the orchestrator's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from tasks.branches import EmbeddedBranchCatalog
from tasks.contracts import check
from tasks.days import DayRange
from tasks.ingest import WINDOW_TABLES
from tasks.lakehouse import replace_rows, site_window
from tasks.nightscout import NightscoutClient
from tasks.settings import NightscoutSettings
from tasks.shaping import ShapeContext, shape
from tasks.simulator import SimulatorServer, SiteConfig
from tasks.tables import RAW_TABLES, raw_layout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--chunk-days", type=int, default=30)
    args = parser.parse_args()
    now = datetime(2025, 1, 2, tzinfo=UTC)
    site = SiteConfig(site_id="a", seed=1, timezone="Europe/London", api_secret="s")
    home = Path(tempfile.mkdtemp(prefix="cascade-bench-"))
    branches = EmbeddedBranchCatalog(home / "catalog.db", home / "warehouse")
    catalog = branches.catalog("main")
    seconds = {"fetch": 0.0, "shape+contract": 0.0, "commit": 0.0}
    rows = 0
    end = now.date() - timedelta(days=1)
    windows = DayRange(end - timedelta(days=args.days - 1), end).chunks(args.chunk_days)
    with SimulatorServer([site], now=now, history_days=args.days + 2) as sim:
        client = NightscoutClient(NightscoutSettings(sim.url_for("a"), "a", SecretStr("s")))
        for window in windows:
            ctx = ShapeContext("a", site.timezone, *window.utc_bounds(), "bench",
                               datetime.now(UTC))
            for name in WINDOW_TABLES:
                table = RAW_TABLES[name]
                t0 = time.perf_counter()
                docs = client.fetch_window(name, ctx.window_start, ctx.window_end).frame
                t1 = time.perf_counter()
                shaped = shape(name, docs, ctx)
                valid = check(name, shaped.rows, ctx).valid
                t2 = time.perf_counter()
                layout = raw_layout(table)
                replace_rows(catalog, layout, valid,
                             site_window(layout, "a", ctx.window_start, ctx.window_end))
                t3 = time.perf_counter()
                seconds["fetch"] += t1 - t0
                seconds["shape+contract"] += t2 - t1
                seconds["commit"] += t3 - t2
                rows += valid.height
    total = sum(seconds.values())
    print(f"{args.days} days, {len(windows)} windows of {args.chunk_days} days, {rows:,} rows")
    print("| stage | seconds | rows/s |\n| --- | ---: | ---: |")
    for stage, sec in seconds.items():
        print(f"| {stage} | {sec:.2f} | {rows / sec:,.0f} |")
    print(f"| all | {total:.2f} | {rows / total:,.0f} |")
    print("\n| table | snapshots | data files | avg file KiB |\n| --- | ---: | ---: | ---: |")
    for name in WINDOW_TABLES:
        iceberg = catalog.load_table(f"raw.{name}")
        files = iceberg.inspect.files()
        sizes = files.column("file_size_in_bytes").to_pylist()
        print(f"| raw.{name} | {len(iceberg.snapshots())} | {len(sizes)} | "
              f"{sum(sizes) / max(1, len(sizes)) / 1024:.1f} |")


if __name__ == "__main__":
    main()
