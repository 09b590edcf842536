"""The report clinicians read: table, units, warnings, storage and one artifact per site."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tasks import report as report_module
from tasks.ingest import TableCounts
from tasks.profile import embedded_lakehouse
from tasks.report import build_report, report_html, report_markdown, summary_table
from tasks.report_store import LocalReportStore
from tasks.results import PublishedReport
from tests.unit.test_charts import agp_frame, coverage_frame, daily_frame


def summary(site_id: str = "clinic-a", unit: str = "mg/dL", **values: Any) -> pl.DataFrame:
    """mrt_period_summary rows (last 14 and 90 days) of one site."""
    base: dict[str, Any] = {
        "site_id": site_id, "display_unit": unit, "n_readings": 3800,
        "n_days_with_readings": 14, "active_pct": 94.2, "is_sufficient": True,
        "mean_mg_dl": 133.0, "sd_mg_dl": 45.0, "cv_pct": 33.8, "gmi_pct": 6.49,
        "very_low_pct": 0.5, "low_pct": 3.0, "tir_pct": 72.5, "high_pct": 19.0,
        "very_high_pct": 5.0, "tbr_pct": 3.5, "tbr_severe_pct": 0.5, "tar_pct": 24.0,
        "tar_severe_pct": 5.0, "gri": 34.1, "gri_zone": "B", "gri_hypo": 2.9,
        "gri_hyper": 14.5, "n_hypo_l1_episodes": 6, "hypo_l1_episode_min": 210.0,
        "n_hypo_l2_episodes": 1, "hypo_l2_episode_min": 20.0, "n_hyper_l1_episodes": 11,
        "hyper_l1_episode_min": 1320.0, "n_hyper_l2_episodes": 0,
        "hyper_l2_episode_min": 0.0,
    }
    rows = [
        base | {"period": "last_14d", "start_date": date(2025, 3, 1),
                "end_date": date(2025, 3, 14), "n_days": 14},
        base | {"period": "last_90d", "start_date": date(2024, 12, 15),
                "end_date": date(2025, 3, 14), "n_days": 90, "active_pct": 61.0,
                "is_sufficient": False},
    ]
    return pl.DataFrame([r | values for r in rows])


def marts(site_id: str = "clinic-a", unit: str = "mg/dL", **values: Any) -> dict[str, pl.DataFrame]:
    return {
        "mrt_period_summary": summary(site_id, unit, **values),
        "mrt_agp_hourly_14d": agp_frame(site_id),
        "mrt_daily_glycaemia": daily_frame(site_id, days=14),
        "mrt_quality_coverage": coverage_frame(site_id),
    }


def _table(rendered: Any) -> dict[str, tuple[list[str], str, list[str]]]:
    return {label: (values, goal, marks) for label, values, goal, marks in rendered}


def test_mmol_site_report_speaks_mmol(tmp_path: Path) -> None:
    """A site whose profile says mmol/L reads mmol/L everywhere on its report."""
    report = build_report(marts("uk-site", "mmol/L"), "uk-site", tmp_path)
    page = report_html(report)

    assert report.unit == "mmol/L"
    table = _table(summary_table(report))
    assert table["Mean glucose"][0] == ["7.4 mmol/L", "7.4 mmol/L"]  # 133 / 18.0182
    assert table["Standard deviation"][0][0] == "2.5 mmol/L"
    assert table["Glucose Management Indicator (GMI)"][0][0] == "6.5% (47 mmol/mol)"
    assert "Time in range 3.9–10.0 mmol/L" in table
    assert "Time below 3.0 mmol/L (very low)" in table
    assert "Time above 13.9 mmol/L (very high)" in table
    assert "Level 2 hypoglycaemia <3.0 mmol/L (≥ 15 min)" in table
    assert "glucose in mmol/L" in page
    assert "mg/dL" not in page.split("<h2>")[0]  # nothing above the pictures says mg/dL
    assert "<strong>Cascade is not a medical device.</strong>" in page


def test_units_override_wins_over_the_site(tmp_path: Path) -> None:
    report = build_report(marts(), "clinic-a", tmp_path, units="mmol")

    assert report.unit == "mmol/L"
    assert _table(summary_table(report))["Mean glucose"][0][0] == "7.4 mmol/L"


def test_mg_site_marks_each_goal_per_period(tmp_path: Path) -> None:
    table = _table(summary_table(build_report(marts(), "clinic-a", tmp_path)))

    assert table["Time in range 70–180 mg/dL"] == (["72.5%", "72.5%"], "> 70%", ["✓", "✓"])
    assert table["Time below 70 mg/dL (low + very low)"][2] == ["✓", "✓"]
    assert table["Time above 250 mg/dL (very high)"] == (["5.0%", "5.0%"], "< 5%", ["✗", "✗"])
    assert table["Time CGM active"] == (["94.2%", "61.0%"], "≥ 70%", ["✓", "✗"])
    assert table["Data sufficiency (≥ 70 % active over ≥ 14 days)"][0] == [
        "sufficient", "insufficient"]
    assert table["Glycemia Risk Index (zone A best … E)"][0][0] == (
        "34.1 (B; hypo 2.9, hyper 14.5)")
    assert table["Hypoglycaemia episodes <70 mg/dL (≥ 15 min)"][0][0] == "6 (mean 35 min)"
    assert table["Level 2 hyperglycaemia >250 mg/dL (≥ 15 min)"][0][0] == "0"


def test_insufficient_period_is_flagged(tmp_path: Path) -> None:
    report = build_report(marts(active_pct=40.0, is_sufficient=False), "clinic-a", tmp_path)

    assert 'class="warn"' in report_html(report)
    assert "active 40% of the last 14 days" in report_markdown(report, None)


def test_site_without_recent_readings_gets_a_report_without_pictures(tmp_path: Path) -> None:
    empty = marts(n_readings=0, mean_mg_dl=None, sd_mg_dl=None, cv_pct=None, gmi_pct=None,
                  tir_pct=None, gri=None, is_sufficient=False, active_pct=0.0)
    report = build_report(empty, "clinic-a", tmp_path)

    assert report.agp_png is None
    assert "No CGM readings in the last 14 days" in report_html(report)
    assert _table(summary_table(report))["Mean glucose"][0][0] == "—"


def test_report_without_its_period_row_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no last_14d row for site 'clinic-z'.*build the branch"):
        build_report(marts(), "clinic-z", tmp_path)


def test_publish_reports_stores_each_site_and_leaves_one_artifact_per_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CASCADE_PROFILE", raising=False)
    artifacts: list[dict[str, Any]] = []
    monkeypatch.setattr(report_module, "create_markdown_artifact",
                        lambda **kw: artifacts.append(kw))
    a, b = marts("Clinic A"), marts("uk_site", "mmol/L")
    both = {name: pl.concat([a[name], b[name]]) for name in a}

    published = report_module.publish_reports_task.fn(embedded_lakehouse(), both)

    assert [p.site_id for p in published] == ["Clinic A", "uk_site"]
    assert [a["key"] for a in artifacts] == ["cgm-report-clinic-a", "cgm-report-uk-site"]
    reports = tmp_path / "home" / "reports"
    stored = reports / "clinic-a" / "2025-03-14" / "report.html"
    assert published[0].url == stored.resolve().as_uri()
    assert stored.read_text(encoding="utf-8") == (reports / "clinic-a" / "latest.html").read_text(
        encoding="utf-8")
    assert f"]({published[0].url})" in artifacts[0]["markdown"]
    assert "![AGP for Clinic A](data:image/png;base64," in artifacts[0]["markdown"]
    assert published[1].unit == "mmol/L" and published[1].headline["mean"] == "7.4 mmol/L"
    assert not list(reports.rglob("*.partial"))


def test_local_store_replaces_atomically(tmp_path: Path) -> None:
    store = LocalReportStore(tmp_path)
    store.put("s/latest.html", b"old", "text/html")
    stored = store.put("s/latest.html", b"new", "text/html")

    assert Path(re.sub("^file://", "", stored.location)).read_bytes() == b"new"


def test_headline_lines_speak_each_sites_unit() -> None:
    both = pl.concat([summary("us-site"), summary("uk-site", "mmol/L")])

    text = "\n".join(report_module.headline_lines(both))

    assert "Site uk-site: last 14 days (2025-03-01 to 2025-03-14), glucose in mmol/L" in text
    assert "mean 7.4 mmol/L, GMI 6.5% (47 mmol/mol), CV 33.8%, GRI 34 (zone B)" in text
    assert "mean 133 mg/dL, GMI 6.5%," in text
    assert "(<3.0: 0.5%)" in text and "(<54: 0.5%)" in text
    assert text.rstrip().endswith(report_module.NOT_A_MEDICAL_DEVICE)


def test_chain_summary_names_what_landed_the_tag_and_each_sites_report(tmp_path: Path) -> None:
    published = PublishedReport(
        "uk-site", "mmol/L", "file:///r/uk-site/2025-03-14/report.html", "file:///r",
        "file:///r/uk-site/latest.html", "cgm-report-uk-site",
        report_module.headline(build_report(marts("uk-site", "mmol/L"), "uk-site", tmp_path)))

    landed = {"entries": TableCounts(fetched=290, duplicates=2, rejected=0, committed=288)}
    text = report_module.chain_summary_markdown("daily", "run-daily-1", "promoted-1", landed,
                                                [published])

    assert "# Cascade daily: promoted as promoted-1" in text
    assert "| entries | 288 | 2 | 0 |" in text
    assert "## uk-site: last 14 days (2025-03-01 – 2025-03-14), mmol/L" in text
    assert ("| 94.2% | 72.5% | 3.5% | 24.0% | 7.4 mmol/L | 6.5% (47 mmol/mol) | 33.8% "
            "| 34 (B) |") in text
    assert "[HTML report](file:///r/uk-site/2025-03-14/report.html)" in text
    assert report_module.NOT_A_MEDICAL_DEVICE in text


def test_artifact_markdown_carries_each_goal_beside_its_metric(tmp_path: Path) -> None:
    markdown = report_markdown(build_report(marts("uk-site", "mmol/L"), "uk-site", tmp_path),
                               "file:///r.html")

    assert "| Metric (goal) | Last 14 days | Last 90 days |" in markdown
    assert "| Time in range 3.9–10.0 mmol/L (> 70%) | 72.5% ✓ | 72.5% ✓ |" in markdown
    assert "| Mean glucose | 7.4 mmol/L | 7.4 mmol/L |" in markdown
    assert "Full report (HTML): [uk-site](file:///r.html)" in markdown
