"""validate's contracts for the report marts: what they accept and what they refuse."""

from __future__ import annotations

import polars as pl
import pytest
from pandera.errors import SchemaErrors

from tasks.validation import MART_CONTRACTS, DailyTreatmentsContract, PeriodSummaryContract
from tests.unit.test_report import summary


def test_the_report_marts_are_under_contract() -> None:
    assert MART_CONTRACTS["marts.mrt_period_summary"] is PeriodSummaryContract
    assert MART_CONTRACTS["marts.mrt_daily_treatments"] is DailyTreatmentsContract


def test_period_summary_contract_accepts_the_mart() -> None:
    PeriodSummaryContract.validate(summary(), lazy=True)


def test_period_summary_contract_refuses_sufficiency_without_active_time() -> None:
    with pytest.raises(SchemaErrors, match="sufficient only with"):
        PeriodSummaryContract.validate(summary(active_pct=50.0, is_sufficient=True), lazy=True)


def test_period_summary_contract_refuses_an_unknown_unit() -> None:
    with pytest.raises(SchemaErrors, match="display_unit"):
        PeriodSummaryContract.validate(summary(unit="mg"), lazy=True)


def test_daily_treatments_contract_refuses_negative_insulin() -> None:
    frame = pl.DataFrame({"site_id": ["s"], "n_boluses": [1], "bolus_u": [-1.0],
                          "n_carb_entries": [0], "carbs_g": [0.0], "basal_u": [None]},
                         schema_overrides={"basal_u": pl.Float64})
    with pytest.raises(SchemaErrors, match="bolus_u"):
        DailyTreatmentsContract.validate(frame, lazy=True)
