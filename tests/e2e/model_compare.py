"""Comparing what two refs hold in their model layers, for the incremental-build tests."""

from __future__ import annotations

from typing import Final

import polars as pl
from polars.testing import assert_frame_equal
from pyiceberg.catalog import Catalog

from tasks.lakehouse import read_table

__all__ = ["MODEL_NAMESPACES", "assert_same_tables", "canonical", "tables_of"]

MODEL_NAMESPACES: Final = ("staging", "silver", "marts")


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s columns and rows in a canonical order.

    Rows sort by their exact columns first: a float that two builds sum in a different
    order differs in its last bits, and sorting on it first could pair unrelated rows.
    """
    columns = sorted(frame.columns)
    exact = [c for c in columns if not frame.schema[c].is_float()]
    return frame.select(columns).sort(exact + [c for c in columns if c not in exact],
                                      nulls_last=True)


def tables_of(catalog: Catalog, namespaces: tuple[str, ...] = MODEL_NAMESPACES
              ) -> dict[str, pl.DataFrame]:
    """Every table of ``namespaces`` at the catalog's ref, rows in a canonical order."""
    return {f"{namespace}.{name}": canonical(read_table(catalog, f"{namespace}.{name}"))
            for namespace in namespaces for _, name in catalog.list_tables(namespace)}


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
