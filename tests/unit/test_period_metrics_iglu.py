"""mrt_period_summary against iglu-python, an independent implementation of the metrics.

Five generated sites (``tests/unit/cgm_sites.py``) go through the dbt project on DuckDB;
for each site and report period, iglu-python computes the same metrics from the same
readings, selected by its own means: % time CGM active over the whole period (iglu's
``active_percent`` with a manual range), the time-in-range bands, mean, SD, CV, GMI, the
Glycemia Risk Index, and hypo-/hyperglycaemia episodes (levels 1 and 2, 15 minutes, as
in the 2023 consensus).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from tests.unit.cgm_sites import SITES, entries_frame, profile_rows
from tests.unit.dbt_fixtures import write_generated_database
from tests.unit.test_dbt_models import _run_dbt

ig = pytest.importorskip("iglu_python")  # the dev group installs it; fail loudly below if not

_EPISODE_KINDS = {  # Cascade's kind -> iglu's (type, level)
    "hypo_l1": ("hypo", "lv1"),
    "hypo_l2": ("hypo", "lv2"),
    "hyper_l1": ("hyper", "lv1"),
    "hyper_l2": ("hyper", "lv2"),
}


def test_iglu_python_is_installed() -> None:
    """The reference must be present: a skipped comparison would hide a gap."""
    assert ig.__name__ == "iglu_python"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("dbt-iglu")
    database = tmp / "cascade.duckdb"
    write_generated_database(database, [entries_frame(s) for s in SITES],
                             [row for s in SITES for row in profile_rows(s)])
    _run_dbt(["build", "--target", "duckdb", "--threads", "2",
              "--exclude", "resource_type:unit_test"], tmp,
             CASCADE_DUCKDB_PATH=str(database))
    yield database


def _frame(database: Path, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(database), read_only=True) as con:
        return con.execute(sql).df()


@pytest.fixture(scope="module")
def summary(built: Path) -> pd.DataFrame:
    return _frame(built, """
        select s.*, p.period_start_at, p.period_end_at
        from marts.mrt_period_summary as s
        inner join silver.int_report_periods_defined as p
            using (site_id, period)
        order by site_id, period
    """)


@pytest.fixture(scope="module")
def readings(built: Path) -> pd.DataFrame:
    return _frame(built, """
        select site_id as id, reading_at as time, cast(glucose_mg_dl as double) as gl,
               local_date
        from silver.fct_cgm_reading
        where glucose_mg_dl is not null
        order by site_id, reading_at
    """)


def _cases(summary: pd.DataFrame, readings: pd.DataFrame) -> Iterator[tuple[Any, pd.DataFrame]]:
    for row in summary.itertuples():
        site = readings[readings["id"] == row.site_id]
        start, end = pd.Timestamp(row.start_date), pd.Timestamp(row.end_date)
        in_period = site[(site["local_date"] >= start) & (site["local_date"] <= end)]
        yield row, in_period[["id", "time", "gl"]].reset_index(drop=True)


def _value(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].iloc[0])


def test_every_site_has_both_standard_periods(summary: pd.DataFrame) -> None:
    assert sorted(summary.groupby("site_id").size().items()) == [
        (s.site_id, 2) for s in sorted(SITES, key=lambda s: s.site_id)
    ]


def test_display_unit_follows_the_profile(summary: pd.DataFrame) -> None:
    units = dict(zip(summary["site_id"], summary["display_unit"], strict=True))
    for site in SITES:
        assert units[site.site_id] == ("mmol/L" if site.units == "mmol" else "mg/dL")


def test_active_percent_matches_iglu(summary: pd.DataFrame, readings: pd.DataFrame) -> None:
    """Active time over the whole period, days without readings included."""
    for row in summary.itertuples():
        site = readings[readings["id"] == row.site_id][["id", "time", "gl"]]
        end = pd.Timestamp(row.period_end_at) - pd.Timedelta(seconds=1)
        reference = ig.active_percent(site.copy(), range_type="manual", ndays=int(row.n_days),
                                      consistent_end_date=end, tz="UTC")
        expected = min(100.0, _value(reference, "active_percent"))
        assert row.active_pct == pytest.approx(expected, abs=1e-9), (row.site_id, row.period)
        assert row.is_sufficient == (row.n_days >= 14 and expected >= 70), row.site_id


def test_range_metrics_match_iglu(summary: pd.DataFrame, readings: pd.DataFrame) -> None:
    checked = 0
    for row, data in _cases(summary, readings):
        assert row.n_readings == len(data), (row.site_id, row.period)
        if data.empty:
            continue
        below = ig.below_percent(data.copy(), targets_below=[54, 70])
        above = ig.above_percent(data.copy(), targets_above=[180, 250])
        in_range = ig.in_range_percent(data.copy(), target_ranges=[[70, 180]])
        expected = {
            "very_low_pct": _value(below, "below_54"),
            "tbr_pct": _value(below, "below_70"),
            "tir_pct": _value(in_range, "in_range_70_180"),
            "tar_pct": _value(above, "above_180"),
            "very_high_pct": _value(above, "above_250"),
            "mean_mg_dl": _value(ig.mean_glu(data.copy()), "mean"),
            "sd_mg_dl": _value(ig.sd_glu(data.copy()), "SD"),
            "cv_pct": _value(ig.cv_glu(data.copy()), "CV"),
            "gmi_pct": _value(ig.gmi(data.copy()), "GMI"),
            "gri": _value(ig.gri(data.copy()), "GRI"),
        }
        for column, value in expected.items():
            assert getattr(row, column) == pytest.approx(value, rel=1e-9, abs=1e-9), (
                row.site_id, row.period, column)
        assert row.gri_hypo == pytest.approx(expected["very_low_pct"] + 0.8 * (
            expected["tbr_pct"] - expected["very_low_pct"]), abs=1e-9)
        checked += 1
    assert checked >= 8  # every period with readings was compared


def test_episodes_match_iglu(summary: pd.DataFrame, readings: pd.DataFrame) -> None:
    """Counts and mean durations of level 1 and 2 hypo/hyper episodes (>= 15 min)."""
    compared = 0
    for row, data in _cases(summary, readings):
        if len(data) < 2:
            continue
        reference = ig.episode_calculation(data.copy(), tz="UTC")
        for kind, (kind_type, level) in _EPISODE_KINDS.items():
            ref = reference[(reference["type"] == kind_type) & (reference["level"] == level)]
            n = int(getattr(row, f"n_{kind}_episodes"))
            minutes = float(getattr(row, f"{kind}_episode_min"))
            where = (row.site_id, row.period, kind)
            assert n == int(ref["total_episodes"].iloc[0]), where
            if n:
                assert minutes / n == pytest.approx(float(ref["avg_ep_duration"].iloc[0]),
                                                    abs=1e-9), where
                compared += n
            else:
                assert minutes == 0, where
    assert compared > 100  # the generated sites hold plenty of episodes of each kind


def test_generated_sites_exercise_the_edges(summary: pd.DataFrame) -> None:
    """The data reaches the cases worth comparing: sufficient and insufficient periods,
    GRI zones beyond A, level 2 episodes of both kinds."""
    assert summary["is_sufficient"].any() and not summary["is_sufficient"].all()
    assert summary["gri_zone"].isin(["C", "D", "E"]).any()
    assert (summary["n_hypo_l2_episodes"] > 0).any()
    assert (summary["n_hyper_l2_episodes"] > 0).any()
    assert math.isclose(summary["active_pct"].max(), 100.0, abs_tol=5.0)
