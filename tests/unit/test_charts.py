"""Charts of the marts: files are real, non-blank PNGs and the period maths is right."""

from __future__ import annotations

import base64
import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest

from tasks import charts
from tasks.charts import period_summary, render_agp, render_report, render_tir

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


def two_days() -> pl.DataFrame:
    """Day 1: 100 readings, mean 120, SD 30. Day 2: 300 readings, mean 160, SD 40."""
    return daily_frame(days=2).with_columns(
        n_readings=pl.Series([100, 300]),
        coverage_pct=pl.Series([50.0, 100.0]),
        mean_mg_dl=pl.Series([120.0, 160.0]),
        sd_mg_dl=pl.Series([30.0, 40.0]),
        tir_pct=pl.Series([80.0, 60.0]),
        tbr_pct=pl.Series([8.0, 4.0]),
        tbr_severe_pct=pl.Series([2.0, 0.0]),
        tar_pct=pl.Series([12.0, 36.0]),
        tar_severe_pct=pl.Series([4.0, 8.0]),
    )


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


def test_render_agp_with_missing_hours(tmp_path: Path) -> None:
    sparse = agp_frame(hours=range(20))

    assert_non_blank_png(render_agp(sparse, "clinic-a", tmp_path / "agp.png"), (1000, 500))


def test_render_tir_writes_non_blank_png(tmp_path: Path) -> None:
    path = render_tir(daily_frame(), "clinic-a", tmp_path / "tir.png")

    assert_non_blank_png(path, (1200, 500))


def test_render_tir_with_a_missing_day(tmp_path: Path) -> None:
    gappy = daily_frame().filter(pl.col("local_date") != date(2025, 3, 4))

    assert_non_blank_png(render_tir(gappy, "clinic-a", tmp_path / "tir.png"), (1200, 500))


def test_render_agp_without_rows_for_site(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"mrt_agp_hourly has no rows for site 'clinic-z' \(sites present: clinic-a\)",
    ):
        render_agp(agp_frame(), "clinic-z", tmp_path / "agp.png")


def test_render_tir_without_rows_for_site(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mrt_daily_glycaemia has no rows for site 'clinic-z'"):
        render_tir(daily_frame(), "clinic-z", tmp_path / "tir.png")


def test_render_agp_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mrt_agp_hourly lacks column"):
        render_agp(agp_frame().drop("p95"), "clinic-a", tmp_path / "agp.png")


def test_render_report_embeds_both_images_and_summary(tmp_path: Path) -> None:
    result = render_report(
        agp_frame("Clinic A"), daily_frame("Clinic A"), "Clinic A", tmp_path / "out"
    )

    page = result.report_html.read_text(encoding="utf-8")
    assert result.report_html.name == "report-clinic-a.html"
    for png in (result.agp_png, result.tir_png):
        assert_non_blank_png(png, (1000, 500) if png == result.agp_png else (1200, 500))
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in page
    summary = period_summary(daily_frame("Clinic A"), "Clinic A")
    for key in ("mean_mg_dl", "tir_pct", "tbr_pct", "tar_pct", "cv_pct"):
        assert f"{summary[key]:.1f}" in page
    assert f"{summary['gmi_pct']:.2f}%" in page


def test_render_report_marks_each_goal(tmp_path: Path) -> None:
    result = render_report(agp_frame(), two_days(), "clinic-a", tmp_path)

    page = result.report_html.read_text(encoding="utf-8")
    # TIR 65% (> 70% missed), TBR 5% (< 4% missed), TBR severe 0.5% (< 1% met)
    assert "<td>Time in range 70–180 mg/dL</td><td>65.0%</td><td>&gt; 70%</td><td>✗</td>" in page
    assert "<td>Time below 70 mg/dL</td><td>5.0%</td><td>&lt; 4%</td><td>✗</td>" in page
    assert "<td>Time below 54 mg/dL</td><td>0.5%</td><td>&lt; 1%</td><td>✓</td>" in page
    assert page.count("✓") + page.count("✗") == len(charts.TARGETS)


def test_period_summary_weights_days_by_readings() -> None:
    s = period_summary(two_days(), "clinic-a")

    assert s["n_days"] == 2
    assert s["n_readings"] == 400
    assert s["mean_mg_dl"] == pytest.approx(150.0)  # (100·120 + 300·160) / 400
    assert s["tir_pct"] == pytest.approx(65.0)  # (100·80 + 300·60) / 400
    assert s["tbr_pct"] == pytest.approx(5.0)
    assert s["tbr_severe_pct"] == pytest.approx(0.5)
    assert s["tar_pct"] == pytest.approx(30.0)
    assert s["tar_severe_pct"] == pytest.approx(7.0)
    assert s["gmi_pct"] == pytest.approx(3.31 + 0.02392 * 150.0)
    assert s["coverage_pct"] == pytest.approx(100.0 * 400 / (200 + 300))


def test_period_summary_pools_sd_by_total_variance() -> None:
    s = period_summary(two_days(), "clinic-a")

    # within: 99·30² + 299·40² ; between: 100·30² + 300·10²
    pooled = math.sqrt((99 * 900 + 299 * 1600 + 100 * 900 + 300 * 100) / 399)
    assert s["sd_mg_dl"] == pytest.approx(pooled)
    assert s["cv_pct"] == pytest.approx(100 * pooled / 150.0)


def test_period_summary_matches_raw_readings() -> None:
    rng = np.random.default_rng(7)
    days = [rng.normal(140 + 10 * d, 30 + 5 * d, size=50 + 40 * d) for d in range(3)]
    daily = daily_frame(days=3).with_columns(
        n_readings=pl.Series([len(x) for x in days]),
        mean_mg_dl=pl.Series([float(x.mean()) for x in days]),
        sd_mg_dl=pl.Series([float(x.std(ddof=1)) for x in days]),
    )

    readings = np.concatenate(days)
    s = period_summary(daily, "clinic-a")
    assert s["mean_mg_dl"] == pytest.approx(float(readings.mean()))
    assert s["sd_mg_dl"] == pytest.approx(float(readings.std(ddof=1)))


def test_period_summary_without_rows_for_site() -> None:
    with pytest.raises(ValueError, match="no rows for site 'clinic-z'"):
        period_summary(daily_frame(), "clinic-z")


def test_render_charts_task_renders_each_site_with_an_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts: list[dict[str, Any]] = []
    monkeypatch.setattr(charts, "create_markdown_artifact", lambda **kw: artifacts.append(kw))
    agp = pl.concat([agp_frame("Clinic A"), agp_frame("clinic_b")])
    daily = pl.concat([daily_frame("Clinic A"), daily_frame("clinic_b")])

    result = charts.render_charts_task.fn(agp, daily, tmp_path)

    assert [c.site_id for c in result] == ["Clinic A", "clinic_b"]
    assert [a["key"] for a in artifacts] == ["agp-clinic-a", "agp-clinic-b"]
    markdown = artifacts[0]["markdown"]
    assert "![AGP for Clinic A](data:image/png;base64," in markdown
    assert result[0].report_html.resolve().as_uri() in markdown
    assert "| Time in range 70–180 mg/dL |" in markdown


def test_render_charts_task_skips_site_missing_from_a_mart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(charts, "create_markdown_artifact", lambda **kw: None)
    agp = pl.concat([agp_frame("clinic-a"), agp_frame("clinic-b")])

    result = charts.render_charts_task.fn(agp, daily_frame("clinic-a"), tmp_path)

    assert [c.site_id for c in result] == ["clinic-a"]
