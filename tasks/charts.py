"""Pictures of a site's report period, drawn the way clinicians read CGM data.

* ``render_agp``: the Ambulatory Glucose Profile from ``mrt_agp_hourly_14d`` (or any
  AGP mart with the same columns).
* ``render_tir``: daily time-in-range bars, the daily CGM coverage under them and the
  period's bar beside them, from ``mrt_daily_glycaemia`` and ``mrt_quality_coverage``.

Values arrive in mg/dL and are drawn in the site's unit (``tasks.units``). Ranges and
goals follow the International Consensus on Time in Range (Battelino et al., Diabetes
Care 2019). Figures use matplotlib's object API on the Agg canvas, never pyplot, so tasks
may draw in threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tasks.units import Scale, scale_for

__all__ = [
    "AGP_COLUMNS",
    "BAND_COLOURS",
    "DAILY_COLUMNS",
    "TARGETS",
    "Target",
    "render_agp",
    "render_tir",
    "site_rows",
]

AGP_COLUMNS: Final = ("site_id", "local_hour", "p05", "p25", "p50", "p75", "p95", "n_readings")
DAILY_COLUMNS: Final = (
    "site_id", "local_date", "n_readings", "tir_pct", "tbr_pct", "tbr_severe_pct", "tar_pct",
    "tar_severe_pct",
)
_DPI: Final = 100
_GREEN: Final = "#2e9e44"
BAND_COLOURS: Final = ("#8b0000", "#e0302a", _GREEN, "#f5c518", "#e06c00")  # bottom to top


@dataclass(frozen=True)
class Target:
    """One consensus goal: ``metric`` must be ``op`` ``limit`` (a percentage)."""

    metric: str
    label: str  # "{54}" etc. are filled with the unit's thresholds
    op: Literal["<", ">", "≤", "≥"]
    limit: float

    def is_met(self, value: float) -> bool:
        """Whether ``value`` meets the goal (NaN never does)."""
        return {
            ">": value > self.limit, "<": value < self.limit,
            "≤": value <= self.limit, "≥": value >= self.limit,
        }[self.op]

    @property
    def goal(self) -> str:
        return f"{self.op} {self.limit:g}%"

    def title(self, scale: Scale) -> str:
        t = {n: scale.threshold(n) for n in (54, 70, 180, 250)}
        return self.label.format(unit=scale.unit, **{f"t{k}": v for k, v in t.items()})


# Battelino et al. 2019, goals for most adults with type 1 or type 2 diabetes. TBR and TAR
# goals cover their severe bands too (TBR < 4% includes < 54 mg/dL). CV ≤ 36% is the same
# consensus's threshold for stable glucose; ≥ 70 % of the period active is its sufficiency.
TARGETS: Final = (
    Target("active_pct", "Time CGM active", "≥", 70.0),
    Target("tar_severe_pct", "Time above {t250} {unit} (very high)", "<", 5.0),
    Target("tar_pct", "Time above {t180} {unit} (high + very high)", "<", 25.0),
    Target("tir_pct", "Time in range {t70}–{t180} {unit}", ">", 70.0),
    Target("tbr_pct", "Time below {t70} {unit} (low + very low)", "<", 4.0),
    Target("tbr_severe_pct", "Time below {t54} {unit} (very low)", "<", 1.0),
    Target("cv_pct", "Coefficient of variation", "≤", 36.0),
)


def site_rows(frame: pl.DataFrame, site_id: str, mart: str,
              columns: tuple[str, ...]) -> pl.DataFrame:
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


def _new_figure(width_px: int, height_px: int) -> Figure:
    return Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png", facecolor="white")
    return path


# ---------------------------------------------------------------------------- AGP


def _agp_curves(rows: pl.DataFrame, scale: Scale) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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
        curves[name] = np.concatenate([y[-1:], y, y[:1]]) * scale.value(1.0)
    return x, curves


def _draw_glucose_guides(ax: Axes, scale: Scale) -> None:
    """Target zone 70–180 mg/dL (3.9–10.0 mmol/L) and the 54/250 thresholds."""
    low, high = scale.value(70), scale.value(180)
    ax.axhspan(low, high, color=_GREEN, alpha=0.08, lw=0)
    ax.axhline(low, color=_GREEN, lw=1.2)
    ax.axhline(high, color=_GREEN, lw=1.2)
    ax.axhline(scale.value(54), color=BAND_COLOURS[0], lw=1, ls="--")
    ax.axhline(scale.value(250), color=BAND_COLOURS[4], lw=1, ls="--")


def _style_agp_axes(ax: Axes, scale: Scale) -> None:
    ax.set_xlim(0, 24)
    ax.set_ylim(*scale.axis_limits())
    ax.set_xticks(range(0, 25, 3), [f"{h:02d}:00" for h in range(0, 25, 3)])
    ticks = scale.axis_ticks()
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("Time of day (local)")
    ax.set_ylabel(f"Glucose ({scale.unit})")
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9, ncols=2)


def render_agp(agp: pl.DataFrame, site_id: str, path: Path, *, unit: str = "mg/dL",
               title: str | None = None) -> Path:
    """Draw one site's Ambulatory Glucose Profile as a 1000×500 PNG.

    Args:
        agp: AGP mart rows (``mrt_agp_hourly_14d``), one or several sites, in mg/dL.
        site_id: the site to draw.
        path: where to write the PNG (parents are created).
        unit: ``mg/dL`` or ``mmol/L``: the axis, values and thresholds drawn.
        title: heading to use instead of "Ambulatory Glucose Profile".

    Returns:
        ``path``.

    Raises:
        ValueError: the frame lacks a mart column or has no rows for ``site_id``.
    """
    scale = scale_for(unit)
    rows = site_rows(agp, site_id, "mrt_agp_hourly_14d", AGP_COLUMNS)
    x, c = _agp_curves(rows, scale)
    n_readings = int(rows["n_readings"].sum())
    fig = _new_figure(1000, 500)
    ax = fig.add_subplot()
    _draw_glucose_guides(ax, scale)
    ax.fill_between(x, c["p05"], c["p95"], color="#aec7e8", lw=0, label="5th–95th percentile")
    ax.fill_between(x, c["p25"], c["p75"], color="#4a7fb5", lw=0, label="25th–75th percentile")
    ax.plot(x, c["p50"], color="#0b2f6b", lw=2.5, label="Median")
    t = scale.threshold
    ax.plot([], [], color=_GREEN, lw=1.2, label=f"Target {t(70)}–{t(180)} {scale.unit}")
    ax.plot([], [], color="#555555", lw=1, ls="--", label=f"{t(54)} / {t(250)} {scale.unit}")
    hours = rows["local_hour"].n_unique()
    ax.set_title(
        f"{title or 'Ambulatory Glucose Profile'} — {site_id}\n"
        f"{n_readings:,} readings, {hours} of 24 hours",
        fontsize=11,
    )
    _style_agp_axes(ax, scale)
    return _save(fig, path)


# ---------------------------------------------------------------------------- TIR


def _band_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """The five consensus bands, bottom to top, from the nested percentages."""
    return frame.select(
        pl.col("tbr_severe_pct").alias("very_low"),
        (pl.col("tbr_pct") - pl.col("tbr_severe_pct")).clip(lower_bound=0).alias("low"),
        pl.col("tir_pct").alias("in_range"),
        (pl.col("tar_pct") - pl.col("tar_severe_pct")).clip(lower_bound=0).alias("high"),
        pl.col("tar_severe_pct").alias("very_high"),
    ).fill_null(0.0)


def _date_axis(ax: Axes, first: date, last: date) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    lo, hi = mdates.date2num([first, last])  # type: ignore[no-untyped-call]
    ax.set_xlim(lo - 0.7, hi + 0.7)


def _draw_daily_bars(ax: Axes, rows: pl.DataFrame, scale: Scale) -> None:
    """One stacked bar per local date; dates on a real axis so missing days show as gaps."""
    days = mdates.date2num(  # type: ignore[no-untyped-call]
        rows["local_date"].cast(pl.Date).to_list()
    )
    bottom = np.zeros(len(days))
    for label, colour, band in zip(scale.band_labels(), BAND_COLOURS,
                                   _band_columns(rows).iter_columns(), strict=True):
        values = band.to_numpy()
        ax.bar(days, values, bottom=bottom, width=0.8, color=colour, label=label, lw=0)
        bottom += values
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of readings")
    ax.set_title("Daily time in ranges", fontsize=10)
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def _draw_coverage(ax: Axes, coverage: pl.DataFrame, first: date, last: date) -> None:
    """Daily CGM coverage; days of the period without a row show as 0 and are marked."""
    span = pl.DataFrame({"local_date": pl.date_range(first, last, "1d", eager=True)})
    daily = span.join(coverage.select("local_date", "coverage_pct"), on="local_date",
                      how="left").with_columns(pl.col("coverage_pct").fill_null(0.0))
    x = mdates.date2num(daily["local_date"].to_list())  # type: ignore[no-untyped-call]
    values = daily["coverage_pct"].to_numpy()
    colours = ["#4a7fb5" if v >= 70 else "#c0392b" for v in values]
    ax.bar(x, values, width=0.8, color=colours, lw=0)
    empty = x[values == 0]
    ax.plot(empty, np.full(empty.size, 4.0), "x", color="#c0392b", ms=6)
    ax.axhline(70, color="#555555", lw=0.8, ls=":")
    ax.set_ylim(0, 100)
    ax.set_ylabel("CGM\ncoverage %")
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def _draw_period_bar(ax: Axes, summary: Mapping[str, Any], scale: Scale) -> None:
    """The whole period as one stacked bar, each band and goal listed beside it."""
    bands = [float(summary[k] or 0.0) for k in
             ("very_low_pct", "low_pct", "tir_pct", "high_pct", "very_high_pct")]
    bottom = 0.0
    for colour, value in zip(BAND_COLOURS, bands, strict=True):
        ax.bar([0], [value], bottom=bottom, width=0.6, color=colour, lw=0)
        bottom += value
    ax.set_xlim(-0.5, 0.5)
    ax.set_ylim(0, 100)
    ax.set_xticks([])
    ax.tick_params(labelleft=False)
    ax.set_title("Period", fontsize=10)
    handles = [Patch(color=colour) for colour in reversed(BAND_COLOURS)]
    labels = [f"{label}: {value:.1f}%" for label, value in
              zip(reversed(scale.band_labels()), reversed(bands), strict=True)]
    ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.1, 0.5), fontsize=8,
              frameon=False)


def render_tir(daily: pl.DataFrame, site_id: str, path: Path, *,
               summary: Mapping[str, Any], coverage: pl.DataFrame | None = None,
               unit: str = "mg/dL") -> Path:
    """Draw a period's daily time-in-range bars, coverage and period bar as a 1200×560 PNG.

    Args:
        daily: ``mrt_daily_glycaemia`` rows, one or several sites; only the days from
            ``summary``'s ``start_date`` to ``end_date`` are drawn.
        site_id: the site to draw.
        path: where to write the PNG (parents are created).
        summary: the site's ``mrt_period_summary`` row for the period.
        coverage: ``mrt_quality_coverage`` rows for the coverage strip (optional).
        unit: ``mg/dL`` or ``mmol/L`` for the band labels.

    Returns:
        ``path``.

    Raises:
        ValueError: ``daily`` lacks a mart column or has no rows for ``site_id``.
    """
    scale = scale_for(unit)
    first, last = summary["start_date"], summary["end_date"]
    rows = site_rows(daily, site_id, "mrt_daily_glycaemia", DAILY_COLUMNS).filter(
        pl.col("local_date").is_between(first, last)).sort("local_date")
    fig = _new_figure(1200, 560)
    grid = fig.add_gridspec(2, 2, width_ratios=[5, 0.6], height_ratios=[3, 1])
    days_ax = fig.add_subplot(grid[0, 0])
    _draw_daily_bars(days_ax, rows, scale)
    _date_axis(days_ax, first, last)
    cover_ax = fig.add_subplot(grid[1, 0], sharex=days_ax)
    cover = (coverage.filter(pl.col("site_id") == site_id) if coverage is not None
             else rows.select("local_date", pl.lit(None, pl.Float64).alias("coverage_pct")))
    _draw_coverage(cover_ax, cover, first, last)
    days_ax.tick_params(labelbottom=False)  # the coverage strip below carries the dates
    days_ax.xaxis.get_offset_text().set_visible(False)
    _draw_period_bar(fig.add_subplot(grid[:, 1]), summary, scale)
    n_days = (last - first + timedelta(days=1)).days
    fig.suptitle(
        f"Time in ranges — {site_id}: {first} to {last} ({n_days} days), "
        f"{int(summary['n_readings']):,} readings, {summary['active_pct']:.0f}% active",
        fontsize=11,
    )
    return _save(fig, path)
