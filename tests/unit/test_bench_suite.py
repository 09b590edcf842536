"""The benchmark suite's own arithmetic and output, on tiny inputs (dlt is not needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench._report import figure_row, ratios, render_markdown, summarise, target_rows, to_json
from bench.suite import parse_args, plot_scaling


def _figure(benchmark: str, system: str, size: str, rows: int, seconds: list[float],
            peak: list[float] | None = None) -> dict[str, object]:
    return {"benchmark": benchmark, "system": system, "size": size, "rows": rows,
            "seconds": seconds, "peak_rss_mib": peak or [], "runs": []}


def _result() -> dict[str, object]:
    figures = [
        _figure("ingest", "cascade", "1 d", 1000, [2.0, 1.0, 4.0], [300.0, 310.0, 305.0]),
        _figure("ingest", "dlt", "1 d", 1000, [10.0, 12.0, 8.0], [200.0, 220.0, 210.0]),
        _figure("shape+contract", "cascade", "1,000 readings, 1 core", 1000, [0.01]),
        _figure("scale", "cascade", "100 site-years", 22_000_000, [900.0], [2500.0]),
    ]
    machine = {"cores": 2, "memory_gib": 23.5, "cpu": "test cpu", "load_average": [1.0, 2.0, 3.0],
               "python": "3.11.7", "versions": {"polars": "1.0", "dlt": None}}
    meta = {"started_at": "2026-01-01T00:00:00+00:00", "machine": machine, "wall_s": 12.0,
            "load_average_end": [4.0, 5.0, 6.0]}
    hygiene = {"cascade, 1 d": [{"table": "raw.entries", "snapshots": 1, "data_files": 2,
                                 "avg_file_kib": 24.4}]}
    return {"meta": meta, "figures": figures, "hygiene": hygiene, "notes": ["a note"]}


def test_summarise_gives_min_median_max_and_runs() -> None:
    summary = summarise([3.0, 1.0, 2.0, 10.0])
    assert (summary.runs, summary.min, summary.median, summary.max) == (4, 1.0, 2.5, 10.0)
    with pytest.raises(ValueError, match="no samples"):
        summarise([])


def test_figure_row_turns_seconds_into_rows_per_second() -> None:
    figure = _figure("ingest", "cascade", "1 d", 1000, [2.0, 1.0, 4.0], [1.0, 3.0])
    figure["runs"] = [{"cpu_s": 1.5}, {"cpu_s": 0.5}, {"cpu_s": 1.0}]
    row = figure_row(figure)
    assert row["cpu_s_median"] == 1.0
    assert row["seconds_min"] == 1.0 and row["seconds_median"] == 2.0
    assert row["rows_per_s_best"] == 1000.0 and row["rows_per_s_median"] == 500.0
    assert row["peak_rss_mib_max"] == 3.0 and row["runs"] == 3


def test_ratios_divide_medians_where_both_systems_ran() -> None:
    figures = _result()["figures"]
    assert ratios(figures) == [{"size": "1 d", "cascade": 500.0, "dlt": 100.0, "ratio": 5.0}]
    assert ratios(figures[:1]) == []


def test_targets_report_what_was_measured() -> None:
    targets = {t["target"]: t for t in target_rows(_result()["figures"])}
    assert targets["ingestion >= 10x dlt rows/s"]["measured"] == 5.0
    assert targets["ingestion >= 10x dlt rows/s"]["met"] is False
    assert targets["shaping+contract >= 1M rows/s on one core"]["measured"] == 100_000.0
    assert targets["100 site-years peak memory < 2 GB"]["met"] is False


def test_markdown_has_machine_line_tables_and_notes() -> None:
    text = render_markdown(_result())
    assert text.startswith("2 cores, 23.5 GiB, test cpu; load average (1/5/15 min) "
                           "1.00/2.00/3.00 → 4.00/5.00/6.00; Python 3.11.7; polars 1.0;")
    assert "| ingest | cascade | 1 d | 1,000 | 3 | 1.00 | 2.00 | — | 1,000 | 500 | 310 |" in text
    assert "| 1 d | 500 | 100 | 5.00x |" in text
    assert "| ingestion >= 10x dlt rows/s | 5.00x (lowest ratio, at 1 d) | no |" in text
    assert "| cascade, 1 d | raw.entries | 1 | 2 | 24.4 |" in text
    assert text.rstrip().endswith("- a note")


def test_json_keeps_samples_and_adds_summaries() -> None:
    data = json.loads(to_json(_result()))
    assert data["figures"][0]["seconds"] == [2.0, 1.0, 4.0]
    assert [s["rows_per_s_median"] for s in data["summary"]] == [500.0, 100.0, 100_000.0,
                                                                 22_000_000 / 900.0]
    assert data["ratios"][0]["ratio"] == 5.0
    assert len(data["targets"]) == 3


def test_quick_shrinks_every_size_and_drops_the_chain() -> None:
    args = parse_args(["--quick"])
    assert (args.ingest_days, args.shape_rows, args.scale, args.repeat) == ([1], 50_000, [1], 1)
    assert "chain" not in args.only
    assert parse_args(["--only", "shape", "--repeat", "5"]).only == ["shape"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])


def test_plot_scaling_writes_a_png(tmp_path: Path) -> None:
    figures = [_figure("scale", "cascade", "1 site-year", 10, [2.0], [300.0]),
               _figure("scale", "cascade", "10 site-years", 100, [20.0], [320.0])]
    assert plot_scaling(figures, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes().startswith(b"\x89PNG")
    assert not plot_scaling(figures[:0], tmp_path / "none.png")


def test_cascade_ingest_of_one_day_reports_rows_time_memory_and_hygiene(tmp_path: Path) -> None:
    from bench._cascade import ingest_sites
    from tasks.simulator import SimulatorServer, SiteConfig

    site = SiteConfig(site_id="a", seed=1, timezone="Europe/London", api_secret="s")
    with SimulatorServer([site], now=datetime(2025, 1, 2, tzinfo=UTC), history_days=5) as sim:
        out = ingest_sites({"sites": [{"site_id": "a", "url": sim.url_for("a")}],
                            "secret": "s", "end": "2025-01-01", "days": 1, "chunk_days": 30,
                            "workers": 1, "home": str(tmp_path), "hygiene": True})
    assert out["windows"] == 1 and out["rows"] > 500 and out["seconds"] > 0
    assert out["peak_rss_mib"] > 0 and out["cpu_s"] > 0
    tables = {t["table"]: t for t in out["hygiene"]}
    assert tables["raw.entries"]["snapshots"] == 1 and tables["raw.entries"]["data_files"] == 1
