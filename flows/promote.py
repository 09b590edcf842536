"""promote: atomic merge of a validated branch into main, tag, then delete the branch."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger

from tasks import timeouts
from tasks.branches import MAIN
from tasks.events import Promotion, emit_promoted, promoted_by
from tasks.profile import current_profile
from tasks.results import PromoteResult


def promoted_tag(branch: str, taken: set[str]) -> str:
    """The tag a promote leaves on main: ``promoted-<branch without run->``, made unique
    with a UTC timestamp when a branch of the same name was promoted before."""
    name = "promoted-" + branch.removeprefix("run-")
    if name not in taken:
        return name
    return f"{name}-{datetime.now(UTC):%Y%m%d%H%M%S%f}"


@flow(name="promote", flow_run_name="promote {branch}",
      timeout_seconds=timeouts.PROMOTE)
def promote(branch: str, expected_main_hash: str | None = None,
            delete_branch: bool = True) -> PromoteResult:
    """Merge ``branch`` into main atomically, tag the result, delete the branch.

    Args:
        branch: a validated branch.
        expected_main_hash: main's hash when the branch was validated; the merge is
            refused (``BranchConflict``, main unchanged) if main has moved since.
        delete_branch: delete the branch after a successful merge (default).
    """
    logger = get_run_logger()
    branches = current_profile().lakehouse.branches
    tag_name = promoted_tag(branch, {r.name for r in branches.list_refs()})
    result = branches.merge(branch, into=MAIN, expected_hash=expected_main_hash, tag=tag_name)
    tag = branches.ref(tag_name)
    if delete_branch:
        branches.delete_branch(branch)
    logger.info("promoted %s into main: %d tables moved, main %s → %s, tagged %s",
                branch, len(result.tables), result.hash_before, result.hash_after, tag.name)
    emit_promoted(Promotion(branch, tag.name, result.hash_before, result.hash_after,
                            tuple(result.tables), promoted_by()))
    return PromoteResult(branch=branch, tag=tag.name, tables=list(result.tables),
                         main_before=result.hash_before, main_after=result.hash_after)
