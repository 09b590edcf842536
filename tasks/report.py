"""The report clinicians read: one site's consensus summary, AGP and daily ranges.

``build_report`` assembles a site's report from the marts (``mrt_period_summary``,
``mrt_agp_hourly_14d``, ``mrt_daily_glycaemia``, ``mrt_quality_coverage``) in the site's
display unit; ``report_html`` and ``report_markdown`` write it out; ``publish_reports_task``
renders every site, stores each report in the lakehouse's storage (``tasks.report_store``)
and leaves one Prefect artifact per site (key ``cgm-report-<site>``, so the UI keeps its
history). The report period is the last 14 days (the consensus AGP report); the table
also shows the last 90 days and a requested range when the marts hold one.

Not a medical device: every report says so.
"""

from __future__ import annotations

import base64
import html
import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tasks import timeouts
from tasks.charts import TARGETS, render_agp, render_tir
from tasks.ingest import TableCounts
from tasks.profile import Lakehouse
from tasks.redaction import redact
from tasks.report_store import report_store_for
from tasks.results import PublishedReport
from tasks.units import GlucoseUnit, Scale, resolve_unit

__all__ = [
    "NOT_A_MEDICAL_DEVICE",
    "PERIODS",
    "SiteReport",
    "build_report",
    "chain_summary_markdown",
    "chain_summary_task",
    "headline",
    "headline_lines",
    "publish_reports_task",
    "report_html",
    "report_markdown",
    "slug",
    "summary_table",
]

PERIODS: Final = ("last_14d", "last_90d", "requested")
_PERIOD_TITLES: Final = {"last_14d": "Last 14 days", "last_90d": "Last 90 days",
                         "requested": "Requested range"}
_NOTE: Final = (
    "This report summarises data uploaded to Nightscout; it is not a diagnosis and must not "
    "be used to make treatment decisions without your diabetes care team."
)
NOT_A_MEDICAL_DEVICE: Final = f"Cascade is not a medical device. {_NOTE}"
_CITATION: Final = (
    "Ranges and goals: International Consensus on Time in Range (Battelino et al., Diabetes "
    "Care 2019) and its 2023 update (Lancet Diabetes Endocrinol). GMI: Bergenstal et al., "
    "Diabetes Care 2018. GRI: Klonoff et al., J Diabetes Sci Technol 2023."
)
_EPISODES: Final = (
    ("hypo_l1", "Hypoglycaemia episodes <{t70} {unit} (≥ 15 min)"),
    ("hypo_l2", "Level 2 hypoglycaemia <{t54} {unit} (≥ 15 min)"),
    ("hyper_l1", "Hyperglycaemia episodes >{t180} {unit} (≥ 15 min)"),
    ("hyper_l2", "Level 2 hyperglycaemia >{t250} {unit} (≥ 15 min)"),
)


@dataclass(frozen=True)
class SiteReport:
    """One site's report: its periods' summary rows and the pictures of the 14 days."""

    site_id: str
    unit: GlucoseUnit
    periods: list[dict[str, Any]]  # mrt_period_summary rows, in PERIODS order
    agp_png: Path | None  # None when the last 14 days hold no reading
    tir_png: Path | None

    @property
    def scale(self) -> Scale:
        return Scale(self.unit)

    @property
    def main(self) -> dict[str, Any]:
        """The report period's row (the last 14 days)."""
        return self.periods[0]


def slug(site_id: str) -> str:
    """``site_id`` reduced to ``[a-z0-9-]``, for file names and Prefect artifact keys."""
    return re.sub(r"[^a-z0-9]+", "-", site_id.lower()).strip("-") or "site"


# ---------------------------------------------------------------------------- assembly


def _period_rows(summary: pl.DataFrame, site_id: str) -> list[dict[str, Any]]:
    rows = {r["period"]: r for r in summary.filter(pl.col("site_id") == site_id)
            .iter_rows(named=True)}
    if "last_14d" not in rows:
        present = ", ".join(sorted(summary["site_id"].unique().to_list())) or "none"
        raise ValueError(f"mrt_period_summary has no last_14d row for site {site_id!r} "
                         f"(sites present: {present}): build the branch with dbt first")
    return [rows[p] for p in PERIODS if p in rows]


def build_report(marts: Mapping[str, pl.DataFrame], site_id: str, out_dir: Path,
                 units: str | None = None) -> SiteReport:
    """Draw one site's pictures for its last 14 days and gather its period rows.

    Args:
        marts: the marts by name; needs ``mrt_period_summary``, ``mrt_agp_hourly_14d``
            and ``mrt_daily_glycaemia``; ``mrt_quality_coverage`` adds the coverage strip.
        site_id: the site.
        out_dir: where the PNGs are drawn (scratch).
        units: ``mg/dL`` or ``mmol/L`` to override the site's display unit.

    Raises:
        ValueError: a mart is missing or has no rows for the site.
        ConfigError: ``units`` names no unit.
    """
    for name in ("mrt_period_summary", "mrt_agp_hourly_14d", "mrt_daily_glycaemia"):
        if name not in marts:
            raise ValueError(f"{name} is missing: publish needs it for the report")
    periods = _period_rows(marts["mrt_period_summary"], site_id)
    unit = resolve_unit(periods[0].get("display_unit"), units)
    main = periods[0]
    stem = out_dir / slug(site_id)
    agp_png = tir_png = None
    if main["n_readings"]:
        agp_png = render_agp(marts["mrt_agp_hourly_14d"], site_id, stem.with_suffix(".agp.png"),
                             unit=unit, title="Ambulatory Glucose Profile, last 14 days")
        tir_png = render_tir(marts["mrt_daily_glycaemia"], site_id,
                             stem.with_suffix(".tir.png"), summary=main,
                             coverage=marts.get("mrt_quality_coverage"), unit=unit)
    return SiteReport(site_id, unit, periods, agp_png, tir_png)


# ---------------------------------------------------------------------------- the table


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _gmi(value: float | None, scale: Scale) -> str:
    if value is None:
        return "—"
    if scale.is_mmol:  # IFCC units alongside, as UK and European labs report HbA1c
        return f"{value:.1f}% ({10.929 * (value - 2.15):.0f} mmol/mol)"
    return f"{value:.1f}%"


def _glucose(value: float | None, scale: Scale) -> str:
    return "—" if value is None else scale.text(value)


def _episodes(row: Mapping[str, Any], kind: str) -> str:
    n = int(row[f"n_{kind}_episodes"] or 0)
    if not n:
        return "0"
    return f"{n} (mean {row[f'{kind}_episode_min'] / n:.0f} min)"


def summary_table(report: SiteReport) -> list[tuple[str, list[str], str, list[str]]]:
    """(metric, value per period, goal, ✓/✗ per period) rows, in the site's unit."""
    scale, periods = report.scale, report.periods

    def row(label: str, cells: Sequence[str], goal: str = "",
            marks: Sequence[str] | None = None) -> tuple[str, list[str], str, list[str]]:
        return label, list(cells), goal, list(marks or [""] * len(periods))

    rows = [
        row("Period", [f"{p['start_date']} – {p['end_date']}" for p in periods]),
        row("Days with CGM data", [f"{p['n_days_with_readings']} of {p['n_days']}"
                                   for p in periods]),
        row("Data sufficiency (≥ 70 % active over ≥ 14 days)",
            ["sufficient" if p["is_sufficient"] else "insufficient" for p in periods]),
        row("Readings", [f"{p['n_readings']:,}" for p in periods]),
        row("Mean glucose", [_glucose(p["mean_mg_dl"], scale) for p in periods]),
        row("Glucose Management Indicator (GMI)", [_gmi(p["gmi_pct"], scale) for p in periods]),
        row("Standard deviation", [_glucose(p["sd_mg_dl"], scale) for p in periods]),
    ]
    for target in TARGETS:
        values = [p[target.metric] for p in periods]
        marks = ["" if v is None else ("✓" if target.is_met(float(v)) else "✗")
                 for v in values]
        rows.append(row(target.title(scale), [_pct(v) for v in values], target.goal, marks))
    rows.append(row("Glycemia Risk Index (zone A best … E)", [
        "—" if p["gri"] is None else f"{p['gri']:.1f} ({p['gri_zone']}; hypo "
        f"{p['gri_hypo']:.1f}, hyper {p['gri_hyper']:.1f})" for p in periods]))
    thresholds = {f"t{n}": scale.threshold(n) for n in (54, 70, 180, 250)}
    for kind, label in _EPISODES:
        rows.append(row(label.format(unit=scale.unit, **thresholds),
                        [_episodes(p, kind) for p in periods]))
    return rows


# ---------------------------------------------------------------------------- HTML


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_HTML: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CGM report — {site}</title>
<style>body{{font-family:sans-serif;max-width:1240px;margin:1em auto;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}
.note{{background:#fff4e5;border-left:4px solid #e06c00;padding:6px 10px}}
.warn{{background:#fdecea;border-left:4px solid #c0392b;padding:6px 10px}}
img{{max-width:100%}}</style></head><body>
<h1>CGM report — {site}</h1>
<p class="note"><strong>Cascade is not a medical device.</strong> {note}</p>
<p>Report period {first} to {last} (last 14 days of data), glucose in {unit}.</p>
{warning}
<table><thead><tr><th>Metric</th>{heads}<th>Goal</th></tr></thead>
<tbody>{rows}</tbody></table>
{pictures}
<p><small>{citation} Definitions: docs/metrics.md.</small></p>
</body></html>
"""


def _cell(value: str, mark: str) -> str:
    return f"<td>{html.escape(value)}{' ' + mark if mark else ''}</td>"


def report_html(report: SiteReport) -> str:
    """The self-contained HTML page (pictures inline) of one site's report."""
    table = summary_table(report)
    heads = "".join(f"<th>{_PERIOD_TITLES[p['period']]}</th>" for p in report.periods)
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(_cell(v, m) for v, m in zip(values, marks, strict=True))
        + f"<td>{html.escape(goal)}</td></tr>"
        for label, values, goal, marks in table
    )
    pictures = (
        f'<h2>Ambulatory Glucose Profile</h2><img alt="AGP for {html.escape(report.site_id)}" '
        f'src="{_data_uri(report.agp_png)}">'
        f'<h2>Time in ranges and CGM coverage</h2><img alt="Time in ranges for '
        f'{html.escape(report.site_id)}" src="{_data_uri(report.tir_png)}">'
        if report.agp_png and report.tir_png
        else "<p>No CGM readings in the last 14 days: nothing to draw.</p>"
    )
    main = report.main
    return _HTML.format(
        site=html.escape(report.site_id), note=html.escape(_NOTE),
        first=main["start_date"], last=main["end_date"], unit=report.unit,
        warning=_warning_html(main), heads=heads, rows=rows, pictures=pictures,
        citation=html.escape(_CITATION),
    )


def _insufficient(main: Mapping[str, Any]) -> str | None:
    if main["is_sufficient"]:
        return None
    return (f"Not enough data for the consensus summary: the sensor was active "
            f"{main['active_pct']:.0f}% of the last {main['n_days']} days (70% needed). "
            "Read these figures with care.")


def _warning_html(main: Mapping[str, Any]) -> str:
    text = _insufficient(main)
    return f'<p class="warn">{html.escape(text)}</p>' if text else ""


# ---------------------------------------------------------------------------- markdown


def report_markdown(report: SiteReport, link: str | None) -> str:
    """Markdown of a site's report for a Prefect artifact: table, pictures, link, note."""
    heads = " | ".join(_PERIOD_TITLES[p["period"]] for p in report.periods)
    lines = [
        f"# CGM report — {report.site_id}",
        "",
        f"**Cascade is not a medical device.** {_NOTE}",
        "",
        f"Glucose in {report.unit}. Report period: the last 14 days of data.",
        "",
    ]
    if text := _insufficient(report.main):
        lines += [f"> ⚠ {text}", ""]
    # the goal goes with the metric: the UI's artifact column is too narrow for a fourth one
    lines += [f"| Metric (goal) | {heads} |", "|---|" + "---|" * len(report.periods)]
    for label, values, goal, marks in summary_table(report):
        cells = " | ".join(f"{v} {m}".strip() for v, m in zip(values, marks, strict=True))
        lines.append(f"| {label}{f' ({goal})' if goal else ''} | {cells} |")
    if report.agp_png and report.tir_png:
        lines += ["", f"![AGP for {report.site_id}]({_data_uri(report.agp_png)})", "",
                  f"![Time in ranges for {report.site_id}]({_data_uri(report.tir_png)})"]
    if link:
        lines += ["", f"Full report (HTML): [{report.site_id}]({link})"]
    lines += ["", f"_{_CITATION}_"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- Prefect


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def headline(report: SiteReport) -> dict[str, str | bool]:
    """The last 14 days' headline figures, formatted in the site's unit."""
    main, scale = report.main, report.scale
    return {
        "period": f"{main['start_date']} – {main['end_date']}",
        "active": _pct(main["active_pct"]),
        "sufficient": bool(main["is_sufficient"]),
        "tir": _pct(main["tir_pct"]),
        "tbr": _pct(main["tbr_pct"]),
        "tar": _pct(main["tar_pct"]),
        "mean": _glucose(main["mean_mg_dl"], scale),
        "gmi": _gmi(main["gmi_pct"], scale),
        "cv": _pct(main["cv_pct"]),
        "gri": "—" if main["gri"] is None else f"{main['gri']:.0f} ({main['gri_zone']})",
    }


@task(name="publish-reports", cache_policy=NO_CACHE, timeout_seconds=timeouts.CHARTS)
def publish_reports_task(lakehouse: Lakehouse, marts: dict[str, pl.DataFrame],
                         units: str | None = None) -> list[PublishedReport]:
    """Render every site's report, store it in the lakehouse, leave a Prefect artifact each.

    Args:
        lakehouse: the profile's lakehouse; its storage keeps the reports.
        marts: the published marts by name (see ``build_report``).
        units: ``mg/dL`` or ``mmol/L`` for every site instead of each site's own unit.
    """
    logger = _logger()
    store = report_store_for(lakehouse)
    summary = marts.get("mrt_period_summary")
    if summary is None or summary.is_empty():
        logger.warning("reports: mrt_period_summary is empty or missing; nothing to report")
        return []
    published = []
    with tempfile.TemporaryDirectory(prefix="cascade-report-") as scratch:
        for site_id in sorted(summary["site_id"].unique().to_list()):
            report = build_report(marts, site_id, Path(scratch), units)
            page = report_html(report).encode("utf-8")
            key = f"{slug(site_id)}/{report.main['end_date']}/report.html"
            stored = store.put(key, page, "text/html; charset=utf-8")
            latest = store.put(f"{slug(site_id)}/latest.html", page, "text/html; charset=utf-8")
            artifact_key = f"cgm-report-{slug(site_id)}"
            create_markdown_artifact(
                markdown=redact(report_markdown(report, stored.url)), key=artifact_key,
                description=f"CGM report for {site_id}, last 14 days, in {report.unit}")
            logger.info("report: site=%s (%s), %s, TIR %s → %s", site_id, report.unit,
                        report.main["end_date"], _pct(report.main["tir_pct"]), stored.location)
            published.append(PublishedReport(site_id, report.unit, stored.url, stored.location,
                                             latest.url, artifact_key, headline(report)))
    return published


def headline_lines(summary: pl.DataFrame, units: str | None = None) -> list[str]:
    """Plain-text lines of each site's last 14 days, in its unit (the demo's printout)."""
    lines: list[str] = []
    for row in summary.filter(pl.col("period") == "last_14d").sort("site_id").iter_rows(
            named=True):
        scale = Scale(resolve_unit(row.get("display_unit"), units))
        lines += [
            "",
            (f"Site {row['site_id']}: last 14 days ({row['start_date']} to {row['end_date']}), "
            f"glucose in {scale.unit}"),
            (f"  CGM active {_pct(row['active_pct'])} "
            f"({'sufficient' if row['is_sufficient'] else 'insufficient'} data), "
            f"{row['n_readings']:,} readings"),
        ]
        if row["n_readings"]:
            lines += [
                (f"  mean {_glucose(row['mean_mg_dl'], scale)}, GMI {_gmi(row['gmi_pct'], scale)}, "
                f"CV {_pct(row['cv_pct'])}, GRI {row['gri']:.0f} (zone {row['gri_zone']})"),
                (f"  time in range {_pct(row['tir_pct'])}  below {_pct(row['tbr_pct'])} "
                f"(<{scale.threshold(54)}: {_pct(row['tbr_severe_pct'])})  above "
                f"{_pct(row['tar_pct'])} (>{scale.threshold(250)}: {_pct(row['tar_severe_pct'])})"),
            ]
    lines += ["", NOT_A_MEDICAL_DEVICE]
    return lines


# ---------------------------------------------------------------------------- run summary


def _ui_link(artifact_key: str) -> str | None:
    """The Prefect UI page of an artifact key, when the UI's address is known."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{str(ui).rstrip('/')}/artifacts/key/{artifact_key}" if ui else None


def chain_summary_markdown(kind: str, branch: str, tag: str | None,
                           landed: Mapping[str, TableCounts],
                           reports: Sequence[PublishedReport]) -> str:
    """Markdown of a parent run (``backfill``/``daily``): what landed, the tag, each site's
    headline figures in its unit and where its report is."""
    lines = [f"# Cascade {kind}: {'promoted as ' + tag if tag else 'not promoted'}", "",
             f"Branch `{branch}`" + (f" → `main`, tag `{tag}`." if tag else ", kept."), "",
             "| raw table | committed | duplicates | rejected |", "|---|---:|---:|---:|"]
    for name, counts in sorted(landed.items()):
        lines.append(f"| {name} | {counts.committed:,} | {counts.duplicates:,} | "
                     f"{counts.rejected:,} |")
    for r in reports:
        h = r.headline
        active = f"{h['active']}" + ("" if h["sufficient"] else " ⚠ insufficient")
        ui = _ui_link(r.artifact_key)
        links = f"[HTML report]({r.url})" + (f" · [artifact {r.artifact_key}]({ui})" if ui
                                             else f" · artifact `{r.artifact_key}`")
        lines += ["", f"## {r.site_id}: last 14 days ({h['period']}), {r.unit}", "",
                  "| CGM active | in range | below | above | mean | GMI | CV | GRI |",
                  "|---|---|---|---|---|---|---|---|",
                  (f"| {active} | {h['tir']} | {h['tbr']} | {h['tar']} | {h['mean']} | "
                  f"{h['gmi']} | {h['cv']} | {h['gri']} |"), "", links]
    lines += ["", f"_{NOT_A_MEDICAL_DEVICE}_"]
    return "\n".join(lines)


@task(name="summarise-run", cache_policy=NO_CACHE)
def chain_summary_task(kind: str, branch: str, tag: str | None,
                       landed: Mapping[str, TableCounts],
                       reports: Sequence[PublishedReport]) -> str:
    """Leave the parent run's summary artifact (key ``cascade-<kind>-summary``)."""
    markdown = chain_summary_markdown(kind, branch, tag, landed, reports)
    create_markdown_artifact(markdown=redact(markdown), key=f"cascade-{slug(kind)}-summary",
                             description=f"what this {kind} run landed and each site's report")
    return markdown
