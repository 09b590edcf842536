"""Generated CGM sites for checking the period metrics against iglu-python.

Each site is a deterministic function of its seed: a 5-minute (or 15-minute) grid of
readings aligned to UTC, glucose from a daily rhythm, meals, autocorrelated noise and
occasional hypoglycaemic dips, and the holes real sensors leave:

* long gaps (a 2-hour sensor warm-up every 10 days, random 1-hour drop-outs), which end
  an episode segment in both Cascade and iglu;
* whole local days without data (the sparse site), which count against active time;
* short gaps (one to three missing readings), placed only where the missing readings and
  their neighbours lie between 80 and 170 mg/dL. iglu interpolates across a short gap
  while Cascade carries the last reading forward; away from every threshold the two
  give the same episodes, so the comparison checks the rest of the logic exactly. The
  gap-at-a-threshold case is pinned by the dbt unit tests instead;
* device error codes (sgv 1-38), which carry no glucose in either: a short gap again,
  so they too sit between 80 and 170 mg/dL.

Timezones have no daylight-saving change inside the data (iglu counts 24-hour days),
and none has local midnight at 00:00 UTC (iglu's R-compatible grid starts one interval
after the first UTC midnight, so a reading at that instant would fall outside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

__all__ = ["SITES", "GeneratedSite", "entries_frame", "profile_rows"]


@dataclass(frozen=True)
class GeneratedSite:
    """A generated site: where it lives, how long, and how its sensor behaves."""

    site_id: str
    timezone: str
    units: str  # as a Nightscout profile spells it: "mg/dl" or "mmol"
    first_day: date  # local
    n_days: int
    seed: int
    interval_min: int = 5
    swing: float = 1.0  # scales meals, noise and dips
    missing_day_share: float = 0.0
    short_gaps: bool = True


SITES = (
    GeneratedSite("steady-kolkata", "Asia/Kolkata", "mg/dl", date(2024, 5, 1), 120, 1),
    GeneratedSite("brittle-brisbane", "Australia/Brisbane", "mmol", date(2024, 6, 1), 100, 2,
                  swing=2.2),
    GeneratedSite("sparse-berlin", "Europe/Berlin", "mg/dl", date(2024, 11, 5), 95, 3,
                  swing=1.5, missing_day_share=0.4),
    GeneratedSite("new-saopaulo", "America/Sao_Paulo", "mmol", date(2024, 7, 1), 11, 4,
                  swing=1.8),
    GeneratedSite("libre-phoenix", "America/Phoenix", "mg/dl", date(2024, 2, 1), 60, 5,
                  interval_min=15, swing=1.6, short_gaps=False),
)


def _local_midnight_utc(site: GeneratedSite, day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(site.timezone)).astimezone(UTC)


def _glucose(site: GeneratedSite, minutes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mg/dL at ``minutes`` since the first local midnight (floats)."""
    n = minutes.size
    day_min = minutes % 1440
    g = 135 + 20 * np.sin(2 * np.pi * (day_min - 300) / 1440)
    noise = np.zeros(n)
    shocks = rng.normal(0, 4.5 * site.swing, n)
    for i in range(1, n):  # AR(1); a few thousand steps per site
        noise[i] = 0.97 * noise[i - 1] + shocks[i]
    g += noise
    days = int(minutes[-1] // 1440) + 1
    for d in range(days):
        for meal_at in (7.5 * 60, 12.5 * 60, 19 * 60):
            start = d * 1440 + meal_at + rng.normal(0, 30)
            size = rng.uniform(30, 95) * site.swing
            tau = np.clip((minutes - start) / 60, 0, 30)
            g += size * tau * np.exp(1 - tau)
        if rng.random() < 0.35 * site.swing:
            start = d * 1440 + rng.uniform(0, 1440)
            depth = rng.uniform(40, 95) * min(site.swing, 1.4)
            width = rng.uniform(20, 70)
            g -= depth * np.exp(-(((minutes - start) / width) ** 2))
    clipped: np.ndarray = np.clip(np.rint(g), 39, 400)
    return clipped


def _keep_mask(site: GeneratedSite, minutes: np.ndarray, glucose: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Which grid readings the sensor delivered."""
    keep = np.ones(minutes.size, dtype=bool)
    days = int(minutes[-1] // 1440) + 1
    day_of = (minutes // 1440).astype(int)
    if site.missing_day_share:
        missing = rng.random(days) < site.missing_day_share
        missing[-1] = False  # the last day anchors the report periods
        keep &= ~missing[day_of]
    for d in range(0, days, 10):  # sensor warm-up: 2 hours
        start = d * 1440 + rng.uniform(300, 1000)
        keep &= ~((minutes >= start) & (minutes < start + 120))
    for _ in range(days // 4):  # drop-outs of about an hour
        start = rng.uniform(0, days * 1440 - 120)
        keep &= ~((minutes >= start) & (minutes < start + rng.uniform(50, 90)))
    if site.short_gaps:
        calm = (glucose >= 80) & (glucose <= 170)
        for i in rng.choice(np.arange(4, minutes.size - 4), size=days * 2, replace=False):
            width = int(rng.integers(1, 4))
            if calm[i - 1:i + width + 1].all():
                keep[i:i + width] = False
    return keep


def entries_frame(site: GeneratedSite) -> pl.DataFrame:
    """The site's ``sgv`` entries in the layout of ``raw.entries``."""
    rng = np.random.default_rng(site.seed)
    start = _local_midnight_utc(site, site.first_day)
    step = site.interval_min
    minutes = np.arange(0, site.n_days * 1440, step, dtype=np.float64)
    glucose = _glucose(site, minutes, rng)
    keep = _keep_mask(site, minutes, glucose, rng)
    sgv = glucose.astype(np.int64)
    calm = (glucose >= 80) & (glucose <= 170)
    calm[1:-1] &= calm[:-2] & calm[2:]
    errors = (rng.random(minutes.size) < 0.002) & calm  # an error code is a short gap too
    sgv[errors] = 5
    minutes, sgv = minutes[keep], sgv[keep]
    at = [start + timedelta(minutes=float(m)) for m in minutes]
    n = len(at)
    ingested = datetime(2025, 6, 1, tzinfo=UTC)
    return pl.DataFrame({
        "entry_id": [f"{site.site_id}-{i}" for i in range(n)],
        "entry_type": ["sgv"] * n,
        "entry_at": at,
        "entry_epoch_ms": [int(t.timestamp() * 1000) for t in at],
        "local_at": [t.replace(tzinfo=None) for t in at],
        "local_date": [t.date() for t in at],
        "date_string": [t.isoformat() for t in at],
        "utc_offset_min": [0] * n,
        "device": ["generated-cgm"] * n,
        "sgv_mg_dl": sgv.astype(np.int32),
        "mbg_mg_dl": pl.Series([None] * n, dtype=pl.Int32),
        "direction": ["Flat"] * n,
        "noise": pl.Series([1] * n, dtype=pl.Int32),
        **{c: pl.Series([None] * n, dtype=pl.Float64)
           for c in ("filtered", "unfiltered")},
        "rssi": pl.Series([None] * n, dtype=pl.Int32),
        **{c: pl.Series([None] * n, dtype=pl.Float64)
           for c in ("slope", "intercept", "scale")},
        "is_error_code": (sgv <= 38).tolist(),
        "is_low": (sgv == 39).tolist(),
        "extra": ["{}"] * n,
        "site_id": [site.site_id] * n,
        "ingest_run_id": ["run-generated"] * n,
        "ingested_at": [ingested] * n,
    })


def profile_rows(site: GeneratedSite) -> list[tuple[object, ...]]:
    """One ``raw.profile`` row naming the site's timezone and units."""
    at = _local_midnight_utc(site, site.first_day)
    return [(f"{site.site_id}-profile", at, at.isoformat(), "Default", site.timezone,
             site.units, 4.0, "{}", "{}", site.site_id, "run-generated",
             datetime(2025, 6, 1, tzinfo=UTC))]
