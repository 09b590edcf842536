"""pandera internals Cascade relies on, in one place (pandera[polars] >=0.26,<0.36).

``tasks.contracts`` evaluates every rule of a contract in one Polars pass instead of
pandera's check loop. A dataframe-level check (a ``@pa.dataframe_check`` method) is a
function of the frame; pandera keeps it, and the keyword arguments it is called with, in
private attributes of the ``Check``. tests/unit/test_private_apis.py pins that behaviour,
so an upgrade that changes it fails there, by name.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

__all__ = ["run_dataframe_check"]


def run_dataframe_check(rule: pa.Check, frame: pl.LazyFrame) -> pl.LazyFrame:
    """The frame a dataframe-level check returns for ``frame`` (true where a row passes)."""
    result: pl.LazyFrame = rule._check_fn(PolarsData(frame, "*"), **rule._check_kwargs)
    return result
