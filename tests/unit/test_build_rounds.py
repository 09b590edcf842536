"""Cutting a full build into rounds of sites, and folding the rounds' results together."""

from __future__ import annotations

import json

import polars as pl
import pytest

from tasks.build_plan import BuildPlan
from tasks.build_rounds import (
    DEFAULT_ROUND_ROWS,
    ROUND_ROWS_ENV,
    merge_round_results,
    plan_rounds,
    round_rows,
)
from tasks.errors import ConfigError


def test_everything_within_the_budget_is_one_round_over_every_site() -> None:
    assert plan_rounds({"a": 100, "b": 200}, 300) == ()
    assert plan_rounds({}, 1) == ()


def test_sites_fill_rounds_in_order_up_to_the_budget() -> None:
    rows = {"d": 50, "a": 100, "c": 200, "b": 150}
    assert plan_rounds(rows, 300) == (("a", "b"), ("c", "d"))
    for sites in plan_rounds(rows, 300):
        assert sum(rows[s] for s in sites) <= 300


def test_a_site_larger_than_the_budget_is_a_round_of_its_own() -> None:
    assert plan_rounds({"a": 10, "big": 1_000, "c": 10}, 100) == (("a",), ("big",), ("c",))


def test_every_site_is_in_exactly_one_round() -> None:
    rows = {f"s{i:02d}": 7 * i + 1 for i in range(40)}
    rounds = plan_rounds(rows, 120)
    flat = [s for sites in rounds for s in sites]
    assert sorted(flat) == sorted(rows) and len(flat) == len(set(flat))


def test_the_first_round_runs_the_builds_own_options_and_later_ones_add_to_it() -> None:
    plan = BuildPlan(
        branch="b", build_seq=1, build_id="x", full_refresh=True, reason="asked for",
        project_checksum="p", models_checksum="", existing_tables=frozenset(),
        changes_location=None, pending=pl.DataFrame(), rounds=(("a", "b"), ("c",)))
    first, later = plan.dbt_invocations()
    assert first[:2] == ["build", "--full-refresh"]
    assert "--full-refresh" not in later
    assert later[:5] == ["build", "--exclude", "resource_type:unit_test", "source:*", "--vars"]
    assert json.loads(first[first.index("--vars") + 1]) == {"build_sites": ["a", "b"]}
    assert json.loads(later[later.index("--vars") + 1]) == {"build_sites": ["c"]}
    one = BuildPlan(**{**plan.__dict__, "rounds": ()})
    assert one.dbt_invocations() == [["build", "--full-refresh"]]


def test_a_node_keeps_its_worst_status_over_the_rounds() -> None:
    rounds = [
        [{"unique_id": "model.m", "status": "success"},
         {"unique_id": "test.t", "status": "fail"}],
        [{"unique_id": "model.m", "status": "error"},
         {"unique_id": "test.t", "status": "pass"},
         {"unique_id": "test.u", "status": "pass"}],
    ]
    merged = {r["unique_id"]: r["status"] for r in merge_round_results(rounds)}
    assert merged == {"model.m": "error", "test.t": "fail", "test.u": "pass"}


def test_the_round_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROUND_ROWS_ENV, raising=False)
    assert round_rows() == DEFAULT_ROUND_ROWS
    monkeypatch.setenv(ROUND_ROWS_ENV, "1_000_000")
    assert round_rows() == 1_000_000
    for bad in ("0", "-5", "lots"):
        monkeypatch.setenv(ROUND_ROWS_ENV, bad)
        with pytest.raises(ConfigError, match=ROUND_ROWS_ENV):
            round_rows()
