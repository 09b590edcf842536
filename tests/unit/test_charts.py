"""Charts of a report period: files are real, non-blank PNGs in the site's unit."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest

from tasks.charts import render_agp, render_tir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def agp_frame(site_id: str = "clinic-a", hours: range = range(24)) -> pl.DataFrame:
    base = [110.0 + 2 * h for h in hours]
    return pl.DataFrame(
        {
            "site_id": site_id,
            "local_hour": list(hours),
            "p05": [b - 50 for b in base],
            "p25": [b - 20 for b in base],
            "p50": base,
            "p75": [b + 30 for b in base],
            "p95": [b + 90 for b in base],
            "n_readings": [84] * len(hours),
        }
    )


def daily_frame(site_id: str = "clinic-a", days: int = 7) -> pl.DataFrame:
    tbr_severe = [0.5 * (d % 3) for d in range(days)]
    tbr = [s + 2.0 for s in tbr_severe]
    tar_severe = [1.0 + d for d in range(days)]
    tar = [s + 15.0 for s in tar_severe]
    return pl.DataFrame(
        {
            "site_id": site_id,
            "local_date": [date(2025, 3, 1) + timedelta(days=d) for d in range(days)],
            "n_readings": [288 - 10 * d for d in range(days)],
            "coverage_pct": [100.0 - 10 * d / 2.88 for d in range(days)],
            "mean_mg_dl": [140.0 + 3 * d for d in range(days)],
            "sd_mg_dl": [45.0 + d for d in range(days)],
            "cv_pct": [30.0] * days,
            "gmi_pct": [6.7] * days,
            "tir_pct": [100.0 - b - a for b, a in zip(tbr, tar, strict=True)],
            "tbr_pct": tbr,
            "tbr_severe_pct": tbr_severe,
            "tar_pct": tar,
            "tar_severe_pct": tar_severe,
        }
    )


def summary_row(site_id: str = "clinic-a", days: int = 7, **values: Any) -> dict[str, Any]:
    """An ``mrt_period_summary`` row over ``daily_frame``'s days."""
    row: dict[str, Any] = {
        "site_id": site_id, "period": "last_14d", "start_date": date(2025, 3, 1),
        "end_date": date(2025, 3, 1) + timedelta(days=days - 1), "n_days": days,
        "n_readings": 1900, "active_pct": 94.2, "very_low_pct": 0.5, "low_pct": 2.0,
        "tir_pct": 78.5, "high_pct": 15.0, "very_high_pct": 4.0,
    }
    return row | values


def coverage_frame(site_id: str = "clinic-a", days: int = 7) -> pl.DataFrame:
    return pl.DataFrame({
        "site_id": site_id,
        "local_date": [date(2025, 3, 1) + timedelta(days=d) for d in range(days)],
        "coverage_pct": [100.0, 95.0, 0.0, 40.0, 100.0, 100.0, 88.0][:days],
    })


def assert_non_blank_png(path: Path, size: tuple[int, int]) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (size[1], size[0])
    assert float(np.var(pixels[..., :3])) > 0


def test_render_agp_writes_non_blank_png(tmp_path: Path) -> None:
    path = render_agp(agp_frame(), "clinic-a", tmp_path / "agp.png")

    assert path == tmp_path / "agp.png"
    assert_non_blank_png(path, (1000, 500))


def test_render_agp_draws_only_the_requested_site(tmp_path: Path) -> None:
    frames = pl.concat([agp_frame("clinic-a"), agp_frame("clinic-b")])

    a = render_agp(frames, "clinic-a", tmp_path / "a.png", title="AGP")
    alone = render_agp(agp_frame("clinic-a"), "clinic-a", tmp_path / "alone.png", title="AGP")

    assert a.read_bytes() == alone.read_bytes()


def test_render_agp_in_mmol_differs_from_mg(tmp_path: Path) -> None:
    mg = render_agp(agp_frame(), "clinic-a", tmp_path / "mg.png")
    mmol = render_agp(agp_frame(), "clinic-a", tmp_path / "mmol.png", unit="mmol/L")

    assert_non_blank_png(mmol, (1000, 500))
    assert mg.read_bytes() != mmol.read_bytes()


def test_render_agp_with_missing_hours(tmp_path: Path) -> None:
    sparse = agp_frame(hours=range(20))

    assert_non_blank_png(render_agp(sparse, "clinic-a", tmp_path / "agp.png"), (1000, 500))


def test_render_tir_writes_non_blank_png(tmp_path: Path) -> None:
    path = render_tir(daily_frame(), "clinic-a", tmp_path / "tir.png", summary=summary_row(),
                      coverage=coverage_frame())

    assert_non_blank_png(path, (1200, 560))


def test_render_tir_draws_only_the_period(tmp_path: Path) -> None:
    """Days outside the summary's period are left out (charts follow the report period)."""
    period = summary_row(days=3)
    whole = render_tir(daily_frame(days=3), "clinic-a", tmp_path / "a.png", summary=period)
    longer = render_tir(daily_frame(days=7), "clinic-a", tmp_path / "b.png", summary=period)

    assert whole.read_bytes() == longer.read_bytes()


def test_render_tir_with_a_missing_day(tmp_path: Path) -> None:
    gappy = daily_frame().filter(pl.col("local_date") != date(2025, 3, 4))

    path = render_tir(gappy, "clinic-a", tmp_path / "tir.png", summary=summary_row(),
                      coverage=coverage_frame().filter(pl.col("local_date") != date(2025, 3, 4)),
                      unit="mmol/L")
    assert_non_blank_png(path, (1200, 560))


def test_render_agp_without_rows_for_site(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"mrt_agp_hourly_14d has no rows for site 'clinic-z' \(sites present: clinic-a\)",
    ):
        render_agp(agp_frame(), "clinic-z", tmp_path / "agp.png")


def test_render_tir_without_rows_for_site(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mrt_daily_glycaemia has no rows for site 'clinic-z'"):
        render_tir(daily_frame(), "clinic-z", tmp_path / "tir.png", summary=summary_row())


def test_render_agp_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mrt_agp_hourly_14d lacks column"):
        render_agp(agp_frame().drop("p95"), "clinic-a", tmp_path / "agp.png")
