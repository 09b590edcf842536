"""The benchmark suite's own arithmetic and output, on tiny inputs (dlt is not needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench._overhead import chain_breakdown, sample_split, union_seconds
from bench._report import (
    chain_overhead_rows,
    chain_stage_rows,
    figure_row,
    ratios,
    render_markdown,
    summarise,
    target_rows,
    to_json,
)
from bench.suite import _chain_runs, parse_args, plot_scaling


def _figure(benchmark: str, system: str, size: str, rows: int, seconds: list[float],
            peak: list[float] | None = None) -> dict[str, Any]:
    return {"benchmark": benchmark, "system": system, "size": size, "rows": rows,
            "seconds": seconds, "peak_rss_mib": peak or [], "runs": []}


def _result() -> dict[str, Any]:
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


def test_union_seconds_merges_overlaps_and_clips_to_the_window() -> None:
    intervals = [(0.0, 4.0), (2.0, 6.0), (10.0, 12.0), (11.0, 11.5), (5.0, 5.5)]
    assert union_seconds(intervals) == 8.0  # [0, 6] and [10, 12]
    assert union_seconds(intervals, within=(3.0, 11.0)) == 4.0  # [3, 6] and [10, 11]
    assert union_seconds([(5.0, 4.0), (1.0, 1.0)]) == 0.0
    assert union_seconds([]) == 0.0


def test_sample_split_counts_each_sample_for_the_time_before_it_inside_the_window() -> None:
    samples = [(1.0, 1.0, "cascade"), (2.0, 1.0, "prefect"), (3.5, 1.5, "waiting"),
               (4.0, 0.5, "cascade")]
    assert sample_split(samples, (0.5, 3.0)) == {"cascade": 0.5, "prefect": 1.0,
                                                 "waiting": 1.0}


def _chain_run() -> dict[str, Any]:
    """A parent 10 → 110 s: ingest tasks 12-30 (two overlapping windows), build 40-80 with
    one task 42-50 and a nested subflow 60-70 holding a task 61-65, validate 85-95, a
    publish placeholder task run that must not count as work."""
    parent = {"id": "p", "name": "daily", "start": 10.0, "end": 110.0}
    flows = [
        {"id": "b", "name": "build_branch", "parent": "p", "parent_task_run_id": "xb",
         "start": 40.0, "end": 80.0},
        {"id": "n", "name": "nested", "parent": "b", "parent_task_run_id": "xn",
         "start": 60.0, "end": 70.0},
        {"id": "v", "name": "validate", "parent": "p", "parent_task_run_id": "xv",
         "start": 85.0, "end": 95.0},
    ]

    def task(tid: str, flow: str, start: float, end: float) -> dict[str, object]:
        return {"id": tid, "name": tid, "flow_run_id": flow, "start": start, "end": end,
                "total_run_time": end - start}

    tasks = [task("i1", "p", 12.0, 25.0), task("i2", "p", 20.0, 30.0),
             task("t1", "b", 42.0, 50.0), task("t2", "n", 61.0, 65.0),
             task("t3", "v", 86.0, 94.0), task("xb", "p", 40.0, 80.0),
             task("xn", "b", 60.0, 70.0), task("xv", "p", 85.0, 95.0)]
    samples = [(20.0, 10.0, "cascade"), (30.0, 10.0, "prefect"), (115.0, 5.0, "cascade")]
    return {"launched_at": 0.0, "imported_at": 4.0, "returned_at": 112.0, "parent": parent,
            "flow_runs": flows,
            "task_runs": tasks, "samples": samples}


def test_chain_breakdown_gives_stage_shares_counts_and_overhead() -> None:
    b = chain_breakdown(_chain_run())
    assert (b["process_s"], b["startup_s"], b["tail_s"], b["parent_wall_s"]) == (
        112.0, 10.0, 2.0, 100.0)
    assert (b["imports_s"], b["api_start_s"]) == (4.0, 6.0)
    assert b["flow_runs"] == 4  # the parent, two stages and the nested subflow
    assert b["task_runs"] == 5 and b["subflow_placeholder_task_runs"] == 3
    assert b["task_total_run_time_s"] == 13.0 + 10.0 + 8.0 + 4.0 + 8.0
    stages = b["stages"]
    assert list(stages) == ["ingest", "build_branch", "validate"]
    assert stages["ingest"] == {"wall_s": 18.0, "share": 0.18, "runs": 1, "task_runs": 2,
                                "in_task_runs_s": 18.0}
    assert stages["build_branch"]["wall_s"] == 40.0 and stages["build_branch"]["share"] == 0.4
    assert stages["build_branch"]["task_runs"] == 2  # its own and the nested subflow's
    assert stages["build_branch"]["in_task_runs_s"] == 12.0
    assert b["between_stages_s"] == 100.0 - (18.0 + 40.0 + 10.0)
    assert b["in_task_runs_s"] == 18.0 + 8.0 + 4.0 + 8.0
    assert b["outside_task_runs_s"] == 100.0 - 38.0
    assert (b["sampled_cascade_s"], b["sampled_prefect_s"]) == (10.0, 10.0)


def test_chain_breakdown_counts_only_the_parents_tasks_before_its_first_subflow_as_ingest(
) -> None:
    run = _chain_run()
    summary = {"id": "s1", "name": "s1", "flow_run_id": "p", "start": 100.0, "end": 105.0,
               "total_run_time": 5.0}  # a run summary the parent writes after the chain
    run["task_runs"] = [*run["task_runs"], summary]
    stages = chain_breakdown(run)["stages"]
    assert stages["ingest"] == {"wall_s": 18.0, "share": 0.18, "runs": 1, "task_runs": 2,
                                "in_task_runs_s": 18.0}


def _chain_figure() -> dict[str, Any]:
    first = chain_breakdown(_chain_run())
    slower = _chain_run()
    slower["parent"] = {**slower["parent"], "end": 210.0}  # 200 s parent wall
    slower["returned_at"] = 212.0
    second = chain_breakdown(slower)
    return {"benchmark": "chain", "system": "cascade", "size": "daily 1 d, plain dbt",
            "rows": 0, "seconds": [112.0, 212.0], "peak_rss_mib": [],
            "runs": [{"seconds": 112.0, "breakdown": first},
                     {"seconds": 212.0, "breakdown": second}]}


def test_chain_rows_take_min_and_median_over_runs() -> None:
    figure = _chain_figure()
    stages = {r["stage"]: r for r in chain_stage_rows(figure)}
    assert stages["build_branch"]["wall_s_median"] == 40.0
    assert stages["build_branch"]["share_median"] == pytest.approx((0.4 + 0.2) / 2)
    overhead = {r["figure"]: r for r in chain_overhead_rows(figure)}
    assert (overhead["parent_wall_s"]["min"], overhead["parent_wall_s"]["median"]) == (
        100.0, 150.0)
    assert overhead["outside_task_runs_s"]["median"] == (62.0 + 162.0) / 2
    assert overhead["outside_task_runs_s"]["share_median"] == pytest.approx(
        (0.62 + 0.81) / 2)
    assert overhead["task_runs"]["median"] == 5


def test_markdown_and_json_carry_the_chain_tables() -> None:
    result = _result()
    result["figures"] = [*result["figures"], _chain_figure()]
    text = render_markdown(result)
    assert ("| daily 1 d, plain dbt | build_branch | 2 | 40.00 | 40.00 | 30.0 % | 2 "
            "| 12.00 |") in text
    assert "| daily 1 d, plain dbt | parent flow run wall | 100.00 s | 150.00 s | 100.0 % |" \
        in text
    assert "| daily 1 d, plain dbt | flow runs created | 4 | 4 | — |" in text
    assert "| daily 1 d, plain dbt | start-up, imports: launch → flows imported | 4.00 s" in text
    data = json.loads(to_json(result))
    assert {r["stage"] for r in data["chain_stages"]} == {"ingest", "build_branch",
                                                          "validate"}
    assert any(r["figure"] == "startup_s" and r["median"] == 10.0
               for r in data["chain_overhead"])


def test_chain_options_pick_flows_sizes_and_dbt_modes() -> None:
    args = parse_args(["--only", "chain", "--chain-days", "1,365", "--chain-dbt",
                       "plain,nodes"])
    assert _chain_runs(args) == [("daily", 1, "plain"), ("backfill", 1, "plain"),
                                 ("backfill", 365, "plain"), ("daily", 1, "nodes"),
                                 ("backfill", 1, "nodes"), ("backfill", 365, "nodes")]
    assert _chain_runs(parse_args(["--chain-flows", "backfill"])) == [
        ("backfill", 365, "plain")]
    with pytest.raises(SystemExit):
        parse_args(["--chain-flows", "weekly"])


# ----------------------------------------------------------------------------- scale runs


def _per_site(n: int) -> list[dict[str, object]]:
    return [{"site": i, "site_id": f"s{i}", "seconds": 10.0 + i, "cpu_s": 5.0 + i,
             "rows": 1000, "rss_mib": 400.0 + i, "peak_rss_mib": 450.0 + i,
             "snapshots_entries": 13 * i, "metadata_kib": 10.0 * i} for i in range(1, n + 1)]


def test_site_day_cache_holds_loads_evicts_and_counts_misses() -> None:
    from types import SimpleNamespace

    from bench._sitecache import SiteDayCache

    made: list[tuple[str, int, str]] = []

    def generate(site: object, ordinal: int, collection: str) -> str:
        made.append((site.site_id, ordinal, collection))  # type: ignore[attr-defined]
        return f"{site.site_id}-{ordinal}-{collection}"  # type: ignore[attr-defined]

    cache = SiteDayCache(generate)
    a, b = SimpleNamespace(site_id="a"), SimpleNamespace(site_id="b")
    assert cache(a, 1, "entries") == "a-1-entries" and cache(a, 1, "entries") == "a-1-entries"
    assert made == [("a", 1, "entries")] and cache.misses["a"] == 1
    cache.load("b", {(2, "entries"): "loaded"})
    assert cache(b, 2, "entries") == "loaded" and cache.misses["b"] == 0
    assert sorted(cache.sites()) == ["a", "b"] and cache.holds("b")
    assert cache.evict("b") == 1 and not cache.holds("b") and cache.evict("b") == 0
    cache.reset_misses()
    assert not cache.misses


def test_site_warmer_generates_a_site_in_another_process_and_evicts_it() -> None:
    from datetime import date

    from bench._sitecache import SiteDayCache, SiteWarmer
    from tasks.simulator import SiteConfig
    from tasks.simulator import server as server_module

    site = SiteConfig(site_id="s1", seed=101, timezone="Europe/London", api_secret="s")
    cache = SiteDayCache(server_module._day_index.__wrapped__)
    warmer = SiteWarmer(cache, [date(2025, 1, 1), date(2024, 12, 31)], ("entries",),
                        pinned=["a"])
    try:
        warmer.prefetch(site)
        assert warmer.ensure(site) >= 0.0 and cache.holds("s1")
        index = cache(site, date(2025, 1, 1).toordinal(), "entries")
        assert index.ms.size > 200 and not cache.misses
        assert warmer.stats()["sites_generated"] == 1
        assert warmer.stats()["worker_peak_rss_mib"] > 0
        assert warmer.evict("s1") == 2 and warmer.evict("a") == 0
    finally:
        warmer.close()


def test_synced_ingest_asks_the_suite_before_each_site_and_records_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from bench._cascade import SYNC_PREFIX, ingest_sites
    from tasks.simulator import SimulatorServer, SiteConfig

    sites = [SiteConfig(site_id=s, seed=i, timezone="Europe/London", api_secret="s")
             for i, s in enumerate(("a", "b"), 1)]
    monkeypatch.setattr("sys.stdin", io.StringIO("go\ngo\n"))
    with SimulatorServer(sites, now=datetime(2025, 1, 2, tzinfo=UTC), history_days=5) as sim:
        out = ingest_sites({"sites": [{"site_id": s.site_id, "url": sim.url_for(s.site_id)}
                                      for s in sites],
                            "secret": "s", "end": "2025-01-01", "days": 1, "chunk_days": 30,
                            "workers": 1, "home": str(tmp_path), "sync": True})
    asked = [json.loads(line[len(SYNC_PREFIX):]) for line in capsys.readouterr().out.splitlines()
             if line.startswith(SYNC_PREFIX)]
    assert [(m["next"], m["site_id"]) for m in asked] == [(0, "a"), (1, "b")]
    assert asked[0]["last"] is None and asked[1]["last"]["site_id"] == "a"
    per_site = out["per_site"]
    assert [r["site"] for r in per_site] == [1, 2]
    assert out["seconds"] == pytest.approx(sum(r["seconds"] for r in per_site))
    assert out["rows"] == sum(r["rows"] for r in per_site)
    assert per_site[0]["snapshots_entries"] == 1 and per_site[1]["snapshots_entries"] == 2
    assert per_site[1]["metadata_kib"] > per_site[0]["metadata_kib"] > 0
    assert out["wall_s"] >= out["seconds"] and out["waited_s"] >= 0


def test_per_site_rows_group_sites_in_tenths() -> None:
    from bench._report import per_site_rows

    rows = per_site_rows(_per_site(100))
    assert len(rows) == 10 and (rows[0]["first"], rows[0]["last"]) == (1, 10)
    assert rows[0]["seconds_per_site"] == pytest.approx(15.5)
    assert rows[-1]["cpu_s_per_site"] == pytest.approx(100.5)
    assert (rows[-1]["snapshots"], rows[-1]["rss_mib"]) == (1300, 500.0)
    assert len(per_site_rows(_per_site(3))) == 3 and per_site_rows([]) == []


def test_markdown_shows_when_each_benchmark_ran_and_the_per_site_cost() -> None:
    result = _result()
    scale = result["figures"][3]
    scale["runs"] = [{"seconds": 900.0, "per_site": _per_site(20),
                      "simulator": {"rss_max_mib": 800.0, "worker_peak_rss_mib": 300.0,
                                    "sites_generated": 19, "generate_cpu_s": 150.0,
                                    "waited_s": 0.5, "misses": 0}}]
    result["meta"]["benchmarks"] = {
        "scale": {"started_at": "2026-01-01T00:00:00+00:00", "wall_s": 950.0,
                  "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [2.0, 2.0, 2.0],
                  "git": "abc1234", "python": "3.11.7", "versions": {"polars": "1.0"}}}
    text = render_markdown(result)
    assert ("| scale | 2026-01-01T00:00:00+00:00 | 950 | 1.00/1.00/1.00 → 2.00/2.00/2.00 "
            "| abc1234 | as above |") in text
    assert "Per-site cost as the lakehouse grows (100 site-years;" in text
    assert "| 1–2 | 11.5 | 6.5 | 87 | 26 | 20 | 402 | 452 |" in text
    assert "CPU per site, last group ÷ first: 3.77x." in text
    assert "| 100 site-years | 800 | 300 | 19 | 150.0 | 0.5 | 0 |" in text


def _stamped(result: dict[str, Any], started: str, ran: list[str]) -> dict[str, Any]:
    meta = result["meta"]
    meta["started_at"] = started
    meta["benchmarks"] = {b: {"started_at": started, "wall_s": 1.0,
                              "load_average_start": [1.0, 1.0, 1.0],
                              "load_average_end": [1.0, 1.0, 1.0], "notes": []}
                          for b in ran}
    return result


def test_merge_replaces_what_ran_and_keeps_the_rest() -> None:
    from bench._report import merge_results

    old = json.loads(to_json(_result()))  # a file written before per-benchmark meta
    old["notes"] = ["100 site-years not run (--scale 1,10)", "chain figures: x", "general"]
    new = _stamped({**_result(), "notes": ["scale: new"], "hygiene": {}}, "2026-02-02", ["scale"])
    new["meta"]["benchmarks"]["scale"]["notes"] = ["scale: new"]
    new["figures"] = [_figure("scale", "cascade", "100 site-years", 22_000_000, [800.0],
                              [600.0])]
    merged = merge_results(old, new)
    assert [(f["benchmark"], f["seconds"]) for f in merged["figures"]] == [
        ("ingest", [2.0, 1.0, 4.0]), ("ingest", [10.0, 12.0, 8.0]),
        ("shape+contract", [0.01]), ("scale", [800.0])]
    assert merged["notes"] == ["chain figures: x", "general", "scale: new"]
    assert merged["hygiene"] == old["hygiene"]
    assert merged["meta"]["merged_from"] == ["2026-01-01T00:00:00+00:00", "2026-02-02"]
    runs = merged["meta"]["benchmarks"]
    assert list(runs) == ["ingest", "shape", "scale"]
    assert runs["ingest"]["whole_suite_run"] and runs["scale"]["started_at"] == "2026-02-02"
    text = render_markdown(merged)
    assert "merged from the runs started 2026-01-01T00:00:00+00:00, 2026-02-02" in text
    assert "| ingest | 2026-01-01T00:00:00+00:00 | 12 (whole suite run) | 1.00/2.00/3.00 → " \
        "4.00/5.00/6.00 |" in text
    assert "summary" not in merged
    again = merge_results(json.loads(to_json(merged)), new)  # merging twice changes nothing
    assert again["figures"] == merged["figures"] and again["notes"] == merged["notes"]


def test_plot_scaling_with_per_site_cost(tmp_path: Path) -> None:
    figures = [_figure("scale", "cascade", "1 site-year", 10, [2.0], [300.0]),
               _figure("scale", "cascade", "100 site-years", 1000, [200.0], [500.0])]
    assert plot_scaling(figures, tmp_path / "p.png", [("100 site-years", _per_site(100))])
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_merge_option_is_off_by_default() -> None:
    assert not parse_args([]).merge and parse_args(["--merge"]).merge


def test_merge_results_folds_a_results_file_into_out_json(tmp_path: Path) -> None:
    from bench.suite import main

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(to_json(_result()))
    run = _stamped({**_result(), "notes": [], "hygiene": {}}, "2026-02-02", ["scale"])
    run["figures"] = [_figure("scale", "cascade", "10 site-years", 2_000_000, [300.0],
                              [550.0])]
    new.write_text(to_json(run))
    assert main(["--merge-results", str(new), "--out-json", str(old), "--out-md",
                 str(tmp_path / "out.md"), "--plot", str(tmp_path / "out.png")]) == 0
    merged = json.loads(old.read_text())
    assert [f["size"] for f in merged["figures"] if f["benchmark"] == "scale"] == [
        "10 site-years"]
    assert [f["benchmark"] for f in merged["figures"]].count("ingest") == 2
    assert "merged from the runs started" in (tmp_path / "out.md").read_text()
    assert (tmp_path / "out.png").exists()
