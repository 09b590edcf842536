"""Statistics, machine facts and rendering (markdown and JSON) of a benchmark-suite run.

Pure functions over plain dicts, so they are tested on tiny inputs without running any
benchmark. One *figure* is one measured thing (a benchmark, a system, a size) with the
samples of its repeated runs::

    {"benchmark": "ingest", "system": "cascade", "size": "365 d", "rows": 220960,
     "seconds": [16.1, 15.8, 16.4], "peak_rss_mib": [612.0, 615.2, 610.9], "extra": {...}}
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

__all__ = [
    "LIBRARIES",
    "Summary",
    "chain_overhead_rows",
    "chain_stage_rows",
    "figure_row",
    "machine_facts",
    "merge_results",
    "per_site_rows",
    "per_site_runs",
    "ratios",
    "render_markdown",
    "summarise",
    "target_rows",
    "to_json",
]

LIBRARIES: Final = ("polars", "pandera", "pyarrow", "pyiceberg", "httpx", "prefect", "dlt")
Figure = dict[str, Any]


@dataclass(frozen=True)
class Summary:
    """Min, median and max of a figure's samples, and how many runs they come from."""

    runs: int
    min: float
    median: float
    max: float


def summarise(samples: list[float]) -> Summary:
    """Summarise repeated measurements.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("no samples to summarise")
    return Summary(len(samples), min(samples), statistics.median(samples), max(samples))


def _per_second(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 and rows > 0 else float("nan")


def figure_row(figure: Figure) -> dict[str, Any]:
    """The summary of one figure: seconds min/median, rows/s at both, peak memory max."""
    secs = summarise(figure["seconds"])
    row: dict[str, Any] = {
        "benchmark": figure["benchmark"], "system": figure["system"], "size": figure["size"],
        "rows": figure.get("rows", 0), "runs": secs.runs,
        "seconds_min": secs.min, "seconds_median": secs.median,
        "rows_per_s_best": _per_second(figure.get("rows", 0), secs.min),
        "rows_per_s_median": _per_second(figure.get("rows", 0), secs.median),
    }
    if figure.get("peak_rss_mib"):
        row["peak_rss_mib_max"] = max(figure["peak_rss_mib"])
    cpu = [r["cpu_s"] for r in figure.get("runs", []) if "cpu_s" in r]
    if cpu:
        row["cpu_s_median"] = statistics.median(cpu)
    return row


def ratios(figures: list[Figure], benchmark: str = "ingest") -> list[dict[str, Any]]:
    """Cascade's median rows/s over dlt's, per size where both were measured."""
    rows = [figure_row(f) for f in figures if f["benchmark"] == benchmark]
    by_size: dict[str, dict[str, float]] = {}
    for row in rows:
        by_size.setdefault(row["size"], {})[row["system"]] = row["rows_per_s_median"]
    return [
        {"size": size, "cascade": pair["cascade"], "dlt": pair["dlt"],
         "ratio": pair["cascade"] / pair["dlt"] if pair["dlt"] else float("nan")}
        for size, pair in by_size.items() if {"cascade", "dlt"} <= pair.keys()
    ]


def target_rows(figures: list[Figure]) -> list[dict[str, Any]]:
    """Issue 6's targets against what this run measured (those it measured)."""
    out: list[dict[str, Any]] = []
    ingest = ratios(figures)
    if ingest:
        worst = min(ingest, key=lambda r: r["ratio"])
        out.append({"target": "ingestion >= 10x dlt rows/s", "goal": 10.0,
                    "measured": worst["ratio"], "met": worst["ratio"] >= 10.0,
                    "note": f"lowest ratio, at {worst['size']}"})
    for f in figures:
        if f["benchmark"] == "shape+contract":
            speed = figure_row(f)["rows_per_s_median"]
            out.append({"target": "shaping+contract >= 1M rows/s on one core", "goal": 1e6,
                        "measured": speed, "met": speed >= 1e6, "note": f["size"]})
    for f in figures:
        if f["benchmark"] == "scale" and f["size"].startswith("100 "):
            peak = max(f["peak_rss_mib"])
            out.append({"target": "100 site-years peak memory < 2 GB", "goal": 2048.0,
                        "measured": peak, "met": peak < 2048.0, "note": "MiB"})
    return out


_CHAIN_FIGURES: Final = (
    ("process_s", "process: launch → flow returned"),
    ("startup_s", "start-up: launch → parent start"),
    ("imports_s", "start-up, imports: launch → flows imported"),
    ("api_start_s", "start-up, API start: flows imported → parent start"),
    ("parent_wall_s", "parent flow run wall"),
    ("between_stages_s", "between stages"),
    ("outside_task_runs_s", "outside task runs (upper bound of Prefect overhead)"),
    ("sampled_cascade_s", "sampled: Cascade code running"),
    ("sampled_prefect_s", "sampled: Prefect only (outside our code)"),
    ("sampled_waiting_s", "sampled: waiting"),
    ("tail_s", "tail: parent end → flow returned"),
    ("flow_runs", "flow runs created"),
    ("task_runs", "task runs created (subflow placeholders excluded)"),
)
_COUNTS: Final = ("flow_runs", "task_runs")
_BEFORE_PARENT: Final = ("process_s", "startup_s", "imports_s", "api_start_s")


def _breakdowns(figure: Figure) -> list[dict[str, Any]]:
    return [r["breakdown"] for r in figure.get("runs", []) if "breakdown" in r]


def chain_stage_rows(figure: Figure) -> list[dict[str, Any]]:
    """Per stage of a chain figure: wall min/median, share of the parent wall (median),
    task runs and time inside them (median), over the runs that had the stage."""
    runs = _breakdowns(figure)
    names = list(dict.fromkeys(n for b in runs for n in b["stages"]))
    rows = []
    for name in names:
        had = [b["stages"][name] for b in runs if name in b["stages"]]
        wall = summarise([s["wall_s"] for s in had])
        rows.append({"size": figure["size"], "stage": name, "runs": len(had),
                     "wall_s_min": wall.min, "wall_s_median": wall.median,
                     "share_median": statistics.median(s["share"] for s in had),
                     "task_runs_median": statistics.median(s["task_runs"] for s in had),
                     "in_task_runs_s_median": statistics.median(
                         s["in_task_runs_s"] for s in had)})
    return rows


def chain_overhead_rows(figure: Figure) -> list[dict[str, Any]]:
    """Run counts, start-up and overhead figures of a chain figure: min/median over runs,
    and the median of each run's figure ÷ its parent wall (counts have no share)."""
    runs = _breakdowns(figure)
    rows = []
    for key, label in _CHAIN_FIGURES:
        have = [b for b in runs if key in b]
        if not have:
            continue
        values = summarise([b[key] for b in have])
        share = (float("nan") if key in _COUNTS or key in _BEFORE_PARENT
                 else statistics.median(b[key] / b["parent_wall_s"] for b in have
                                        if b["parent_wall_s"] > 0))
        rows.append({"size": figure["size"], "figure": key, "label": label,
                     "min": values.min, "median": values.median, "share_median": share})
    return rows


def per_site_rows(per_site: list[dict[str, Any]], blocks: int = 10) -> list[dict[str, Any]]:
    """A scale run's per-site records in ``blocks`` consecutive groups of sites: mean wall
    and CPU seconds per site, rows/s, and the child's RSS, peak and the tables' snapshots
    and metadata size after the group's last site."""
    if not per_site:
        return []
    size = max(1, math.ceil(len(per_site) / blocks))
    rows = []
    for lo in range(0, len(per_site), size):
        group = per_site[lo:lo + size]
        end = group[-1]
        secs = sum(r["seconds"] for r in group)
        rows.append({"first": group[0]["site"], "last": end["site"], "sites": len(group),
                     "seconds_per_site": secs / len(group),
                     "cpu_s_per_site": sum(r["cpu_s"] for r in group) / len(group),
                     "rows_per_s": _per_second(sum(r.get("rows", 0) for r in group), secs),
                     "rss_mib": end.get("rss_mib", float("nan")),
                     "peak_rss_mib": end.get("peak_rss_mib", float("nan")),
                     "snapshots": end.get("snapshots_entries", 0),
                     "metadata_kib": end.get("metadata_kib", float("nan"))})
    return rows


def per_site_runs(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, per-site records) of every scale run that has them, partial ones too."""
    out = []
    for f in result["figures"]:
        if f["benchmark"] == "scale":
            for i, run in enumerate(f.get("runs", [])):
                if len(run.get("per_site", [])) > 1:
                    label = f["size"] + (f", run {i + 1}" if len(f["runs"]) > 1 else "")
                    out.append((label, run["per_site"]))
    for label, per_site in result.get("partial", {}).items():
        if per_site:
            out.append((f"{label} (stopped after {len(per_site)} sites)", per_site))
    return out


# Figures each benchmark writes (``--only`` names → ``figure["benchmark"]``).
_FIGURE_NAMES: Final = {"ingest": "ingest", "shape": "shape+contract", "scale": "scale",
                        "chain": "chain"}
_ORDER: Final = tuple(_FIGURE_NAMES)
_DERIVED: Final = ("summary", "ratios", "targets", "chain_stages", "chain_overhead")
_LEGACY_NOTES: Final = (  # note prefixes → benchmark, for results written before per-run meta
    ("100 site-years", "scale"), ("scaling plot", "scale"), ("scale", "scale"),
    ("dlt is not installed", "ingest"), ("chain", "chain"), ("start-up =", "chain"),
    ("between stages", "chain"), ("outside task runs", "chain"), ("sampled (", "chain"),
    ("ingest failed", "ingest"), ("shape failed", "shape"))


def _benchmark_of(figure: Figure) -> str:
    return next((k for k, v in _FIGURE_NAMES.items() if v == figure["benchmark"]),
                figure["benchmark"])


def _runs_meta(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per benchmark: when it ran, under what load, from what code. Results written before
    the suite recorded that get the whole run's figures, marked ``whole_suite_run``."""
    meta = result["meta"]
    if meta.get("benchmarks"):
        return dict(meta["benchmarks"])
    machine = meta.get("machine", {})
    ran = [b for b in _ORDER if any(_benchmark_of(f) == b for f in result["figures"])]
    notes: dict[str, list[str]] = {b: [] for b in ran}
    for note in result.get("notes", []):
        owner = next((b for prefix, b in _LEGACY_NOTES if note.startswith(prefix)), None)
        if owner in notes:
            notes[owner].append(note)
    return {b: {"started_at": meta.get("started_at"), "wall_s": None,
                "suite_wall_s": meta.get("wall_s"),
                "load_average_start": machine.get("load_average"),
                "load_average_end": meta.get("load_average_end"),
                "python": machine.get("python"), "versions": machine.get("versions", {}),
                "git": meta.get("git"), "notes": notes[b], "whole_suite_run": True}
            for b in ran}


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``previous`` with the benchmarks ``new`` ran replaced by ``new``'s: their figures,
    notes, per-run meta (and hygiene for ``ingest``, partial runs for ``scale``)."""
    ran = set(new["meta"].get("benchmarks", {}))
    old_meta, new_meta = _runs_meta(previous), _runs_meta(new)
    kept_meta = {b: m for b, m in old_meta.items() if b not in ran}
    owned = {n for m in old_meta.values() for n in m.get("notes", [])}
    general = [n for n in previous.get("notes", []) if n not in owned]
    runs = {**kept_meta, **{b: m for b, m in new_meta.items() if b in ran}}
    runs = {b: runs[b] for b in sorted(runs, key=lambda b: (*_ORDER, b).index(b))}
    figures = [f for b in runs for f in (new if b in ran else previous)["figures"]
               if _benchmark_of(f) == b]
    notes = general + [n for m in runs.values() for n in m.get("notes", [])]
    merged = {k: v for k, v in previous.items() if k not in _DERIVED}
    merged_from = previous["meta"].get("merged_from", [previous["meta"].get("started_at")])
    merged |= {
        "meta": {**new["meta"], "benchmarks": runs,
                 "merged_from": [*merged_from, new["meta"]["started_at"]]},
        "figures": figures, "notes": list(dict.fromkeys(notes)),
        "hygiene": new.get("hygiene", {}) if "ingest" in ran else previous.get("hygiene", {}),
    }
    partial = new.get("partial", {}) if "scale" in ran else previous.get("partial", {})
    merged.pop("partial", None)
    if partial:
        merged["partial"] = partial
    return merged


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, Any]:
    """Cores, memory, CPU, load average now, Python and the libraries' versions."""
    return {
        "cores": os.cpu_count(), "memory_gib": round(_memory_gib(), 1), "cpu": _cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {name: _version(name) for name in LIBRARIES},
    }


def to_json(result: dict[str, Any]) -> str:
    """The run as JSON: meta, raw samples, summaries, ratios and targets."""
    figures = result["figures"]
    chain = [f for f in figures if f["benchmark"] == "chain" and _breakdowns(f)]
    full = {**result, "summary": [figure_row(f) for f in figures],
            "ratios": ratios(figures), "targets": target_rows(figures),
            "chain_stages": [r for f in chain for r in chain_stage_rows(f)],
            "chain_overhead": [r for f in chain for r in chain_overhead_rows(f)]}
    return json.dumps(full, indent=2, default=_plain) + "\n"


def _plain(value: object) -> object:
    if isinstance(value, Summary):
        return asdict(value)
    return str(value)


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def _figures_table(figures: list[Figure]) -> list[str]:
    lines = [("| benchmark | system | size | rows | runs | min s | median s | CPU s (median) "
              "| rows/s (best) | rows/s (median) | peak MiB |"),
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in figures:
        r = figure_row(f)
        peak = _num(r["peak_rss_mib_max"]) if "peak_rss_mib_max" in r else "—"
        cpu = _num(r["cpu_s_median"], 2) if "cpu_s_median" in r else "—"
        lines.append(
            f"| {r['benchmark']} | {r['system']} | {r['size']} | {r['rows']:,} | {r['runs']} "
            f"| {r['seconds_min']:.2f} | {r['seconds_median']:.2f} | {cpu} "
            f"| {_num(r['rows_per_s_best'])} | {_num(r['rows_per_s_median'])} | {peak} |")
    return lines


def _ratio_table(figures: list[Figure]) -> list[str]:
    rows = ratios(figures)
    if not rows:
        return []
    lines = ["", "| ingestion | Cascade rows/s | dlt rows/s | Cascade ÷ dlt |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['size']} | {_num(r['cascade'])} | {_num(r['dlt'])} | {r['ratio']:.2f}x |"
              for r in rows]
    return lines


def _target_table(figures: list[Figure]) -> list[str]:
    rows = target_rows(figures)
    if not rows:
        return []
    lines = ["", "| target | measured | met |", "| --- | ---: | --- |"]
    for r in rows:
        shown = f"{r['measured']:.2f}x" if "dlt" in r["target"] else _num(r["measured"])
        lines.append(f"| {r['target']} | {shown} ({r['note']}) | {'yes' if r['met'] else 'no'} |")
    return lines


def _hygiene_table(hygiene: dict[str, list[dict[str, Any]]]) -> list[str]:
    if not hygiene:
        return []
    lines = ["", "| system | table | snapshots | data files | avg file KiB |",
             "| --- | --- | ---: | ---: | ---: |"]
    for system, tables in hygiene.items():
        lines += [f"| {system} | {t['table']} | {t['snapshots']} | {t['data_files']} "
                  f"| {t['avg_file_kib']:.1f} |" for t in tables]
    return lines


def _pct(share: float) -> str:
    return "—" if math.isnan(share) else f"{100 * share:.1f} %"


def _chain_tables(figures: list[Figure]) -> list[str]:
    chain = [f for f in figures if f["benchmark"] == "chain" and _breakdowns(f)]
    if not chain:
        return []
    lines = ["", ("| chain run | stage | runs | wall min s | wall median s | share of parent "
                 "(median) | task runs | in task runs s (median) |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in chain:
        lines += [f"| {r['size']} | {r['stage']} | {r['runs']} | {r['wall_s_min']:.2f} "
                  f"| {r['wall_s_median']:.2f} | {_pct(r['share_median'])} "
                  f"| {r['task_runs_median']:.0f} | {r['in_task_runs_s_median']:.2f} |"
                  for r in chain_stage_rows(f)]
    lines += ["", "| chain run | figure | min | median | of parent wall (median) |",
              "| --- | --- | ---: | ---: | ---: |"]
    for f in chain:
        for r in chain_overhead_rows(f):
            digits = 0 if r["figure"] in _COUNTS else 2
            unit = "" if r["figure"] in _COUNTS else " s"
            lines.append(f"| {r['size']} | {r['label']} | {_num(r['min'], digits)}{unit} "
                         f"| {_num(r['median'], digits)}{unit} | {_pct(r['share_median'])} |")
    return lines


def _load(la: list[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in la) if la else "?"


def _runs_table(result: dict[str, Any]) -> list[str]:
    """When each benchmark ran, for how long, under what load, from what code."""
    runs = _runs_meta(result)
    if not runs:
        return []
    base = result["meta"]["machine"].get("versions", {})
    lines = ["", ("| benchmark | started (UTC) | wall s | load average (1/5/15 min) start → end "
                  "| code | versions |"), "| --- | --- | ---: | --- | --- | --- |"]
    for name, m in runs.items():
        wall = (_num(m["wall_s"]) if m.get("wall_s") is not None
                else f"{_num(m.get('suite_wall_s') or float('nan'))} (whole suite run)")
        differ = {k: v for k, v in (m.get("versions") or {}).items() if v and base.get(k) != v}
        shown = ", ".join(f"{k} {v}" for k, v in differ.items()) or "as above"
        if m.get("python") and m["python"] != result["meta"]["machine"].get("python"):
            shown = f"Python {m['python']}; {shown}"
        lines.append(f"| {name} | {m.get('started_at') or '?'} | {wall} "
                     f"| {_load(m.get('load_average_start'))} → {_load(m.get('load_average_end'))} "
                     f"| {m.get('git') or '?'} | {shown} |")
    return lines


def _per_site_tables(result: dict[str, Any]) -> list[str]:
    """Per scale run with several sites: the cost of each tenth of its sites, in order,
    as the tables accumulate snapshots."""
    lines: list[str] = []
    for label, per_site in per_site_runs(result):
        rows = per_site_rows(per_site)
        title = (f"Per-site cost as the lakehouse grows ({label}; means over each group "
                 "of sites, RSS and tables after its last site):")
        lines += ["", title, "",
                  ("| sites | wall s / site | CPU s / site | rows/s | snapshots per table "
                   "| raw.entries metadata KiB | RSS MiB | peak RSS MiB |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            span = str(r["first"]) if r["first"] == r["last"] else f"{r['first']}–{r['last']}"
            lines.append(f"| {span} | {r['seconds_per_site']:.1f} | {r['cpu_s_per_site']:.1f} "
                         f"| {_num(r['rows_per_s'])} | {r['snapshots']:,} "
                         f"| {_num(r['metadata_kib'])} | {_num(r['rss_mib'])} "
                         f"| {_num(r['peak_rss_mib'])} |")
        if len(rows) > 1 and rows[0]["cpu_s_per_site"] > 0:
            growth = rows[-1]["cpu_s_per_site"] / rows[0]["cpu_s_per_site"]
            lines.append(f"\nCPU per site, last group ÷ first: {growth:.2f}x.")
    return lines


def _simulator_table(figures: list[Figure]) -> list[str]:
    runs = [(f["size"], r["simulator"]) for f in figures if f["benchmark"] == "scale"
            for r in f.get("runs", []) if "simulator" in r]
    if not runs:
        return []
    lines = ["", ("| scale run | simulator RSS max MiB | warming process peak MiB | sites "
                  "generated | generating CPU s | child waited s | days not warmed |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {size} | {_num(m['rss_max_mib'])} | {_num(m['worker_peak_rss_mib'])} "
              f"| {m['sites_generated']:.0f} | {m['generate_cpu_s']:.1f} | {m['waited_s']:.1f} "
              f"| {m['misses']:,} |" for size, m in runs]
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """The run as markdown: machine line, when and under what load each benchmark ran,
    figures, ratios, targets, chain stages and overhead, per-site cost of scale runs,
    Iceberg hygiene."""
    meta = result["meta"]
    machine = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    merged = meta.get("merged_from", [])
    if len(merged) > 1:
        when = (f"merged from the runs started {', '.join(str(m) for m in merged)} "
                "(each benchmark's run below)")
        head = [(f"{machine['cores']} cores, {machine['memory_gib']} GiB, {machine['cpu']}; "
                 f"Python {machine['python']}; {versions}; {when}."), ""]
    else:
        load = " → ".join("/".join(f"{x:.2f}" for x in la)
                          for la in (machine["load_average"], meta.get("load_average_end")) if la)
        head = [(f"{machine['cores']} cores, {machine['memory_gib']} GiB, {machine['cpu']}; "
                f"load average (1/5/15 min) {load}; Python {machine['python']}; {versions}; "
                f"{meta['started_at']}, {meta.get('wall_s', 0):.0f} s in all."), ""]
    runs = _runs_table(result)
    body = (([*runs[1:], ""] if runs else []) + _figures_table(result["figures"])
            + _ratio_table(result["figures"]) + _target_table(result["figures"])
            + _chain_tables(result["figures"]) + _simulator_table(result["figures"])
            + _per_site_tables(result) + _hygiene_table(result.get("hygiene", {})))
    notes = [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(head + body + (["", *notes] if notes else [])) + "\n"
