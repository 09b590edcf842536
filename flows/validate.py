"""validate: audit a branch (dbt results, mart contracts, reconciliation, invariants)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import timeouts
from tasks.branches import BranchCatalog
from tasks.build_log import BuildRecord
from tasks.errors import ValidationFailed
from tasks.profile import current_profile
from tasks.redaction import redact
from tasks.results import ValidationResult
from tasks.validation import (
    Check,
    check_build,
    check_invariants,
    check_marts,
    reconcile_raw,
    render_markdown,
)


@task(name="check-dbt-results", task_run_name="build record of {branch}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _build_checks(branches: BranchCatalog, branch: str
                  ) -> tuple[list[Check], BuildRecord | None]:
    return check_build(branches.catalog(branch))


@task(name="check-mart-contracts", task_run_name="mart contracts on {branch}",
      cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _mart_checks(branches: BranchCatalog, branch: str, record: BuildRecord | None) -> list[Check]:
    return check_marts(branches.catalog(branch), record)


@task(name="reconcile-raw", task_run_name="reconcile raw on {branch}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _reconcile(branches: BranchCatalog, branch: str, record: BuildRecord | None) -> list[Check]:
    return reconcile_raw(branches.catalog(branch), record)


@task(name="check-invariants", task_run_name="model invariants on {branch}",
      cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _invariants(branches: BranchCatalog, branch: str) -> list[Check]:
    return check_invariants(branches.catalog(branch))


def _artifact_key(branch: str) -> str:
    return "validation-" + "".join(c if c.isalnum() else "-" for c in branch.lower())[:80]


@flow(name="validate", flow_run_name="validate {branch}", timeout_seconds=timeouts.VALIDATE)
def validate(branch: str) -> ValidationResult:
    """Run every audit check on ``branch``; raise ``ValidationFailed`` if any fails.

    Everything it reads is on the branch (the latest build's record in ``audit.build_log``,
    the marts, raw and the ingest log), so it runs in any process or pod. Its cost follows
    what that build changed: the marts' rebuilt partitions, the raw days the build consumed
    changes of, and whole-table invariants from snapshot summaries.

    The branch is never changed or deleted here: on failure it is kept for inspection.
    Returns the main hash seen, so ``promote`` can refuse if main moved since.

    Args:
        branch: the run branch to audit (built by ``build_branch``), e.g.
            ``run-backfill-20250301020000-1a2b3c4d``.
    """
    branches = current_profile().lakehouse.branches
    main_hash = branches.ref("main").hash
    built, record = _build_checks(branches, branch)
    checks = [*built, *_mart_checks(branches, branch, record),
              *_reconcile(branches, branch, record), *_invariants(branches, branch)]
    report = render_markdown(branch, checks)
    create_markdown_artifact(redact(report), key=_artifact_key(branch),
                             description=f"validation of {branch}")
    failed = [c for c in checks if not c.passed]
    get_run_logger().info("validate %s: %d/%d checks passed", branch,
                          len(checks) - len(failed), len(checks))
    if failed:
        raise ValidationFailed(
            f"branch {branch!r} failed {len(failed)} check(s): "
            + "; ".join(f"{c.name} ({c.figure}) {c.detail}".strip() for c in failed)
            + ". Nothing was promoted; inspect the branch, then re-run validate or discard it."
        )
    return ValidationResult(branch=branch, main_hash=main_hash, checks=checks)
