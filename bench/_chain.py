"""One whole-chain run (``daily`` or ``backfill``) in this process, read back from Prefect.

The suite starts a fresh interpreter per run with the embedded profile, the simulator's
URL and a ``PREFECT_HOME`` in the environment and no ``PREFECT_API_URL``, so the flow
talks to Prefect's ephemeral API server, started by this process. After the flow returns,
every flow run and task run under the parent is read back from that API with
``get_client`` and reduced by ``bench._overhead.chain_breakdown``. Meanwhile a sampler
thread records whether Cascade code or Prefect code was running (see ``_Sampler``).
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any, Final
from uuid import UUID

from bench._cascade import cpu_seconds, peak_rss_mib
from bench._overhead import chain_breakdown

__all__ = ["run_chain"]

REPO: Final = Path(__file__).resolve().parents[1]
_OURS: Final = (str(REPO / "tasks") + "/", str(REPO / "flows") + "/", "/dbt/", "/dbt_common/")
_PREFECT: Final = ("/prefect/", "/prefect_dbt/")
_WAITS: Final = {("threading.py", "wait"), ("threading.py", "_wait_for_tstate_lock"),
                 ("queue.py", "get"), ("selectors.py", "select"), ("thread.py", "_worker")}
_NETWORK: Final = ("/httpcore/", "/httpx/", "/h11/", "/anyio/", "/ssl.py", "/socket.py")
_READBACK_TIMEOUT_S: Final = 120.0


class _Sampler(threading.Thread):
    """Every ``interval`` s, classify the process: ``cascade`` when any thread runs our code,
    else ``prefect`` when any runs Prefect's, else ``waiting``.

    A thread's innermost frame that is ours or Prefect's decides for it (libraries count for
    whoever called them); a thread blocked in a wait (a lock, a queue, ``select``) counts
    for neither, and so does a thread in Prefect's code that used under 1 % of a CPU since
    the last sample unless it waits on the network (the API's answer): a sleeping loop
    such as the flow-run heartbeat is not overhead. Each sample stands for the time since
    the previous one; ``prefect_where`` keeps the Prefect-only samples with the innermost
    Prefect frame of one of the Prefect threads.
    """

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float, str]] = []
        self._stop_event = threading.Event()
        self._kinds: dict[str, str] = {}
        self._cpu: dict[int, float] = {}
        self.prefect_where: list[tuple[float, float, str]] = []  # Prefect-only: by frame

    def _kind(self, filename: str) -> str:
        kind = self._kinds.get(filename)
        if kind is None:
            kind = ("cascade" if any(p in filename for p in _OURS)
                    else "prefect" if any(p in filename for p in _PREFECT) else "")
            self._kinds[filename] = kind
        return kind

    def _thread_kind(self, frame: FrameType | None) -> tuple[str, str]:
        """The thread's kind, and where: the innermost frame of ours or Prefect's."""
        if frame is None or (Path(frame.f_code.co_filename).name, frame.f_code.co_name) in _WAITS:
            return "waiting", ""
        while frame is not None:
            kind = self._kind(frame.f_code.co_filename)
            if kind:
                where = frame.f_code.co_filename.rsplit("site-packages/", 1)[-1]
                return kind, f"{where}:{frame.f_code.co_name}"
            frame = frame.f_back
        return "waiting", ""

    def _idle(self, ident: int, frame: FrameType | None, dt: float) -> bool:
        """A thread that used under 1 % of a CPU since the last sample and is not waiting
        for a network answer (the API's, say): asleep, as in Prefect's heartbeat loop (a
        running thread starved by a loaded machine still gets far more)."""
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (OSError, OverflowError):
            return False
        used, self._cpu[ident] = cpu - self._cpu.get(ident, cpu), cpu
        network = frame is not None and any(m in frame.f_code.co_filename for m in _NETWORK)
        return used < 0.01 * dt and not network

    def run(self) -> None:
        me, last = threading.get_ident(), time.time()
        while not self._stop_event.wait(self.interval):
            dt = time.time() - last
            kinds = {}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    kind, where = self._thread_kind(frame)
                    if kind == "prefect" and self._idle(ident, frame, dt):
                        kind = "waiting"
                    kinds[kind] = where
            now = time.time()
            state = "cascade" if "cascade" in kinds else "prefect" if "prefect" in kinds \
                else "waiting"
            self.samples.append((now, now - last, state))
            if state == "prefect":
                self.prefect_where.append((now, now - last, kinds["prefect"]))
            last = now

    def stop(self) -> list[tuple[float, float, str]]:
        self._stop_event.set()
        self.join()
        return self.samples


def _call_flow(spec: dict[str, Any]) -> Any:
    from flows.pipeline import backfill, daily

    spec["imported_at"] = time.time()
    if spec["flow"] == "daily":
        return daily(day=date.fromisoformat(spec["day"]), dbt_node_tasks=spec["node_tasks"],
                     return_state=True)
    return backfill(start=date.fromisoformat(spec["start"]), end=date.fromisoformat(spec["end"]),
                    chunk_days=spec["chunk_days"], max_concurrency=spec["workers"],
                    dbt_node_tasks=spec["node_tasks"], return_state=True)


def _seconds(moment: Any) -> float | None:
    return moment.timestamp() if moment is not None else None


def _flow_dict(run: Any, names: dict[Any, str], client: Any,
               parent: str | None) -> dict[str, Any]:
    if run.flow_id not in names:
        names[run.flow_id] = client.read_flow(run.flow_id).name
    return {"id": str(run.id), "name": names[run.flow_id], "parent": parent,
            "parent_task_run_id": str(run.parent_task_run_id) if run.parent_task_run_id else None,
            "start": _seconds(run.start_time), "end": _seconds(run.end_time),
            "state": getattr(run, "state_name", None)}


def _read_subflows(client: Any, root: str, names: dict[Any, str]) -> list[dict[str, Any]]:
    """Every flow run below ``root``, each with the id of the flow run that called it."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    found: list[dict[str, Any]] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        kids = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(parent)])), limit=200)
        for kid in kids:
            found.append(_flow_dict(kid, names, client, parent))
            frontier.append(str(kid.id))
    return found


def _read_task_runs(client: Any, flow_ids: list[str]) -> list[dict[str, Any]]:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    out: list[dict[str, Any]] = []
    page = 200
    while True:
        got = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[UUID(i) for i in flow_ids])), limit=page,
            offset=len(out))
        out += [{"id": str(t.id), "name": t.name,
                 "flow_run_id": str(t.flow_run_id), "start": _seconds(t.start_time),
                 "end": _seconds(t.end_time), "state": getattr(t, "state_name", None),
                 "total_run_time": t.total_run_time.total_seconds()} for t in got]
        if len(got) < page:
            return out


def _read_back(flow_run_id: str) -> dict[str, Any]:
    """The parent, its subflows and all their task runs, once the API has recorded them all.

    Task-run states reach the API as events, after the flow returned: read until every task
    run has ended and two reads agree.
    """
    from prefect.client.orchestration import get_client

    names: dict[Any, str] = {}
    deadline, previous = time.monotonic() + _READBACK_TIMEOUT_S, None
    with get_client(sync_client=True) as client:
        while True:
            parent = _flow_dict(client.read_flow_run(UUID(flow_run_id)), names, client, None)
            flows = _read_subflows(client, flow_run_id, names)
            tasks = _read_task_runs(client, [flow_run_id, *(f["id"] for f in flows)])
            settled = all(t["end"] is not None for t in tasks) and all(
                f["end"] is not None for f in [parent, *flows])
            key = (len(flows), len(tasks))
            if (settled and key == previous) or time.monotonic() > deadline:
                return {"parent": parent, "flow_runs": flows, "task_runs": tasks,
                        "settled": settled}
            previous = key if settled else None
            time.sleep(1.0)


def run_chain(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the chain of ``spec`` and return its process wall time and breakdown.

    ``spec``: flow (``daily``/``backfill``), day or start/end (ISO), chunk_days, workers,
    node_tasks, launched_at (POSIX seconds when the suite started this process).
    """
    sampler = _Sampler()
    sampler.start()
    cpu = cpu_seconds()
    state = _call_flow(spec)
    returned_at = time.time()
    samples = sampler.stop()
    cpu = cpu_seconds() - cpu
    if not state.is_completed():
        raise RuntimeError(f"{spec['flow']} ended {state.name}: {state.message}")
    runs = _read_back(str(state.state_details.flow_run_id))
    breakdown = chain_breakdown({**runs, "launched_at": spec["launched_at"],
                                 "imported_at": spec["imported_at"],
                                 "returned_at": returned_at, "samples": samples})
    return {"seconds": returned_at - spec["launched_at"], "cpu_s": cpu,
            "peak_rss_mib": peak_rss_mib(), "breakdown": breakdown,
            "settled": runs["settled"], "samples": len(samples),
            "prefect_only_where": _top_frames(sampler.prefect_where, runs["parent"])}


def _top_frames(samples: list[tuple[float, float, str]], parent: dict[str, Any],
                top: int = 10) -> list[list[Any]]:
    """Prefect-only seconds inside the parent's wall, by frame, the largest ``top``."""
    seconds: dict[str, float] = {}
    for t, dt, where in samples:
        if parent["start"] <= t <= parent["end"]:
            seconds[where] = seconds.get(where, 0.0) + dt
    ranked = sorted(seconds.items(), key=lambda item: item[1], reverse=True)
    return [[where, round(secs, 2)] for where, secs in ranked[:top]]
