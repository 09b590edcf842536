"""The Nessie branch backend against the real Nessie: the same contract as the embedded one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import polars as pl
import pytest

from tasks.branches import MAIN
from tasks.errors import BranchConflict, BranchError, BranchExists, BranchNotFound
from tasks.lakehouse import read_table, replace_rows
from tasks.nessie import NessieBranchCatalog
from tasks.profile import stack_lakehouse
from tasks.tables import TableLayout

pytestmark = pytest.mark.stack

SCHEMA = pl.Schema({"site_id": pl.String(), "n": pl.Int64()})


@pytest.fixture
def nessie(stack_env: dict[str, str]) -> Iterator[tuple[NessieBranchCatalog, str]]:
    """The backend, a namespace of this test's own on main, and clean-up of its refs."""
    branches = stack_lakehouse().branches
    suffix = uuid.uuid4().hex[:8]
    namespace = f"contract_{suffix}"
    branches.catalog(MAIN).create_namespace(namespace)
    yield branches, namespace
    for ref in branches.list_refs():
        if suffix in ref.name:
            branches.delete_branch(ref.name)
    catalog = branches.catalog(MAIN)
    for table in catalog.list_tables(namespace):
        catalog.drop_table(table)
    catalog.drop_namespace(namespace)


def _write(branches: NessieBranchCatalog, ref: str, table: str, rows: list[int]) -> None:
    frame = pl.DataFrame({"site_id": ["x"] * len(rows), "n": rows}, schema=SCHEMA)
    from pyiceberg.expressions import AlwaysTrue

    replace_rows(branches.catalog(ref), TableLayout(table, SCHEMA, None, ""), frame, AlwaysTrue())


def _rows(branches: NessieBranchCatalog, ref: str, table: str) -> list[int]:
    return sorted(read_table(branches.catalog(ref), table).get_column("n").to_list())


def test_branch_isolation_diff_merge_tag_reset(nessie: tuple[NessieBranchCatalog, str]) -> None:
    branches, ns = nessie
    suffix = ns.removeprefix("contract_")
    table = f"{ns}.t"
    _write(branches, MAIN, table, [1, 2])
    branch = branches.create_branch(f"b-{suffix}")
    assert branch.kind == "branch" and branch.hash == branches.ref(MAIN).hash
    with pytest.raises(BranchExists):
        branches.create_branch(f"b-{suffix}")

    _write(branches, branch.name, table, [1, 2, 3])
    assert _rows(branches, MAIN, table) == [1, 2]  # main does not see the branch
    changes = branches.diff(branch.name)
    assert [(c.table, c.kind) for c in changes] == [(table, "changed")]

    main_before = branches.ref(MAIN).hash
    tag = f"t-{suffix}"
    result = branches.merge(branch.name, expected_hash=main_before, tag=tag)
    assert result.tables == [table]
    assert result.hash_before == main_before != result.hash_after
    assert branches.ref(MAIN).hash == result.hash_after == branches.ref(tag).hash
    assert _rows(branches, MAIN, table) == [1, 2, 3]
    assert branches.history(MAIN)[0]["hash"] == result.hash_after

    # undo: reset main to the state before the merge, via a ref at that commit
    before = branches.tag(f"before-{suffix}", f"{MAIN}@{main_before}")
    branches.reset(MAIN, before.name)
    assert _rows(branches, MAIN, table) == [1, 2]
    assert _rows(branches, tag, table) == [1, 2, 3]  # the tag never moved
    branches.reset(MAIN, tag)
    assert _rows(branches, MAIN, table) == [1, 2, 3]


def test_conflicts_refuse_and_leave_main_unchanged(nessie: tuple[NessieBranchCatalog, str]) -> None:
    branches, ns = nessie
    suffix = ns.removeprefix("contract_")
    table = f"{ns}.t"
    _write(branches, MAIN, table, [1])
    one = branches.create_branch(f"one-{suffix}").name
    two = branches.create_branch(f"two-{suffix}").name
    _write(branches, one, table, [1, 10])
    _write(branches, two, table, [1, 20])
    seen = branches.ref(MAIN).hash
    branches.merge(one, expected_hash=seen)
    after_one = branches.ref(MAIN).hash
    with pytest.raises(BranchConflict):  # main moved since validation
        branches.merge(two, expected_hash=seen)
    with pytest.raises(BranchConflict) as conflict:  # same table changed on both sides
        branches.merge(two)
    assert table in conflict.value.tables
    assert branches.ref(MAIN).hash == after_one
    assert _rows(branches, MAIN, table) == [1, 10]


def test_refs_errors_are_clear(nessie: tuple[NessieBranchCatalog, str]) -> None:
    branches, ns = nessie
    suffix = ns.removeprefix("contract_")
    with pytest.raises(BranchNotFound, match="no-such"):
        branches.ref(f"no-such-{suffix}")
    with pytest.raises(BranchError, match="refusing to delete main"):
        branches.delete_branch(MAIN)
    with pytest.raises(BranchError, match="invalid branch"):
        branches.create_branch("bad name!")
    tag = branches.tag(f"tag-{suffix}")
    with pytest.raises(BranchError, match="tags never move"):
        branches.merge(MAIN, into=tag.name)
    names = [r.name for r in branches.list_refs()]
    assert names[0] == MAIN and tag.name in names
    branches.delete_branch(tag.name)
    assert tag.name not in {r.name for r in branches.list_refs()}


def test_first_promote_into_a_branch_with_no_commits_fast_forwards(
    nessie: tuple[NessieBranchCatalog, str],
) -> None:
    """A fresh Nessie's main has no commits, and Nessie finds no common ancestor to merge
    from: the first promote points it at the branch instead, and still tags it."""
    from tasks.nessie import NO_ANCESTOR

    branches, ns = nessie
    suffix = ns.removeprefix("contract_")
    empty, run, tag = f"empty-{suffix}", f"run-{suffix}", f"promoted-{suffix}"
    branches._call("POST", "/trees", params={"name": empty, "type": "BRANCH"},
                   json={"type": "BRANCH", "name": MAIN, "hash": NO_ANCESTOR})
    assert branches.ref(empty).hash == NO_ANCESTOR
    branches.create_branch(run)
    _write(branches, run, f"{ns}.t", [1, 2, 3])
    result = branches.merge(run, into=empty, expected_hash=NO_ANCESTOR, tag=tag)
    assert result.hash_before == NO_ANCESTOR and result.hash_after == branches.ref(run).hash
    assert branches.ref(empty).hash == branches.ref(tag).hash == result.hash_after
    assert _rows(branches, empty, f"{ns}.t") == [1, 2, 3]
    assert f"{ns}.t" in result.tables


def test_a_tag_lost_between_merge_and_tag_is_restored_by_the_next_merge(
    nessie: tuple[NessieBranchCatalog, str],
) -> None:
    """Nessie merges and tags in two calls. A promote killed between them leaves main merged
    and untagged; the next merge into main tags that commit as the promote would have."""
    branches, ns = nessie
    suffix = ns.removeprefix("contract_")
    _write(branches, MAIN, f"{ns}.t", [1])
    first, second = f"b1-{suffix}", f"b2-{suffix}"
    lost, kept = f"promoted-b1-{suffix}", f"promoted-b2-{suffix}"
    branches.create_branch(first)
    _write(branches, first, f"{ns}.t", [1, 2])
    merged = branches.merge(first, tag=lost)
    branches.delete_branch(lost)  # as if the process died right after the merge call
    assert lost not in {r.name for r in branches.list_refs()}

    branches.create_branch(second)
    _write(branches, second, f"{ns}.u", [3])
    branches.merge(second, tag=kept)
    refs = {r.name: r.hash for r in branches.list_refs()}
    assert refs[lost] == merged.hash_after  # where the interrupted promote merged
    assert refs[kept] == refs[MAIN] != merged.hash_after
    assert _rows(branches, lost, f"{ns}.t") == [1, 2]
