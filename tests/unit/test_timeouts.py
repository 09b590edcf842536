"""Every flow, and every task that can run long, ends by itself: ``timeout_seconds`` is set."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from prefect import Flow, Task

import flows
from tasks import timeouts

LONG_TASKS = {"ingest-window", "reconcile-window", "plan-change-feed", "start-change-feed",
              "run-partition", "publish-marts", "publish-reports",
              "plan-build", "prepare-build-file", "land-models-in-iceberg", "record-build",
              "check-dbt-results", "check-mart-contracts", "reconcile-raw", "check-invariants",
              "plan-publish", "read-marts", "expire-snapshots", "remove-orphan-files"}


def _objects() -> list[object]:
    found: list[object] = []
    for module in pkgutil.iter_modules(flows.__path__):
        if module.name == "__main__":
            continue
        found.extend(vars(importlib.import_module(f"flows.{module.name}")).values())
    for name in ("ingest", "publish", "report", "build", "fanout", "change_feed"):
        found.extend(vars(importlib.import_module(f"tasks.{name}")).values())
    return found


def test_every_flow_has_a_timeout() -> None:
    found = {o.name: o.timeout_seconds for o in _objects() if isinstance(o, Flow)}
    assert {"ingest_day", "ingest_window", "build_branch", "validate", "promote", "publish",
            "maintain", "backfill", "daily", "reconcile"} <= set(found)
    assert all(seconds for seconds in found.values()), found


@pytest.mark.parametrize("name", sorted(LONG_TASKS))
def test_long_tasks_have_a_timeout(name: str) -> None:
    (task,) = {o for o in _objects() if isinstance(o, Task) and o.name == name}
    assert task.timeout_seconds is not None and task.timeout_seconds >= timeouts.MINUTE


def test_a_chain_outlasts_the_runs_it_is_made_of() -> None:
    steps = timeouts.BUILD + timeouts.VALIDATE + timeouts.PROMOTE + timeouts.PUBLISH
    assert steps <= timeouts.DAILY
    assert steps + timeouts.INGEST_WINDOW <= timeouts.BACKFILL
    assert timeouts.INGEST_WINDOW < timeouts.PARTITION_RUN  # the child's own limit hits first
