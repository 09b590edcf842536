"""Planning a branch's build, and recording it: what to rebuild, and what was rebuilt.

``plan_build`` decides whether the build rebuilds everything (asked for; no earlier build
on the branch's history; the dbt project changed since the branch's models were built) or
only what the pending change rows touch, and numbers the build. ``finish_build`` runs once
dbt is done and the models have landed: it keeps the site-level values the next build
compares against (``build.site_parameters``), stamps the change rows the build consumed,
and appends the build's record (``tasks.build_log``) last.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import polars as pl
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue

from tasks.build_log import (
    BuildRecord,
    BuildStatus,
    Grain,
    ModelBuild,
    TouchedSet,
    latest_build,
    table_locations,
    write_build,
)
from tasks.build_rounds import (
    DEFAULT_ROUND_ROWS,
    ROUND_ROWS_ENV,
    plan_rounds,
    round_rows,
    round_vars,
    source_rows_by_site,
)
from tasks.changes import pending_changes, stamp_changes
from tasks.dbt_runner import project_checksum
from tasks.errors import BranchError
from tasks.lakehouse import read_table, replace_rows
from tasks.tables import CHANGES, SITE_PARAMETERS

__all__ = [
    "INCOMPLETE",
    "BuildPlan",
    "build_status",
    "failure_hint",
    "finish_build",
    "model_builds",
    "plan_build",
    "read_touched",
    "start_build",
]

logger = logging.getLogger("cascade.build")

_BUILT: Final = "build.int_site_parameters"
# dbt's options for a build that adds to the models already built (an incremental build, a
# later round). Unit tests check the models' logic on fixed rows, which only a change of the
# project changes, and such a change rebuilds everything. Source tests check raw rows that
# ingest's contracts checked as they landed, each over the whole table, so their cost would
# follow the history. Both run on every build of everything.
_ADDING: Final = ("--exclude", "resource_type:unit_test", "source:*")
# models_checksum of a build in rounds that failed after a round wrote its models: the
# models then hold some sites rebuilt and others not, and only a full build mends them
INCOMPLETE: Final = "incomplete"
MEMORY_LIMIT_ENV: Final = "CASCADE_DUCKDB_MEMORY_LIMIT"  # read by dbt/profiles.yml
_MODEL_ERRORS: Final = ("error", "runtime error", "skipped")
_TEST_FAILURES: Final = ("fail", "error", "runtime error")


@dataclass(frozen=True)
class BuildPlan:
    """What a build of ``branch`` will do, decided before dbt runs."""

    branch: str
    build_seq: int
    build_id: str
    full_refresh: bool
    reason: str  # why everything is rebuilt ("" when incremental)
    project_checksum: str
    models_checksum: str  # the project the branch's models were last built with
    existing_tables: frozenset[str]
    changes_location: str | None  # audit.changed_partitions as planned
    pending: pl.DataFrame = field(compare=False, repr=False)
    consume: bool = True  # stamp the pending changes (False: a partial `select` build)
    select: str | None = None
    rounds: tuple[tuple[str, ...], ...] = ()  # sites per round of a full build (tasks.build_rounds)

    @property
    def dbt_args(self) -> list[str]:
        """dbt's options for this build: everything, or what adds to the models built."""
        return ["--full-refresh"] if self.full_refresh else list(_ADDING)

    def dbt_invocations(self) -> list[list[str]]:
        """The dbt command lines of this build: one, or one per round of sites (the rounds
        after the first add to the models the first one built)."""
        if not self.rounds:
            return [["build", *self.dbt_args,
                     *(["--select", self.select] if self.select else [])]]
        return [["build", *(self.dbt_args if i == 0 else _ADDING), *round_vars(sites)]
                for i, sites in enumerate(self.rounds)]


def plan_build(catalog: Catalog, branch: str, full_refresh: bool = False,
               select: str | None = None) -> BuildPlan:
    """Number the build and decide whether it rebuilds everything, and why.

    A ``select`` builds the selected models whole and leaves the change rows pending (the
    models it leaves out have not seen them).
    """
    previous = latest_build(catalog)
    checksum = project_checksum()
    built_with = previous.models_checksum if previous is not None else ""
    if full_refresh:
        reason = "asked for (full_refresh)"
    elif select:
        reason = f"a partial build ({select}) rebuilds the models it selects whole"
    elif previous is None:
        reason = "no earlier build in this branch's history"
    elif built_with == INCOMPLETE:
        reason = (f"build {previous.build_seq} stopped part-way through its rounds of sites, "
                  "after some of them were rebuilt")
    elif built_with != checksum:
        reason = (f"the dbt project changed since the models were built "
                  f"({built_with or 'unknown'} -> {checksum})")
    else:
        reason = ""
    existing = frozenset(_tables(catalog))
    changes = (catalog.load_table(CHANGES.identifier).metadata_location
               if CHANGES.identifier in existing else None)
    rounds = plan_rounds(source_rows_by_site(catalog), round_rows()) \
        if reason and not select else ()
    return BuildPlan(
        branch=branch, build_seq=(previous.build_seq + 1) if previous else 1,
        build_id=uuid.uuid4().hex, full_refresh=bool(reason), reason=reason,
        project_checksum=checksum, models_checksum=built_with, existing_tables=existing,
        changes_location=changes, pending=pending_changes(catalog), consume=not select,
        select=select, rounds=rounds)


def _tables(catalog: Catalog) -> list[str]:
    out = []
    for (namespace,) in catalog.list_namespaces():
        out += [".".join(t) for t in catalog.list_tables(namespace)]
    return out


def build_status(results: list[dict[str, Any]]) -> BuildStatus:
    """``error`` when a model did not build (nothing lands), ``tests_failed`` when a test
    failed, else ``success``."""
    models = [r for r in results if r["resource_type"] == "model"]
    if not models or any(r["status"] in _MODEL_ERRORS for r in models):
        return "error"
    if any(r["status"] in _TEST_FAILURES for r in results):
        return "tests_failed"
    return "success"


def model_builds(plan: BuildPlan, results: list[dict[str, Any]]) -> dict[str, ModelBuild]:
    """How each model was built (grain, touched set, whole or not), from dbt's results.

    A model is built whole on a full refresh or when the branch had no table for it: the
    rule ``cascade_builds_whole`` applies in dbt (macros/touched.sql).
    """
    out = {}
    for r in results:
        if r["resource_type"] != "model" or r["status"] in _MODEL_ERRORS:
            continue
        identifier = f"{r['schema']}.{r['name']}"
        grain: Grain = r["grain"] if r["materialized"] == "partitioned" else "table"
        whole = grain == "table" or plan.full_refresh \
            or identifier not in plan.existing_tables
        out[identifier] = ModelBuild(grain, r["touched"], whole)
    return out


def read_touched(catalog: Catalog, models: dict[str, ModelBuild],
                 full_refresh: bool) -> dict[str, TouchedSet]:
    """The ranges of every touched set the models used, as the build left them."""
    sets = {m.touched for m in models.values() if m.touched}
    if full_refresh:
        return {name: TouchedSet(None) for name in sets}
    return {name: TouchedSet.from_rows(read_table(catalog, f"build.{name}").iter_rows(named=True))
            for name in sorted(sets)}


def start_build(catalog: Catalog, plan: BuildPlan) -> None:
    """Before a build in rounds writes anything: record it as failed and incomplete.

    Its rounds write the branch's models one after another, so a process that stops
    between them (killed, out of memory) leaves some sites rebuilt and others not. This
    record says so to ``validate`` (which refuses the branch) and to the next build (which
    rebuilds everything); ``finish_build`` writes the build's real record in its place.
    """
    if not plan.rounds:
        return
    write_build(catalog, BuildRecord(
        build_seq=plan.build_seq, build_id=plan.build_id, branch=plan.branch,
        built_at=datetime.now(UTC), full_refresh=plan.full_refresh, reason=plan.reason,
        project_checksum=plan.project_checksum, models_checksum=INCOMPLETE, status="error",
        n_failed=1, failures=(
            f"build {plan.build_seq} did not finish its {len(plan.rounds)} rounds of sites "
            "(the process stopped): run build_branch again, it rebuilds everything",),
        tables=table_locations(catalog)))


def finish_build(catalog: Catalog, plan: BuildPlan, results: list[dict[str, Any]],
                 models: dict[str, ModelBuild], touched: dict[str, TouchedSet],
                 seconds: dict[str, float], rounds_written: int = 0) -> BuildRecord:
    """Keep the site-level values, consume the changes and append the build's record.

    A build in rounds (``plan.rounds``) that fails after ``rounds_written`` rounds wrote
    their models is recorded as incomplete, so the next build rebuilds everything.

    Raises:
        BranchError: the change rows moved while the build ran (another writer on the
            branch); nothing is consumed and the build must run again.
    """
    status = build_status(results)
    landed = status != "error"
    consumed = 0
    if landed and plan.consume:
        if _BUILT in models:
            _keep_site_parameters(catalog)
        consumed = _consume(catalog, plan)
    failures = [f"{r['unique_id']}: {r['status']} {r['message'] or ''}".strip()
                + failure_hint(r["message"] or "")
                for r in results if r["status"] in (*_MODEL_ERRORS, *_TEST_FAILURES)
                and r["status"] != "skipped"]
    record = BuildRecord(
        build_seq=plan.build_seq, build_id=plan.build_id, branch=plan.branch,
        built_at=datetime.now(UTC), full_refresh=plan.full_refresh, reason=plan.reason,
        project_checksum=plan.project_checksum,
        models_checksum=_models_checksum(plan, landed, rounds_written),
        status=status,
        n_models=sum(r["resource_type"] == "model" for r in results),
        n_tests=sum(r["resource_type"] in ("test", "unit_test") for r in results),
        n_failed=len(failures), n_changes=consumed, failures=tuple(failures[:50]),
        nodes={r["unique_id"]: r["status"] for r in results},
        models=models if landed else {}, touched=touched if landed else {},
        tables=table_locations(catalog), seconds=seconds)
    write_build(catalog, record)
    return record


def failure_hint(message: str) -> str:
    """What the user can do about a dbt failure whose cause is the machine, not the data."""
    if "Out of Memory" in message:  # DuckDB's OutOfMemoryException
        return (f" (DuckDB ran out of memory: raise {MEMORY_LIMIT_ENV}, default 2GB, or lower "
                f"{ROUND_ROWS_ENV}, default {DEFAULT_ROUND_ROWS:_}, so that a build of "
                "everything runs in smaller rounds of sites)")
    return ""


def _models_checksum(plan: BuildPlan, landed: bool, rounds_written: int) -> str:
    """The project the branch's models are built with once this build is done."""
    if landed and plan.consume:
        return plan.project_checksum
    if plan.rounds and rounds_written:
        return INCOMPLETE
    return plan.models_checksum


def _keep_site_parameters(catalog: Catalog) -> None:
    """Copy int_site_parameters (one row per site) to the table the next build reads."""
    rows = read_table(catalog, _BUILT).select(SITE_PARAMETERS.schema.names())
    replace_rows(catalog, SITE_PARAMETERS, rows, AlwaysTrue())


def _consume(catalog: Catalog, plan: BuildPlan) -> int:
    now = (catalog.load_table(CHANGES.identifier).metadata_location
           if catalog.table_exists(CHANGES.identifier) else None)
    if now != plan.changes_location:
        raise BranchError(
            f"{CHANGES.identifier} on {plan.branch} changed while build {plan.build_seq} ran "
            "(something wrote to the branch meanwhile): run build_branch again")
    return stamp_changes(catalog, plan.pending, plan.build_seq)

