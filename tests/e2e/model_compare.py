"""Comparing what two refs hold in their model layers, for the incremental-build tests."""

from __future__ import annotations

from typing import Final

import polars as pl
from polars.testing import assert_frame_equal
from pyiceberg.catalog import Catalog

from tasks.lakehouse import read_table

__all__ = ["MODEL_NAMESPACES", "assert_same_tables", "tables_of"]

MODEL_NAMESPACES: Final = ("staging", "silver", "marts")


def tables_of(catalog: Catalog, namespaces: tuple[str, ...] = MODEL_NAMESPACES
              ) -> dict[str, pl.DataFrame]:
    """Every table of ``namespaces`` at the catalog's ref, rows in a canonical order."""
    out = {}
    for namespace in namespaces:
        for _, name in catalog.list_tables(namespace):
            frame = read_table(catalog, f"{namespace}.{name}")
            out[f"{namespace}.{name}"] = frame.select(sorted(frame.columns)).sort(
                sorted(frame.columns), nulls_last=True)
    return out


def assert_same_tables(ours: dict[str, pl.DataFrame], theirs: dict[str, pl.DataFrame]) -> None:
    """The same tables with the same rows (floats to 1e-9 relative)."""
    assert sorted(ours) == sorted(theirs)
    for name in sorted(ours):
        assert ours[name].height == theirs[name].height, (
            f"{name}: {ours[name].height} rows vs {theirs[name].height}")
        try:
            assert_frame_equal(ours[name], theirs[name], check_exact=False, rel_tol=1e-9)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
