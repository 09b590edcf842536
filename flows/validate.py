"""validate: audit a branch (dbt tests, mart contracts, reconciliation) before promotion."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks import timeouts
from tasks.branches import BranchCatalog
from tasks.errors import ValidationFailed
from tasks.profile import current_profile
from tasks.redaction import redact
from tasks.results import ValidationResult
from tasks.settings import load_lakehouse_settings
from tasks.validation import Check, check_dbt_results, check_marts, reconcile_raw, render_markdown


@task(name="check-dbt-results", task_run_name="dbt results of {branch}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _dbt_checks(branches: BranchCatalog, branch: str) -> list[Check]:
    build_dir = load_lakehouse_settings().home / "build" / branch
    return check_dbt_results(build_dir, branches.ref(branch).hash)


@task(name="check-mart-contracts", task_run_name="mart contracts on {branch}",
      cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _mart_checks(branches: BranchCatalog, branch: str) -> list[Check]:
    return check_marts(branches.catalog(branch))


@task(name="reconcile-raw", task_run_name="reconcile raw on {branch}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.VALIDATE)
def _reconcile(branches: BranchCatalog, branch: str) -> list[Check]:
    return reconcile_raw(branches.catalog(branch))


def _artifact_key(branch: str) -> str:
    return "validation-" + "".join(c if c.isalnum() else "-" for c in branch.lower())[:80]


@flow(name="validate", flow_run_name="validate {branch}",
      timeout_seconds=timeouts.VALIDATE)
def validate(branch: str) -> ValidationResult:
    """Run every audit check on ``branch``; raise ``ValidationFailed`` if any fails.

    The branch is never changed or deleted here: on failure it is kept for inspection.
    Returns the main hash seen, so ``promote`` can refuse if main moved since.

    Args:
        branch: the run branch to audit (built by ``build_branch``), e.g.
            ``run-backfill-20250301020000-1a2b3c4d``.
    """
    branches = current_profile().lakehouse.branches
    main_hash = branches.ref("main").hash
    checks = [*_dbt_checks(branches, branch), *_mart_checks(branches, branch),
              *_reconcile(branches, branch)]
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
