"""promote: atomic merge of a validated branch into main, tag, then delete the branch."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.branches import MAIN
from tasks.runtime import current_lakehouse


def promoted_tag(branch: str) -> str:
    """The tag a promote leaves on main: ``promoted-<branch without run->``."""
    return "promoted-" + branch.removeprefix("run-")


@flow(name="promote", flow_run_name="promote {branch}")
def promote(branch: str, expected_main_hash: str | None = None,
            delete_branch: bool = True) -> dict[str, object]:
    """Merge ``branch`` into main atomically, tag the result, delete the branch.

    Args:
        branch: a validated branch.
        expected_main_hash: main's hash when the branch was validated; the merge is
            refused (``BranchConflict``, main unchanged) if main has moved since.
        delete_branch: delete the branch after a successful merge (default).
    """
    logger = get_run_logger()
    branches = current_lakehouse().branches
    result = branches.merge(branch, into=MAIN, expected_hash=expected_main_hash)
    tag = branches.tag(promoted_tag(branch), MAIN)
    if delete_branch:
        branches.delete_branch(branch)
    logger.info("promoted %s into main: %d tables moved, main %s → %s, tagged %s",
                branch, len(result.tables), result.hash_before, result.hash_after, tag.name)
    return {"branch": branch, "tag": tag.name, "tables": result.tables,
            "main_before": result.hash_before, "main_after": result.hash_after}
