"""Embedded branch catalog: fork, isolate, diff, tag, atomic merge, conflicts, reset."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.branches import EmbeddedBranchCatalog
from tasks.errors import BranchConflict, BranchError, BranchExists, BranchNotFound


@pytest.fixture
def branches(tmp_path: Path) -> EmbeddedBranchCatalog:
    catalog = EmbeddedBranchCatalog(tmp_path / "catalog.db", tmp_path / "warehouse")
    main = catalog.catalog("main")
    main.create_namespace("raw")
    for name in ("a", "b"):
        main.create_table(f"raw.{name}", schema=pa.schema([("v", pa.int64())])).append(
            pa.table({"v": [1]}))
    return catalog


def _append(branches: EmbeddedBranchCatalog, ref: str, table: str, value: int) -> None:
    branches.catalog(ref).load_table(f"raw.{table}").append(pa.table({"v": [value]}))


def _values(branches: EmbeddedBranchCatalog, ref: str, table: str) -> list[int]:
    arrow = branches.catalog(ref).load_table(f"raw.{table}").scan().to_arrow()
    return sorted(arrow.column("v").to_pylist())


def test_branch_writes_are_invisible_on_main(branches: EmbeddedBranchCatalog) -> None:
    branches.create_branch("dev")
    _append(branches, "dev", "a", 2)
    assert _values(branches, "dev", "a") == [1, 2]
    assert _values(branches, "main", "a") == [1]


def test_diff_lists_tables_changed_on_branch(branches: EmbeddedBranchCatalog) -> None:
    branches.create_branch("dev")
    _append(branches, "dev", "b", 2)
    assert [(c.table, c.kind) for c in branches.diff("dev")] == [("raw.b", "changed")]


def test_merge_moves_every_changed_table_at_once(branches: EmbeddedBranchCatalog) -> None:
    branches.create_branch("dev")
    _append(branches, "dev", "a", 2)
    _append(branches, "dev", "b", 3)
    result = branches.merge("dev")
    assert result.tables == ["raw.a", "raw.b"]
    assert _values(branches, "main", "a") == [1, 2] and _values(branches, "main", "b") == [1, 3]
    assert branches.ref("main").hash == result.hash_after != result.hash_before


def test_merge_refuses_when_main_moved_under_a_changed_table(
    branches: EmbeddedBranchCatalog,
) -> None:
    branches.create_branch("one")
    branches.create_branch("two")
    _append(branches, "one", "a", 2)
    _append(branches, "two", "a", 3)
    _append(branches, "two", "b", 4)
    branches.merge("one")
    before = branches.ref("main").hash
    with pytest.raises(BranchConflict, match=re.escape("raw.a")) as caught:
        branches.merge("two")
    assert caught.value.tables == ["raw.a"]
    assert branches.ref("main").hash == before
    assert _values(branches, "main", "b") == [1]  # nothing of the branch landed


def _create(branches: EmbeddedBranchCatalog, ref: str, table: str, value: int) -> None:
    created = branches.catalog(ref).create_table(f"raw.{table}",
                                                 schema=pa.schema([("v", pa.int64())]))
    created.append(pa.table({"v": [value]}))


def test_merge_refuses_a_table_both_sides_created_after_the_fork(
    branches: EmbeddedBranchCatalog,
) -> None:
    branches.create_branch("dev")
    _create(branches, "main", "c", 10)  # main gets raw.c after the fork...
    _create(branches, "dev", "c", 20)  # ...and the branch makes its own raw.c
    before = branches.ref("main").hash
    with pytest.raises(BranchConflict) as refused:
        branches.merge("dev")  # no expected hash: the CLI's and the deployment's promote
    assert refused.value.tables == ["raw.c"]
    assert _values(branches, "main", "c") == [10]  # main's table is not overwritten
    assert branches.ref("main").hash == before


def test_merge_keeps_a_table_main_created_after_the_fork(
    branches: EmbeddedBranchCatalog,
) -> None:
    branches.create_branch("dev")
    _create(branches, "main", "c", 10)
    _append(branches, "dev", "a", 2)
    result = branches.merge("dev")
    assert result.tables == ["raw.a"]
    assert _values(branches, "main", "c") == [10]
    assert _values(branches, "main", "a") == [1, 2]


def test_merge_allows_disjoint_tables(branches: EmbeddedBranchCatalog) -> None:
    branches.create_branch("one")
    branches.create_branch("two")
    _append(branches, "one", "a", 2)
    _append(branches, "two", "b", 3)
    branches.merge("one")
    branches.merge("two")
    assert _values(branches, "main", "a") == [1, 2] and _values(branches, "main", "b") == [1, 3]


def test_merge_with_stale_expected_hash_refused(branches: EmbeddedBranchCatalog) -> None:
    branches.create_branch("dev")
    seen = branches.ref("main").hash
    _append(branches, "main", "b", 9)  # someone commits to main directly
    _append(branches, "dev", "a", 2)
    with pytest.raises(BranchConflict, match="moved since it was checked"):
        branches.merge("dev", expected_hash=seen)


def test_tag_freezes_state_and_reset_undoes_a_merge(branches: EmbeddedBranchCatalog) -> None:
    branches.tag("before")
    branches.create_branch("dev")
    _append(branches, "dev", "a", 2)
    branches.merge("dev")
    assert _values(branches, "before", "a") == [1]
    branches.reset("main", "before")
    assert _values(branches, "main", "a") == [1]
    assert [h["operation"] for h in branches.history("main")] == ["reset", "merge"]


def test_tags_cannot_be_merged_into_or_reset(branches: EmbeddedBranchCatalog) -> None:
    branches.tag("v1")
    branches.create_branch("dev")
    with pytest.raises(BranchError, match="tags never move"):
        branches.merge("dev", into="v1")
    with pytest.raises(BranchError, match="tags never move"):
        branches.reset("v1", "main")


def test_delete_branch_and_unknown_ref(branches: EmbeddedBranchCatalog) -> None:
    branches.create_branch("dev")
    branches.delete_branch("dev")
    assert [r.name for r in branches.list_refs()] == ["main"]
    with pytest.raises(BranchNotFound):
        branches.catalog("dev")
    with pytest.raises(BranchError, match="refusing to delete main"):
        branches.delete_branch("main")


def test_names_validated_and_unique(branches: EmbeddedBranchCatalog) -> None:
    with pytest.raises(BranchError, match="invalid branch"):
        branches.create_branch("../etc")
    branches.create_branch("dev")
    with pytest.raises(BranchExists):
        branches.tag("dev")


def test_tags_refuse_writes(branches: EmbeddedBranchCatalog) -> None:
    branches.tag("v1")
    with pytest.raises(BranchError, match="tags never move"):
        _append(branches, "v1", "a", 5)
    assert _values(branches, "v1", "a") == [1]


def test_merge_tags_in_the_same_transaction(branches: EmbeddedBranchCatalog) -> None:
    branches.tag("taken")
    branches.create_branch("dev")
    _append(branches, "dev", "a", 2)
    before = branches.ref("main").hash
    with pytest.raises(BranchExists):
        branches.merge("dev", tag="taken")
    assert branches.ref("main").hash == before  # neither merged nor tagged
    result = branches.merge("dev", tag="release-1")
    assert branches.ref("release-1").hash == result.hash_after
