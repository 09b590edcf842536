"""Planning a run's ingestion: finding the branch an earlier attempt left."""

from __future__ import annotations

from pathlib import Path

from tasks.fanout import find_run_branch
from tasks.profile import embedded_lakehouse


def test_a_retried_run_finds_the_branch_its_first_attempt_left(cascade_home: Path) -> None:
    branches = embedded_lakehouse().branches
    branches.create_branch("run-backfill-20240101000000-abcd1234")
    branches.create_branch("run-daily-20240101000000-abcd1234")
    assert find_run_branch(branches, "backfill", "abcd1234") == \
        "run-backfill-20240101000000-abcd1234"
    fresh = find_run_branch(branches, "backfill", "ffff0000")
    assert fresh.startswith("run-backfill-") and fresh.endswith("-ffff0000")
    assert not any(r.name == fresh for r in branches.list_refs())
