"""The suite's worker groups hold (tests/conftest.py): under ``--dist loadgroup`` each test's
id carries its group, which is how pytest-xdist keeps a group on one worker. If a pytest or
pytest-xdist upgrade drops it, the stack tests run side by side and stop each other's
services: this fails first."""

from __future__ import annotations

import os

import pytest


def test_this_module_runs_as_one_group(request: pytest.FixtureRequest) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("not under pytest-xdist (-n 0): there are no groups to keep")
    if request.config.getoption("dist") != "loadgroup" and not request.config.getvalue(
            "loadgroup"):
        pytest.skip("not under --dist loadgroup")
    assert request.node.nodeid.endswith("@tests/unit/test_xdist_groups.py"), (
        f"{request.node.nodeid}: pytest-xdist did not tag the test with its group; the stack "
        "tests would not be kept on one worker (see the pytest cap in pyproject.toml)")
