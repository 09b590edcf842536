"""Where a whole-chain run's wall time went: stages, task runs and Prefect's own share.

Pure functions over plain dicts (times as POSIX seconds), so the arithmetic is tested on
hand-written runs. The input is what the chain benchmark read back from the Prefect API::

    {"launched_at": 100.0, "returned_at": 190.0,
     "parent": {"id": "p", "name": "daily", "start": 130.0, "end": 185.0},
     "flow_runs": [{"id": "b", "name": "build_branch", "parent": "p", "start": 150.0,
                    "end": 170.0, "parent_task_run_id": "t9"}, ...],
     "task_runs": [{"id": "t1", "name": "ingest-window", "flow_run_id": "p",
                    "start": 131.0, "end": 140.0, "total_run_time": 9.0}, ...],
     "samples": [[131.02, 0.02, "cascade"], ...]}

Definitions (``DEFINITIONS``, also printed with the results):

- *parent wall*: the parent flow run's start → end (Running → Completed) as the API
  recorded them.
- *stage*: a direct subflow run of the parent (build_branch, validate, promote, publish),
  start → end; the parent's own task runs (branch, profile, ingest windows) form the
  stage ``ingest``, from the first one's start to the last one's end.
- *start-up*: process launch → parent start (interpreter, imports, the ephemeral API
  server, creating the flow run); *tail*: parent end → the flow call returning. When the
  run says when the flows were imported (``imported_at``), start-up splits into
  *imports* (launch → imported) and *API start* (imported → parent start: the ephemeral
  API server starting, the flow run created and set Running).
- *between stages*: parent wall minus the union of the stages' intervals.
- *outside task runs*: parent wall minus the union of every task run's running interval
  (all depths; a subflow's placeholder task run is not counted). An upper bound on
  Prefect's overhead: Cascade code that runs in a flow body rather than a task (plain dbt
  in build_branch, promote's merge, publish's mart reads) falls in it too.
- *sampled*: the process's threads sampled every 10 ms during the parent wall; a sample
  counts as Cascade when any thread runs code of ``tasks/``, ``flows/`` or dbt (with the
  libraries they call), as Prefect when none does and some thread runs Prefect's code
  (with the libraries it calls; a Prefect thread using under 1 % of a CPU and not waiting
  on the network is asleep, not running), and as waiting otherwise. Waiting includes
  Prefect's asynchronous API calls (its event-loop thread in ``select`` while the calling
  thread waits), so the time spent outside our code lies between *Prefect only* and
  *Prefect only* + *waiting*.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

__all__ = ["DEFINITIONS", "INGEST_STAGE", "chain_breakdown", "sample_split", "union_seconds"]

INGEST_STAGE: Final = "ingest"
Interval = tuple[float, float]

DEFINITIONS: Final = (
    ("chain figures: parent wall = the parent flow run's start → end as the Prefect API "
     "recorded them; a stage = a direct subflow run (start → end), plus `ingest` = the "
     "parent's own task runs, first start → last end; share = stage wall ÷ parent wall "
     "(stages run one after another, so the shares and `between stages` add up to 100 %)"),
    ("start-up = process launch → parent start (interpreter, imports, Prefect's ephemeral API "
     "server, flow-run creation) = imports (launch → flows imported) + API start (→ parent "
     "start: the ephemeral API server starting, the flow run created and set Running); "
     "tail = parent end → the flow call returning"),
    ("between stages = parent wall − union of the stage intervals: the parent's own "
     "orchestration and body code between stages"),
    ("outside task runs = parent wall − union of all task runs' running intervals (every "
     "depth, subflow placeholders excluded): an upper bound on Prefect overhead, since "
     "Cascade code run in a flow body (plain dbt in build_branch, promote, publish's reads) "
     "is in it too"),
    ("sampled (every 10 ms, all threads): Cascade = some thread in tasks/, flows/ or dbt "
     "(and what they call); Prefect only = no thread in our code, some in Prefect's "
     "(running, or waiting for the API's answer; a Prefect thread asleep, such as the "
     "flow-run heartbeat, counts as waiting); waiting = neither, which includes Prefect's "
     "asynchronous API calls (its event-loop thread in select while the caller waits). So "
     "the time outside our code lies between `Prefect only` and `Prefect only` + "
     "`waiting`"),
)


def union_seconds(intervals: Iterable[Interval], within: Interval | None = None) -> float:
    """Length of the union of ``intervals``, each first clipped to ``within`` if given."""
    spans = []
    for lo, hi in intervals:
        if within is not None:
            lo, hi = max(lo, within[0]), min(hi, within[1])
        if hi > lo:
            spans.append((lo, hi))
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def sample_split(samples: Iterable[list[Any] | tuple[float, float, str]],
                 window: Interval) -> dict[str, float]:
    """Seconds sampled as ``cascade``, ``prefect`` and ``waiting`` inside ``window``.

    A sample ``(t, dt, state)`` stands for the ``dt`` seconds before ``t``.
    """
    split = {"cascade": 0.0, "prefect": 0.0, "waiting": 0.0}
    for t, dt, state in samples:
        covered = min(t, window[1]) - max(t - dt, window[0])
        if covered > 0:
            split[state if state in split else "waiting"] += covered
    return split


def _span(runs: list[dict[str, Any]]) -> Interval:
    return min(r["start"] for r in runs), max(r["end"] for r in runs)


def _stages(parent: dict[str, Any], flow_runs: list[dict[str, Any]],
            tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each stage's intervals (a stage run more than once, after a conflict, adds up).

    The ingest stage is the span of the parent's own tasks that start before its first
    subflow: the tasks a parent runs after the chain (run summary, events) are not ingest.
    """
    stages: dict[str, dict[str, Any]] = {}
    first_child = min((f["start"] for f in flow_runs if f["parent"] == parent["id"]),
                      default=None)
    own = [t for t in tasks if t["flow_run_id"] == parent["id"]
           and (first_child is None or t["start"] < first_child)]
    if own:
        stages[INGEST_STAGE] = {"intervals": [_span(own)], "flow_ids": {parent["id"]},
                                "task_ids": {t["id"] for t in own}}
    children = {f["id"]: f for f in flow_runs}
    for run in sorted((f for f in flow_runs if f["parent"] == parent["id"]),
                      key=lambda f: f["start"]):
        stage = stages.setdefault(run["name"], {"intervals": [], "flow_ids": set()})
        stage["intervals"].append((run["start"], run["end"]))
        stage["flow_ids"] |= _descendants(run["id"], children)
    return stages


def _descendants(root: str, runs: dict[str, dict[str, Any]]) -> set[str]:
    found, grew = {root}, True
    while grew:
        more = {i for i, r in runs.items() if r["parent"] in found} - found
        found |= more
        grew = bool(more)
    return found


def chain_breakdown(run: dict[str, Any]) -> dict[str, Any]:
    """Stage walls and shares, run counts and the overhead figures of one chain run.

    Returns seconds under plain keys (``parent_wall_s``, ``startup_s``, …) and
    ``stages``: {name: {"wall_s", "share", "runs", "task_runs", "in_task_runs_s"}}, plus
    each stage's ``peak_rss_mib`` when the run carries a memory timeline (``rss``: [[POSIX
    s, MiB], ...]).
    """
    parent, flows = run["parent"], run["flow_runs"]
    window = (parent["start"], parent["end"])
    wall = window[1] - window[0]
    placeholders = {f.get("parent_task_run_id") for f in flows}
    tasks = [t for t in run["task_runs"] if t["id"] not in placeholders
             and t.get("start") is not None and t.get("end") is not None]
    stages, spans = {}, []
    for name, stage in _stages(parent, flows, tasks).items():
        spans += stage["intervals"]
        mine = [t for t in tasks if t["flow_run_id"] in stage["flow_ids"]
                and ("task_ids" not in stage or t["id"] in stage["task_ids"])]
        stage_wall = sum(hi - lo for lo, hi in stage["intervals"])
        stages[name] = {"wall_s": stage_wall, "share": stage_wall / wall if wall > 0 else 0.0,
                        "runs": len(stage["intervals"]), "task_runs": len(mine),
                        "in_task_runs_s": union_seconds((t["start"], t["end"]) for t in mine)}
        inside = [mib for at, mib in run.get("rss") or ()
                  if any(lo <= at <= hi for lo, hi in stage["intervals"])]
        if inside:  # a stage shorter than the sampling interval has no figure
            stages[name]["peak_rss_mib"] = max(inside)
    in_tasks = union_seconds(((t["start"], t["end"]) for t in tasks), window)
    out: dict[str, Any] = {
        "process_s": run["returned_at"] - run["launched_at"],
        "startup_s": parent["start"] - run["launched_at"],
        "tail_s": run["returned_at"] - parent["end"],
        "parent_wall_s": wall,
        "flow_runs": 1 + len(flows),
        "task_runs": len(tasks),
        "subflow_placeholder_task_runs": len(run["task_runs"]) - len(tasks),
        "task_total_run_time_s": sum(t.get("total_run_time", 0.0) for t in tasks),
        "between_stages_s": wall - union_seconds(spans, window),
        "in_task_runs_s": in_tasks,
        "outside_task_runs_s": wall - in_tasks,
        "stages": stages,
    }
    if run.get("imported_at") is not None:
        out["imports_s"] = run["imported_at"] - run["launched_at"]
        out["api_start_s"] = parent["start"] - run["imported_at"]
    if run.get("samples"):
        split = sample_split(run["samples"], window)
        out |= {f"sampled_{k}_s": v for k, v in split.items()}
    return out
