"""Pictures of the gold marts, drawn the way clinicians read CGM data.

* ``render_agp``: the Ambulatory Glucose Profile from ``mrt_agp_hourly``.
* ``render_tir``: daily time-in-range bars from ``mrt_daily_glycaemia``.
* ``render_report``: both PNGs and a self-contained HTML page for one site.
* ``period_summary``: the period's numbers behind the HTML and the pipeline printout.

Ranges and goals follow the International Consensus on Time in Range (Battelino et al.,
Diabetes Care 2019); GMI follows Bergenstal et al., Diabetes Care 2018. Figures are built
with matplotlib's object API on the Agg canvas, never pyplot, so tasks may draw in threads.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "TARGETS",
    "ChartSet",
    "Target",
    "period_summary",
    "render_agp",
    "render_charts_task",
    "render_report",
    "render_tir",
]

_AGP_COLUMNS: Final = ("site_id", "local_hour", "p05", "p25", "p50", "p75", "p95", "n_readings")
_DAILY_COLUMNS: Final = (
    "site_id",
    "local_date",
    "n_readings",
    "coverage_pct",
    "mean_mg_dl",
    "sd_mg_dl",
    "tir_pct",
    "tbr_pct",
    "tbr_severe_pct",
    "tar_pct",
    "tar_severe_pct",
)
_PCT_COLUMNS: Final = ("tir_pct", "tbr_pct", "tbr_severe_pct", "tar_pct", "tar_severe_pct")
_DPI: Final = 100
_GREEN: Final = "#2e9e44"


@dataclass(frozen=True)
class Target:
    """One consensus goal: ``metric`` must be ``op`` ``limit``."""

    metric: str
    label: str
    op: Literal["<", ">", "≤"]
    limit: float

    def is_met(self, value: float) -> bool:
        """Whether ``value`` meets the goal (NaN never does)."""
        if self.op == ">":
            return value > self.limit
        return value < self.limit if self.op == "<" else value <= self.limit

    @property
    def goal(self) -> str:
        return f"{self.op} {self.limit:g}%"


# Battelino et al. 2019, goals for most adults with type 1 or type 2 diabetes. TBR and TAR
# goals cover their severe bands too (TBR < 4% includes < 54 mg/dL). CV ≤ 36% is the same
# consensus's threshold for stable glucose.
TARGETS: Final = (
    Target("tir_pct", "Time in range 70–180 mg/dL", ">", 70.0),
    Target("tbr_pct", "Time below 70 mg/dL", "<", 4.0),
    Target("tbr_severe_pct", "Time below 54 mg/dL", "<", 1.0),
    Target("tar_pct", "Time above 180 mg/dL", "<", 25.0),
    Target("tar_severe_pct", "Time above 250 mg/dL", "<", 5.0),
    Target("cv_pct", "Coefficient of variation", "≤", 36.0),
)

# The five consensus bands, bottom to top, as (label, colour).
_BANDS: Final = (
    ("Very low <54", "#8b0000"),
    ("Low 54–69", "#e0302a"),
    ("In range 70–180", _GREEN),
    ("High 181–250", "#f5c518"),
    ("Very high >250", "#e06c00"),
)


@dataclass(frozen=True)
class ChartSet:
    """The files drawn for one site."""

    site_id: str
    agp_png: Path
    tir_png: Path
    report_html: Path


def _site_rows(
    frame: pl.DataFrame, site_id: str, mart: str, columns: tuple[str, ...]
) -> pl.DataFrame:
    """The mart's rows for one site, or a ValueError naming what is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{mart} lacks column(s) {', '.join(missing)}: pass the mart as dbt builds it"
        )
    rows = frame.filter(pl.col("site_id") == site_id)
    if rows.is_empty():
        present = ", ".join(sorted(frame["site_id"].unique().cast(pl.String).to_list())) or "none"
        raise ValueError(f"{mart} has no rows for site {site_id!r} (sites present: {present})")
    return rows


def _slug(site_id: str) -> str:
    """``site_id`` reduced to ``[a-z0-9-]``, for file names and Prefect artifact keys."""
    slug = re.sub(r"[^a-z0-9]+", "-", site_id.lower()).strip("-")
    return slug or "site"


def _new_figure(width_px: int, height_px: int) -> Figure:
    return Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png", facecolor="white")
    return path


# ---------------------------------------------------------------------------- AGP


def _agp_curves(rows: pl.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Percentiles at each hour's midpoint, wrapped one hour each side so the day closes.

    Missing hours stay NaN, so the bands show a gap instead of inventing a value.
    """
    hours = pl.DataFrame({"local_hour": pl.int_range(0, 24, eager=True)})
    grid = hours.join(
        rows.with_columns(pl.col("local_hour").cast(pl.Int64)), on="local_hour", how="left"
    )
    x = np.arange(-0.5, 25.0, 1.0)  # 23 h wrapped to -0.5, 0..23 at h + 0.5, 0 h wrapped to 24.5
    curves = {}
    for name in ("p05", "p25", "p50", "p75", "p95"):
        y = grid[name].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        curves[name] = np.concatenate([y[-1:], y, y[:1]])
    return x, curves


def _draw_glucose_guides(ax: Axes) -> None:
    """Target zone 70–180 and the 54/250 thresholds."""
    ax.axhspan(70, 180, color=_GREEN, alpha=0.08, lw=0)
    ax.axhline(70, color=_GREEN, lw=1.2)
    ax.axhline(180, color=_GREEN, lw=1.2)
    ax.axhline(54, color="#8b0000", lw=1, ls="--")
    ax.axhline(250, color="#e06c00", lw=1, ls="--")


def _style_agp_axes(ax: Axes) -> None:
    ax.set_xlim(0, 24)
    ax.set_ylim(40, 400)
    ax.set_xticks(range(0, 25, 3), [f"{h:02d}:00" for h in range(0, 25, 3)])
    ax.set_yticks([40, 54, 70, 100, 140, 180, 250, 300, 350, 400])
    ax.set_xlabel("Time of day (local)")
    ax.set_ylabel("Glucose (mg/dL)")
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9, ncols=2)


def render_agp(agp: pl.DataFrame, site_id: str, path: Path, *, title: str | None = None) -> Path:
    """Draw one site's Ambulatory Glucose Profile as a 1000×500 PNG.

    Args:
        agp: ``mrt_agp_hourly`` rows, one or several sites.
        site_id: the site to draw.
        path: where to write the PNG (parents are created).
        title: heading to use instead of "Ambulatory Glucose Profile".

    Returns:
        ``path``.

    Raises:
        ValueError: the frame lacks a mart column or has no rows for ``site_id``.
    """
    rows = _site_rows(agp, site_id, "mrt_agp_hourly", _AGP_COLUMNS)
    x, c = _agp_curves(rows)
    n_readings = int(rows["n_readings"].sum())
    fig = _new_figure(1000, 500)
    ax = fig.add_subplot()
    _draw_glucose_guides(ax)
    ax.fill_between(x, c["p05"], c["p95"], color="#aec7e8", lw=0, label="5th–95th percentile")
    ax.fill_between(x, c["p25"], c["p75"], color="#4a7fb5", lw=0, label="25th–75th percentile")
    ax.plot(x, c["p50"], color="#0b2f6b", lw=2.5, label="Median")
    ax.plot([], [], color=_GREEN, lw=1.2, label="Target 70–180 mg/dL")
    ax.plot([], [], color="#555555", lw=1, ls="--", label="54 / 250 mg/dL")
    hours = rows["local_hour"].n_unique()
    ax.set_title(
        f"{title or 'Ambulatory Glucose Profile'} — {site_id}\n"
        f"{n_readings:,} readings, {hours} of 24 hours",
        fontsize=11,
    )
    _style_agp_axes(ax)
    return _save(fig, path)


# ---------------------------------------------------------------------------- TIR


def _band_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """The five consensus bands, bottom to top, from the mart's nested percentages."""
    return frame.select(
        pl.col("tbr_severe_pct").alias("very_low"),
        (pl.col("tbr_pct") - pl.col("tbr_severe_pct")).clip(lower_bound=0).alias("low"),
        pl.col("tir_pct").alias("in_range"),
        (pl.col("tar_pct") - pl.col("tar_severe_pct")).clip(lower_bound=0).alias("high"),
        pl.col("tar_severe_pct").alias("very_high"),
    ).fill_null(0.0)


def _draw_daily_bars(ax: Axes, rows: pl.DataFrame) -> None:
    """One stacked bar per local date; dates on a real axis so missing days show as gaps."""
    days = mdates.date2num(  # type: ignore[no-untyped-call]
        rows["local_date"].cast(pl.Date).to_list()
    )
    bottom = np.zeros(len(days))
    for (label, colour), band in zip(_BANDS, _band_columns(rows).iter_columns(), strict=True):
        values = band.to_numpy()
        ax.bar(days, values, bottom=bottom, width=0.8, color=colour, label=label, lw=0)
        bottom += values
    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.set_xlim(days.min() - 0.7, days.max() + 0.7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of readings")
    ax.set_title("Daily time in ranges", fontsize=10)
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def _draw_period_bar(ax: Axes, summary: dict[str, float]) -> None:
    """The whole period as one stacked bar, each band and goal listed beside it."""
    bands = _band_columns(pl.DataFrame({k: [summary[k]] for k in _PCT_COLUMNS})).row(0)
    bottom = 0.0
    for (_, colour), value in zip(_BANDS, bands, strict=True):
        ax.bar([0], [value], bottom=bottom, width=0.6, color=colour, lw=0)
        bottom += value
    ax.set_xlim(-0.5, 0.5)
    ax.set_ylim(0, 100)
    ax.set_xticks([])
    ax.tick_params(labelleft=False)
    ax.set_title("Period", fontsize=10)
    handles = [Patch(color=colour) for _, colour in reversed(_BANDS)]
    labels = [
        f"{label}: {value:.1f}%"
        for (label, _), value in zip(reversed(_BANDS), reversed(bands), strict=True)
    ]
    handles.append(Patch(color="none"))
    labels.append("Consensus goals:\n" + "\n".join(_goal_lines(summary)))
    ax.legend(
        handles, labels, loc="center left", bbox_to_anchor=(1.1, 0.5), fontsize=8, frameon=False
    )


def _mark(target: Target, summary: dict[str, float]) -> str:
    return "✓" if target.is_met(summary[target.metric]) else "✗"


def _goal_lines(summary: dict[str, float]) -> list[str]:
    return [
        f"{_mark(t, summary)} {t.label} {t.goal} ({summary[t.metric]:.1f}%)"
        for t in TARGETS
        if t.metric in _PCT_COLUMNS
    ]


def render_tir(daily: pl.DataFrame, site_id: str, path: Path) -> Path:
    """Draw one site's daily time-in-range bars and the period's bar as a 1200×500 PNG.

    Args:
        daily: ``mrt_daily_glycaemia`` rows, one or several sites.
        site_id: the site to draw.
        path: where to write the PNG (parents are created).

    Returns:
        ``path``.

    Raises:
        ValueError: the frame lacks a mart column or has no rows for ``site_id``.
    """
    rows = _site_rows(daily, site_id, "mrt_daily_glycaemia", _DAILY_COLUMNS).sort("local_date")
    summary = period_summary(rows, site_id)
    fig = _new_figure(1200, 500)
    days_ax, period_ax = fig.subplots(1, 2, width_ratios=[5, 0.6])
    _draw_daily_bars(days_ax, rows)
    _draw_period_bar(period_ax, summary)
    fig.suptitle(
        f"Time in ranges — {site_id}: {rows.height} days, {int(summary['n_readings']):,} readings",
        fontsize=11,
    )
    return _save(fig, path)


# ---------------------------------------------------------------------------- summary


def period_summary(daily: pl.DataFrame, site_id: str) -> dict[str, float]:
    """Summarise one site's period from its daily rows, each day weighted by its readings.

    Percentages and the mean glucose are reading-weighted means of the daily values, which
    equal the values over all readings. GMI (%) = 3.31 + 0.02392 × mean mg/dL. The SD is
    the pooled sample SD rebuilt from each day's count, mean and sample SD by the law of
    total variance: Σ[(nᵢ−1)sᵢ² + nᵢ(mᵢ−m)²] / (N−1). It is exact only if the daily rows
    were computed from exactly ``n_readings`` readings, and approximate otherwise (rounded
    marts, days whose SD is missing, which count as 0); CV = 100 × SD / mean.

    Args:
        daily: ``mrt_daily_glycaemia`` rows, one or several sites.
        site_id: the site to summarise.

    Returns:
        ``n_days``, ``n_readings``, ``coverage_pct`` (pooled over days that report it,
        NaN if none), ``mean_mg_dl``, ``sd_mg_dl``, ``cv_pct``, ``gmi_pct`` and the five
        ``*_pct`` time-in-range values. SD and CV are NaN below two readings.

    Raises:
        ValueError: the frame lacks a mart column, has no rows for ``site_id``, or its
            rows hold no readings.
    """
    rows = _site_rows(daily, site_id, "mrt_daily_glycaemia", _DAILY_COLUMNS)
    n = pl.col("n_readings").cast(pl.Float64)
    total = rows.select(n.sum()).item()
    if not total:
        raise ValueError(f"mrt_daily_glycaemia holds no readings for site {site_id!r}")
    weighted = rows.select(
        pl.len().cast(pl.Float64).alias("n_days"),
        n.sum().alias("n_readings"),
        *[((pl.col(c) * n).sum() / total).alias(c) for c in ("mean_mg_dl", *_PCT_COLUMNS)],
    ).row(0, named=True)
    sd = _pooled_sd(rows, weighted["mean_mg_dl"], total)
    return {
        **weighted,
        "coverage_pct": _pooled_coverage(rows),
        "sd_mg_dl": sd,
        "cv_pct": 100.0 * sd / weighted["mean_mg_dl"],
        "gmi_pct": 3.31 + 0.02392 * weighted["mean_mg_dl"],
    }


def _pooled_sd(rows: pl.DataFrame, mean: float, total: float) -> float:
    if total < 2:
        return math.nan
    n = pl.col("n_readings").cast(pl.Float64)
    within = ((n - 1) * pl.col("sd_mg_dl").fill_null(0.0) ** 2).sum()
    between = (n * (pl.col("mean_mg_dl") - mean) ** 2).sum()
    return math.sqrt(rows.select(within + between).item() / (total - 1))


def _pooled_coverage(rows: pl.DataFrame) -> float:
    """Readings over expected readings across the days that report coverage."""
    known = rows.filter(pl.col("coverage_pct") > 0)
    if known.is_empty():
        return math.nan
    n = pl.col("n_readings").cast(pl.Float64)
    expected = (n * 100.0 / pl.col("coverage_pct")).sum()
    return float(known.select(100.0 * n.sum() / expected).item())


# ---------------------------------------------------------------------------- report


def _summary_rows(summary: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """(metric, value, goal, ✓/✗) rows of the period table."""
    rows = [
        ("Days", f"{summary['n_days']:.0f}", "", ""),
        ("Readings", f"{summary['n_readings']:,.0f}", "", ""),
        ("CGM coverage", f"{summary['coverage_pct']:.1f}%", "", ""),
        ("Mean glucose", f"{summary['mean_mg_dl']:.1f} mg/dL", "", ""),
        ("GMI", f"{summary['gmi_pct']:.2f}%", "", ""),
    ]
    for t in TARGETS:
        value = summary[t.metric]
        rows.append((t.label, f"{value:.1f}%", t.goal, _mark(t, summary)))
    return rows


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_HTML: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CGM report — {site}</title>
<style>body{{font-family:sans-serif;max-width:1240px;margin:1em auto;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>CGM report — {site}</h1>
<p>{first} to {last}. Goals: International Consensus on Time in Range (Battelino et al., 2019).</p>
<table><thead><tr><th>Metric</th><th>Value</th><th>Goal</th><th>Met</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Ambulatory Glucose Profile</h2><img alt="AGP for {site}" src="{agp}">
<h2>Time in ranges</h2><img alt="Time in ranges for {site}" src="{tir}">
</body></html>
"""


def _report_html(
    site_id: str, daily_rows: pl.DataFrame, summary: dict[str, float], agp_png: Path, tir_png: Path
) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in _summary_rows(summary)
    )
    first, last = daily_rows.select(
        pl.col("local_date").min().cast(pl.String).alias("first"),
        pl.col("local_date").max().cast(pl.String).alias("last"),
    ).row(0)
    return _HTML.format(
        site=html.escape(site_id),
        rows=cells,
        first=first,
        last=last,
        agp=_png_data_uri(agp_png),
        tir=_png_data_uri(tir_png),
    )


def render_report(agp: pl.DataFrame, daily: pl.DataFrame, site_id: str, out_dir: Path) -> ChartSet:
    """Write one site's AGP and TIR PNGs and a self-contained ``report-<site>.html``.

    Args:
        agp: ``mrt_agp_hourly`` rows, one or several sites.
        daily: ``mrt_daily_glycaemia`` rows, one or several sites.
        site_id: the site to report.
        out_dir: directory for the three files (created if missing); names use the
            site reduced to ``[a-z0-9-]``.

    Returns:
        The paths written.

    Raises:
        ValueError: either mart lacks a column or has no rows for ``site_id``.
    """
    slug = _slug(site_id)
    daily_rows = _site_rows(daily, site_id, "mrt_daily_glycaemia", _DAILY_COLUMNS)
    agp_png = render_agp(agp, site_id, out_dir / f"agp-{slug}.png")
    tir_png = render_tir(daily_rows, site_id, out_dir / f"tir-{slug}.png")
    report = out_dir / f"report-{slug}.html"
    page = _report_html(site_id, daily_rows, period_summary(daily_rows, site_id), agp_png, tir_png)
    report.write_text(page, encoding="utf-8")
    return ChartSet(site_id=site_id, agp_png=agp_png, tir_png=tir_png, report_html=report)


# ---------------------------------------------------------------------------- Prefect

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError

from tasks import timeouts


def _artifact_markdown(charts: ChartSet, summary: dict[str, float]) -> str:
    """Markdown for a site's artifact: summary table, both images inline, link to the HTML."""
    table = ["| Metric | Value | Goal | Met |", "|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in _summary_rows(summary)]
    return "\n".join(
        [
            f"# CGM report — {charts.site_id}",
            "",
            *table,
            "",
            f"![AGP for {charts.site_id}]({_png_data_uri(charts.agp_png)})",
            "",
            f"![Time in ranges for {charts.site_id}]({_png_data_uri(charts.tir_png)})",
            "",
            f"Full report: [{charts.report_html.name}]({charts.report_html.resolve().as_uri()})",
        ]
    )


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(name="render-charts", timeout_seconds=timeouts.CHARTS)
def render_charts_task(agp: pl.DataFrame, daily: pl.DataFrame, out_dir: Path) -> list[ChartSet]:
    """Render every site present in both marts and publish an ``agp-<site>`` artifact each."""
    logger = _logger()
    agp_sites = set(agp["site_id"].unique().to_list())
    daily_sites = set(daily["site_id"].unique().to_list())
    if skipped := sorted(agp_sites ^ daily_sites):
        logger.warning("charts: skipping site(s) %s, present in only one mart", ", ".join(skipped))
    chart_sets = []
    for site_id in sorted(agp_sites & daily_sites):
        charts = render_report(agp, daily, site_id, out_dir)
        summary = period_summary(daily, site_id)
        create_markdown_artifact(
            markdown=_artifact_markdown(charts, summary),
            key=f"agp-{_slug(site_id)}",
            description=f"AGP and time in ranges for {site_id}",
        )
        logger.info(
            "charts: site=%s, %d days, TIR %.1f%% → %s",
            site_id,
            summary["n_days"],
            summary["tir_pct"],
            charts.report_html,
        )
        chart_sets.append(charts)
    return chart_sets
