"""Deterministic, physiologically plausible Nightscout documents: a pure function of
(site, UTC day).

Glucose is a continuous function of absolute time: a circadian baseline, a dawn bump, meal
excursions, correction dips, smooth 30-minute-knot noise and occasional nocturnal hypos. Meals
and other life events are planned per *local* day (seeded by site seed + local day ordinal);
readings, gaps, warm-ups and status documents are drawn per *UTC* day. Every random stream is
seeded from (site seed, day ordinal, stream), so a day's documents never depend on which window
is asked for, and days join seamlessly at midnight.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import IntEnum
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "COLLECTIONS",
    "DayData",
    "Document",
    "SiteConfig",
    "default_site",
    "expected_records",
    "generate_collection",
    "generate_day",
    "generate_profiles",
]

Document = dict[str, Any]
Ints = NDArray[np.int64]
Floats = NDArray[np.float64]

COLLECTIONS: Final = ("entries", "treatments", "devicestatus")
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MIN_MS: Final = 60_000
_DAY_MS: Final = 86_400_000
_KNOT_MS: Final = 30 * _MIN_MS
_DIRECTIONS: Final = (
    "DoubleDown",
    "SingleDown",
    "FortyFiveDown",
    "Flat",
    "FortyFiveUp",
    "SingleUp",
    "DoubleUp",
)
_TREND_ARROWS: Final = (
    "DOUBLE_DOWN",
    "SINGLE_DOWN",
    "FORTY_FIVE_DOWN",
    "FLAT",
    "FORTY_FIVE_UP",
    "SINGLE_UP",
    "DOUBLE_UP",
)
_SLOPE_EDGES: Final = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])  # mg/dL per minute
_ERROR_CODES: Final = np.array([1, 2, 3, 5, 6, 9, 10, 12])
_NOTES: Final = ("exercise: 30 min walk", "stressful day", "alcohol", "sick day", "new vial")
_DEFAULT_ZONES: Final = {
    "a": "Europe/London",
    "b": "America/New_York",
    "c": "Australia/Sydney",
    "d": "Asia/Kolkata",
    "e": "America/Los_Angeles",
}
_OTHER_ZONES: Final = ("Europe/Berlin", "America/Chicago", "Pacific/Auckland", "Asia/Tokyo")


class _Stream(IntEnum):
    """Independent random streams, so adding one never shifts another."""

    READINGS = 1
    KNOTS = 2
    PLAN = 3
    GAPS = 4
    WARMUP = 5
    SITE_CHANGE = 6
    TREATMENT_IDS = 7
    STATUS = 8
    QUIRKS = 9
    TEMP_BASAL = 10
    PROFILE = 11


@dataclass(frozen=True)
class SiteConfig:
    """One simulated Nightscout site: identity, credentials, timezone and CGM device."""

    site_id: str
    seed: int = 0
    timezone: str = "Europe/London"
    api_secret: str | None = None
    token: str | None = None
    device: str = "dexcom-g6"
    interval_min: int = 5
    status_interval_min: int = 5
    units: str = "mg/dl"  # the profile's and status's display unit: "mg/dl" or "mmol"

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # raises on an unknown zone
        for name in ("interval_min", "status_interval_min"):
            value = getattr(self, name)
            if value < 1 or 1440 % value:
                raise ValueError(f"{name}={value} must divide a day (1, 5, 15, ...)")

    @property
    def zone(self) -> ZoneInfo:
        """The site's IANA zone."""
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class DayData:
    """Every document one site holds for one UTC day, oldest first."""

    site_id: str
    day: date
    entries: list[Document]
    treatments: list[Document]
    devicestatus: list[Document]

    def collection(self, name: str) -> list[Document]:
        """The documents of collection ``name`` (entries, treatments, devicestatus)."""
        if name not in COLLECTIONS:
            raise ValueError(f"unknown collection {name!r}; expected one of {COLLECTIONS}")
        docs: list[Document] = getattr(self, name)
        return docs


@dataclass(frozen=True)
class _Plan:
    """Life events of one local day, as UTC epoch ms."""

    meals: tuple[tuple[int, float, float], ...]  # (time, carbs g, rise mg/dL)
    corrections: tuple[tuple[int, float], ...]  # (time, insulin U)
    hypos: tuple[tuple[int, float], ...]  # (time of nadir, nadir mg/dL)
    fingersticks: tuple[int, ...]
    notes: tuple[tuple[int, str], ...]


def default_site(
    site_id: str, api_secret: str | None = None, token: str | None = None
) -> SiteConfig:
    """A varied, stable configuration for ``site_id`` ("a" is Dexcom in London, "c" Libre)."""
    seed = zlib.crc32(site_id.encode())
    zone = _DEFAULT_ZONES.get(site_id, _OTHER_ZONES[seed % len(_OTHER_ZONES)])
    libre = site_id == "c"
    return SiteConfig(
        site_id=site_id,
        seed=seed,
        timezone=zone,
        api_secret=api_secret,
        token=token,
        device="xDrip-LibreReceiver" if libre else ("dexcom-g6" if site_id == "a" else "dexcom-g7"),
        interval_min=1 if libre else 5,
    )


# ----------------------------------------------------------------------------- time helpers


def _day_start_ms(day: date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * _DAY_MS


def _rng(site: SiteConfig, ordinal: int, stream: _Stream) -> np.random.Generator:
    return np.random.default_rng([site.seed & 0xFFFFFFFF, ordinal, int(stream)])


def _offset_at(zone: ZoneInfo, t_ms: int) -> int:
    offset = datetime.fromtimestamp(t_ms / 1000, tz=zone).utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


def _offsets_min(zone: ZoneInfo, t_ms: Ints) -> Ints:
    """UTC offset in minutes at each instant, DST-aware (arrays span at most a few days)."""
    if t_ms.size == 0:
        return np.zeros(0, dtype=np.int64)
    first, last = _offset_at(zone, int(t_ms.min())), _offset_at(zone, int(t_ms.max()))
    if first == last:
        return np.full(t_ms.shape, first, dtype=np.int64)
    bucket_ms = 15 * _MIN_MS
    buckets, inverse = np.unique(t_ms // bucket_ms, return_inverse=True)
    values = np.array([_offset_at(zone, int(b) * bucket_ms) for b in buckets], dtype=np.int64)
    return values[inverse.reshape(t_ms.shape)]


def _local_to_ms(zone: ZoneInfo, local_day: date, minutes: float) -> int:
    moment = datetime.combine(local_day, time(), tzinfo=zone) + timedelta(minutes=minutes)
    return round(moment.timestamp() * 1000)


def _fmt_offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def _local_iso(t_ms: Ints, offsets: Ints) -> list[str]:
    """ISO strings in local time with the offset, as uploaders write ``dateString``."""
    local = (t_ms + offsets * _MIN_MS).astype("datetime64[ms]")
    stamps = np.datetime_as_string(local, unit="ms")
    suffix = {int(o): _fmt_offset(int(o)) for o in np.unique(offsets)}
    return [f"{s}{suffix[int(o)]}" for s, o in zip(stamps.tolist(), offsets.tolist(), strict=True)]


def _utc_iso(t_ms: Ints) -> list[str]:
    """UTC ISO strings with milliseconds and ``Z``, as Nightscout stores ``created_at``."""
    stamps = np.datetime_as_string(t_ms.astype("datetime64[ms]"), unit="ms")
    return [f"{s}Z" for s in stamps.tolist()]


def _object_ids(t_ms: Ints, rng: np.random.Generator) -> list[str]:
    """Mongo-ObjectId-shaped ids: 8 hex of epoch seconds, 16 hex of seeded randomness."""
    tails = rng.integers(0, 2**63, size=t_ms.size, dtype=np.int64)
    seconds = (t_ms // 1000).tolist()
    return [f"{s:08x}{r:016x}" for s, r in zip(seconds, tails.tolist(), strict=True)]


# ----------------------------------------------------------------------------- site constants


def _carb_ratio(site: SiteConfig) -> float:
    return float(9 + site.seed % 6)


def _isf(site: SiteConfig) -> float:
    return float(35 + (site.seed % 5) * 10)


def _basal_schedule(site: SiteConfig) -> list[tuple[int, float]]:
    """(minute of local day, U/h) steps, with a dawn rise."""
    base = 0.5 + (site.seed % 7) * 0.1
    shape = ((0, 0.9), (180, 1.25), (420, 1.05), (720, 0.9), (1080, 1.0), (1320, 0.85))
    return [(minute, round(base * factor, 2)) for minute, factor in shape]


def _basal_at(site: SiteConfig, local_minutes: Floats) -> Floats:
    starts = np.array([m for m, _ in _basal_schedule(site)], dtype=np.float64)
    rates = np.array([r for _, r in _basal_schedule(site)], dtype=np.float64)
    return rates[np.searchsorted(starts, local_minutes % 1440, side="right") - 1]


# ----------------------------------------------------------------------------- life plan


@lru_cache(maxsize=4096)
def _local_plan(site: SiteConfig, ordinal: int) -> _Plan:
    """Meals, corrections, hypos, finger-sticks and notes of one local day."""
    rng, zone, local_day = _rng(site, ordinal, _Stream.PLAN), site.zone, date.fromordinal(ordinal)
    slots = [(450.0, 45.0, 1.0), (750.0, 60.0, 1.0), (1140.0, 60.0, 1.0), (930.0, 90.0, 0.45)]
    meals = []
    for centre, spread, chance in slots:
        present, minute, carbs = (
            rng.random() < chance,
            rng.normal(centre, spread),
            rng.uniform(15, 95),
        )
        rise = float(np.clip(40 + 80 * (carbs - 15) / 80 + rng.normal(0, 10), 40, 120))
        if present:
            meals.append((_local_to_ms(zone, local_day, minute), round(carbs), rise))
    corrections = [
        (_local_to_ms(zone, local_day, rng.uniform(540, 1320)), round(rng.uniform(0.5, 2.5), 2))
        for _ in range(int(rng.integers(0, 3)))
    ]
    severe = ordinal % 7 == site.seed % 7
    hypo_roll, hypo_minute = rng.random(), rng.uniform(60, 300)
    hypos = []
    if severe or hypo_roll < 0.2:
        nadir = rng.uniform(28, 37) if severe else rng.uniform(45, 65)
        hypos.append((_local_to_ms(zone, local_day, hypo_minute), float(nadir)))
    sticks = [_local_to_ms(zone, local_day, m) for m in rng.uniform(420, 1350, rng.integers(1, 4))]
    note = rng.random() < 0.15
    note_at, note_text = rng.uniform(480, 1320), _NOTES[int(rng.integers(0, len(_NOTES)))]
    notes = [(_local_to_ms(zone, local_day, note_at), note_text)] if note else []
    return _Plan(
        tuple(meals), tuple(corrections), tuple(hypos), tuple(sorted(sticks)), tuple(notes)
    )


def _plans_around(site: SiteConfig, t_ms: Ints) -> list[_Plan]:
    """Plans of every local day whose events can touch instants ``t_ms``."""
    if t_ms.size == 0:
        return []
    first = int(t_ms.min()) // _DAY_MS + _EPOCH_ORDINAL
    last = int(t_ms.max()) // _DAY_MS + _EPOCH_ORDINAL
    return [_local_plan(site, o) for o in range(first - 2, last + 2)]


def _events_in_day(site: SiteConfig, day: date) -> list[_Plan]:
    """Plans whose events may fall in UTC ``day`` (callers filter by time)."""
    return [_local_plan(site, o) for o in range(day.toordinal() - 1, day.toordinal() + 2)]


# ----------------------------------------------------------------------------- glucose model


@lru_cache(maxsize=16384)
def _day_knots(site: SiteConfig, epoch_day: int, per_day: int, sd: float) -> Floats:
    knots: Floats = _rng(site, epoch_day, _Stream.KNOTS).normal(0, sd, per_day + 1)[1:]
    knots.flags.writeable = False
    return knots


def _noise_layer(site: SiteConfig, t_ms: Ints, per_day: int, sd: float) -> Floats:
    """Smooth noise: ``per_day`` random knots per UTC day, cosine-interpolated."""
    knot_ms = _DAY_MS // per_day
    k = t_ms // knot_ms
    first, last = int(k.min()) // per_day, int(k.max() + 1) // per_day
    days = [_day_knots(site, d, per_day, sd) for d in range(first, last + 1)]
    values = days[0] if len(days) == 1 else np.concatenate(days)
    weight = (1 - np.cos(np.pi * (t_ms % knot_ms) / knot_ms)) / 2
    lo, hi = values[k - first * per_day], values[k + 1 - first * per_day]
    result: Floats = lo * (1 - weight) + hi * weight
    return result


def _smooth_noise(site: SiteConfig, t_ms: Ints) -> Floats:
    """Fast wiggles (30-min knots) plus slow drifts (6-hour knots): good and bad days."""
    fast = _noise_layer(site, t_ms, 48, 12.0)
    slow: Floats = fast + _noise_layer(site, t_ms, 4, 28.0)
    return slow


def _bump(t_ms: Ints, starts: Floats, peak_min: float) -> Floats:
    """Smooth rise-and-decay response, 1.0 at ``peak_min`` after each start; one column each."""
    x = np.clip((t_ms[:, None] - starts[None, :]) / _MIN_MS / peak_min, 0.0, None)
    curve: Floats = x * x * np.exp(2.0 * (1.0 - x))
    return curve


def _pre_hypo(site: SiteConfig, t_ms: Ints, plans: list[_Plan]) -> Floats:
    """Glucose before hypo dips: baseline, dawn, meals, corrections and noise."""
    local_h = ((t_ms // _MIN_MS + _offsets_min(site.zone, t_ms)) % 1440) / 60.0
    level = 108.0 + site.seed % 20 + 10 * np.sin(2 * np.pi * (local_h - 9) / 24)
    level = level + 28 * np.exp(-0.5 * ((local_h - 6.5) / 1.3) ** 2)
    meals = np.array([(m[0], m[2]) for p in plans for m in p.meals], dtype=np.float64)
    if meals.size:
        level = level + _bump(t_ms, meals[:, 0], 60.0) @ meals[:, 1]
    bolus = np.array([c for p in plans for c in p.corrections], dtype=np.float64)
    if bolus.size:
        level = level - _bump(t_ms, bolus[:, 0], 70.0) @ (bolus[:, 1] * 18.0)
    level = level + _smooth_noise(site, t_ms)
    below = np.clip(80.0 - level, 0.0, None)  # counter-regulation: drifts bottom out near 55
    result: Floats = level + below - 25.0 * (1.0 - np.exp(-below / 25.0))
    return result


def _glucose(site: SiteConfig, t_ms: Ints) -> Floats:
    """Modelled interstitial glucose (mg/dL, unclamped) at instants ``t_ms``."""
    if t_ms.size == 0:
        return np.zeros(0)
    plans = _plans_around(site, t_ms)
    level = _pre_hypo(site, t_ms, plans)
    hypos = np.array([h for p in plans for h in p.hypos], dtype=np.float64)
    if hypos.size:
        centres = hypos[:, 0].astype(np.int64)
        depth = np.clip(_pre_hypo(site, centres, plans) - hypos[:, 1], 0, None)
        shape = np.exp(-0.5 * ((t_ms[:, None] - hypos[None, :, 0]) / (32 * _MIN_MS)) ** 2)
        level = level - shape @ depth
    return level


def _directions(slope: Floats) -> list[str]:
    return [_DIRECTIONS[i] for i in np.digitize(slope, _SLOPE_EDGES).tolist()]


# ----------------------------------------------------------------------------- entries


def _gaps(site: SiteConfig, day: date) -> list[tuple[int, int]]:
    """Signal-loss gaps (20–120 min, a few a week) and the sensor warm-up, if any."""
    start, rng = _day_start_ms(day), _rng(site, day.toordinal(), _Stream.GAPS)
    gaps = []
    for _ in range(int(rng.poisson(0.45))):
        begin = start + int(rng.uniform(0, 1320)) * _MIN_MS
        gaps.append((begin, begin + int(rng.uniform(20, 120)) * _MIN_MS))
    warmup = _warmup_start(site, day)
    if warmup is not None:
        gaps.append((warmup, warmup + 120 * _MIN_MS))
    return gaps


def _warmup_start(site: SiteConfig, day: date) -> int | None:
    """Sensor insertion every 10 days: a 2-hour warm-up without readings starts here."""
    if day.toordinal() % 10 != site.seed % 10:
        return None
    rng = _rng(site, day.toordinal(), _Stream.WARMUP)
    return _day_start_ms(day) + int(rng.uniform(60, 1200)) * _MIN_MS + int(rng.integers(0, 60_000))


def _reading_times(site: SiteConfig, day: date, rng: np.random.Generator) -> Ints:
    """Reading instants of the day: per-site phase, a little jitter, gaps removed."""
    step_ms = site.interval_min * _MIN_MS
    phase = 5_000 + (site.seed % (step_ms // 1000 - 10)) * 1000
    grid = (
        _day_start_ms(day) + phase + np.arange(1440 // site.interval_min, dtype=np.int64) * step_ms
    )
    times = grid + rng.integers(-3000, 3001, size=grid.size)
    keep = np.ones(times.size, dtype=bool)
    for begin, end in _gaps(site, day):
        keep &= (times < begin) | (times >= end)
    result: Ints = times[keep]
    return result


def _sgv_values(site: SiteConfig, t_ms: Ints, rng: np.random.Generator) -> tuple[Ints, Floats]:
    """Integer sgv (39 LOW, 400 cap) and slope in mg/dL/min at each reading."""
    model = _glucose(site, t_ms)
    slope = (model - _glucose(site, t_ms - 5 * _MIN_MS)) / 5.0
    measured = model + rng.normal(0, 2.5, t_ms.size)
    sgv = np.clip(np.rint(measured), 40, 400).astype(np.int64)
    sgv[measured < 40] = 39
    return sgv, slope


def _error_mask(n: int, rng: np.random.Generator) -> tuple[NDArray[np.bool_], Ints]:
    """~0.2% of readings replaced by Dexcom error codes, in short runs."""
    mask, codes = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    episodes = int(rng.poisson(0.1 * max(n, 1) / 288)) + int(rng.random() < 1 / 7)
    for _ in range(episodes):
        begin, length = int(rng.integers(0, max(n, 1))), int(rng.integers(1, 5))
        mask[begin : begin + length] = True
        codes[begin : begin + length] = int(rng.choice(_ERROR_CODES))
    return mask, codes


def _sgv_doc(
    site: SiteConfig, when: int, local: str, offset: int, sgv: int, arrow: int
) -> Document:
    raw = sgv * 1000 + 14_000
    return {
        "_id": "",
        "type": "sgv",
        "sgv": sgv,
        "date": when,
        "dateString": local,
        "sysTime": local,
        "utcOffset": offset,
        "device": site.device,
        "direction": _DIRECTIONS[arrow],
        "noise": 1,
        "filtered": raw - 900,
        "unfiltered": raw,
        "rssi": 100 + (when // 1000) % 113,
    }


def _sgv_entries(site: SiteConfig, day: date) -> list[Document]:
    """The day's CGM readings, quirks included (errors, strings, extra fields)."""
    rng = _rng(site, day.toordinal(), _Stream.READINGS)
    t_ms = _reading_times(site, day, rng)
    sgv, slope = _sgv_values(site, t_ms, rng)
    arrows = np.digitize(slope, _SLOPE_EDGES)
    errors, codes = _error_mask(t_ms.size, rng)
    quirk = rng.random(t_ms.size)
    offsets = _offsets_min(site.zone, t_ms)
    docs = []
    rows = zip(
        t_ms.tolist(),
        _local_iso(t_ms, offsets),
        offsets.tolist(),
        sgv.tolist(),
        arrows.tolist(),
        errors.tolist(),
        codes.tolist(),
        quirk.tolist(),
        strict=True,
    )
    for when, local, offset, value, arrow, error, code, roll in rows:
        doc = _sgv_doc(site, when, local, offset, value, arrow)
        if error:
            doc.update(sgv=code, direction="NOT COMPUTABLE", noise=4)
        if roll < 0.015:
            doc["sgv"] = str(doc["sgv"])  # old uploaders sent strings
        elif roll > 0.95 and not error:
            doc.update(glucose=value, trend_arrow=_TREND_ARROWS[arrow], app="xDrip+")
        docs.append(doc)
    return docs


@lru_cache(maxsize=256)
def _fingersticks(site: SiteConfig, day: date) -> tuple[tuple[int, int, bool], ...]:
    """(time, meter mg/dL, first of its local day) for finger-sticks in UTC ``day``."""
    start = _day_start_ms(day)
    sticks = [
        (when, index == 0)
        for plan in _events_in_day(site, day)
        for index, when in enumerate(plan.fingersticks)
        if start <= when < start + _DAY_MS
    ]
    if not sticks:
        return ()
    times = np.array([w for w, _ in sticks], dtype=np.int64)
    meter = np.clip(np.rint(_glucose(site, times) + times % 13 - 6), 20, 500).astype(np.int64)
    return tuple((w, m, f) for (w, f), m in zip(sticks, meter.tolist(), strict=True))


def _fingerstick_entries(site: SiteConfig, day: date) -> list[Document]:
    """mbg finger-sticks, and a cal record after the first stick of each local day."""
    end, docs = _day_start_ms(day) + _DAY_MS, []
    for when, mbg, first in _fingersticks(site, day):
        offset = _offset_at(site.zone, when)
        local = _local_iso(np.array([when], dtype=np.int64), np.array([offset]))[0]
        docs.append(
            {
                "_id": "",
                "type": "mbg",
                "mbg": mbg,
                "date": when,
                "dateString": local,
                "sysTime": local,
                "utcOffset": offset,
                "device": site.device,
            }
        )
        if first and when + 90_000 < end:
            docs.append(_cal_doc(site, when + 90_000, offset))
    return docs


def _cal_doc(site: SiteConfig, when: int, offset: int) -> Document:
    here = np.array([when], dtype=np.int64)
    local = _local_iso(here, np.array([offset]))[0]
    slope = 800.0 + (when // 1000) % 97
    intercept = 20_000.0 + (when // 1000) % 9_973
    return {
        "_id": "",
        "type": "cal",
        "slope": slope,
        "intercept": intercept,
        "scale": 1,
        "date": when,
        "dateString": local,
        "sysTime": local,
        "utcOffset": offset,
        "device": site.device,
    }


def _with_duplicates(site: SiteConfig, day: date, docs: list[Document]) -> list[Document]:
    """Assign ids; ~0.5% uploaded twice (new id), now and then one document twice (same id)."""
    rng = _rng(site, day.toordinal(), _Stream.QUIRKS)
    times = np.array([d["date"] for d in docs], dtype=np.int64)
    for doc, oid in zip(docs, _object_ids(times, rng), strict=True):
        doc["_id"] = oid
    out: list[Document] = []
    twice = rng.random(len(docs)) < 0.005
    same_id = int(rng.integers(0, len(docs))) if docs and rng.random() < 0.15 else -1
    extra_ids = iter(_object_ids(times[twice], rng))
    for index, doc in enumerate(docs):
        out.append(doc)
        if twice[index]:
            out.append({**doc, "_id": next(extra_ids)})
        if index == same_id:
            out.append(dict(doc))
    return out


def _entries(site: SiteConfig, day: date) -> list[Document]:
    docs = _sgv_entries(site, day) + _fingerstick_entries(site, day)
    docs.sort(key=lambda d: (d["date"], d["type"]))
    return _with_duplicates(site, day, docs)


# ----------------------------------------------------------------------------- treatments


def _plan_treatments(site: SiteConfig, day: date) -> list[Document]:
    """Boluses, carbs, finger-stick checks and notes from the local plans in this UTC day."""
    start, cr, out = _day_start_ms(day), _carb_ratio(site), []
    inside = range(start, start + _DAY_MS)
    for plan in _events_in_day(site, day):
        for when, carbs, _ in plan.meals:
            units = round(carbs / cr * 20) / 20
            out.append({"eventType": "Meal Bolus", "at": when, "insulin": units, "carbs": carbs})
        for when, units in plan.corrections:
            out.append({"eventType": "Correction Bolus", "at": when, "insulin": units})
        for when, _nadir in plan.hypos:
            carbs = 15 + when % 11
            out.append({"eventType": "Carb Correction", "at": when + 10 * _MIN_MS, "carbs": carbs})
        for when, text in plan.notes:
            out.append({"eventType": "Note", "at": when, "notes": text})
    for when, mbg, _first in _fingersticks(site, day):
        out.append(
            {
                "eventType": "BG Check",
                "at": when + 20_000,
                "glucose": mbg,
                "glucoseType": "Finger",
                "units": "mg/dl",
            }
        )
    return [t for t in out if t["at"] in inside]


def _device_treatments(site: SiteConfig, day: date) -> list[Document]:
    """Site changes every 3 days, sensor starts every 10, temp basals every ~30 min."""
    out: list[Document] = []
    change = _site_change_ms(site, day.toordinal())
    if change is not None:
        out.append({"eventType": "Site Change", "at": change})
    warmup = _warmup_start(site, day)
    if warmup is not None:
        out.append({"eventType": "Sensor Start", "at": warmup, "notes": "sensor inserted"})
    rng = _rng(site, day.toordinal(), _Stream.TEMP_BASAL)
    slots = _day_start_ms(day) + np.arange(48, dtype=np.int64) * 30 * _MIN_MS
    slots = slots[rng.random(48) < 0.7] + 47_000
    rates = _suggested_rate(site, slots).tolist()
    for when, rate in zip(slots.tolist(), rates, strict=True):
        out.append(
            {"eventType": "Temp Basal", "at": when, "rate": rate, "absolute": rate, "duration": 30}
        )
    return out


def _site_change_ms(site: SiteConfig, ordinal: int) -> int | None:
    if ordinal % 3 != site.seed % 3:
        return None
    rng = _rng(site, ordinal, _Stream.SITE_CHANGE)
    return (ordinal - _EPOCH_ORDINAL) * _DAY_MS + int(rng.uniform(0, 1380)) * _MIN_MS


def _suggested_rate(site: SiteConfig, t_ms: Ints) -> Floats:
    """The loop's temp basal: scheduled basal scaled by how far glucose is from target."""
    if t_ms.size == 0:
        return np.zeros(0)
    local_min = (t_ms // _MIN_MS + _offsets_min(site.zone, t_ms)).astype(np.float64)
    factor = np.clip(1 + (_glucose(site, t_ms) - 110) / 90, 0, 3)
    rate: Floats = np.round(_basal_at(site, local_min) * factor * 20) / 20
    return rate


def _treatment_doc(
    site: SiteConfig, raw: Document, created: str, oid: str, roll: float
) -> Document:
    """Shape one treatment like uploaders do; some numbers arrive as strings."""
    when = raw.pop("at")
    offset = _offset_at(site.zone, when)
    loop = raw["eventType"] in ("Temp Basal", "Correction Bolus")
    doc: Document = {"_id": oid, "eventType": raw.pop("eventType"), "created_at": created}
    if roll < 0.3:
        doc["timestamp"] = created
    doc.update(raw)
    doc["enteredBy"] = "openaps://medtronic/723" if loop else "careportal"
    doc["utcOffset"] = offset
    if roll > 0.85 or doc["eventType"] == "Temp Basal":
        for key in ("insulin", "carbs", "duration", "absolute"):
            if key in doc and (roll > 0.85 or key != "insulin"):
                doc[key] = str(doc[key])
    return doc


def _treatments(site: SiteConfig, day: date) -> list[Document]:
    raw = _plan_treatments(site, day) + _device_treatments(site, day)
    raw.sort(key=lambda t: (t["at"], t["eventType"]))
    rng = _rng(site, day.toordinal(), _Stream.TREATMENT_IDS)
    times = np.array([t["at"] for t in raw], dtype=np.int64)
    created, ids, rolls = _utc_iso(times), _object_ids(times, rng), rng.random(len(raw)).tolist()
    rows = zip(raw, created, ids, rolls, strict=True)
    return [_treatment_doc(site, t, c, i, r) for t, c, i, r in rows]


# ----------------------------------------------------------------------------- devicestatus


def _status_times(site: SiteConfig, day: date) -> Ints:
    """Loop cycles every ``status_interval_min``, ~1 min after the reading; a few missed."""
    rng = _rng(site, day.toordinal(), _Stream.STATUS)
    step = site.status_interval_min * _MIN_MS
    grid = _day_start_ms(day) + np.arange(1440 // site.status_interval_min, dtype=np.int64) * step
    times = grid + min(60_000 + (site.seed % 40) * 1000, step - 5_000)
    times = times + rng.integers(0, 4000, size=grid.size)
    result: Ints = times[rng.random(grid.size) > 0.02]
    return result


def _on_board(site: SiteConfig, t_ms: Ints) -> tuple[Floats, Floats]:
    """Insulin on board (U, 4 h curve) and carbs on board (g, 3 h linear) at ``t_ms``."""
    plans = _plans_around(site, t_ms)
    cr = _carb_ratio(site)
    boluses = [(m[0], round(m[1] / cr * 20) / 20) for p in plans for m in p.meals]
    boluses += [c for p in plans for c in p.corrections]
    carbs = [(m[0], m[1]) for p in plans for m in p.meals]
    iob, cob = np.zeros(t_ms.size), np.zeros(t_ms.size)
    if boluses:
        b = np.array(boluses)
        tau = (t_ms[:, None] - b[None, :, 0]) / _MIN_MS
        iob = np.where(tau >= 0, np.clip(1 - tau / 240, 0, None) ** 2, 0) @ b[:, 1]
    if carbs:
        c = np.array(carbs)
        tau = (t_ms[:, None] - c[None, :, 0]) / _MIN_MS
        cob = np.where(tau >= 0, np.clip(1 - tau / 180, 0, None), 0) @ c[:, 1]
    return iob, cob


def _reservoir(site: SiteConfig, day: date, t_ms: Ints) -> Floats:
    """Units left: 300 at the last site change, ~1.1 U/h since."""
    changes = [_site_change_ms(site, o) for o in range(day.toordinal() - 4, day.toordinal() + 1)]
    known = np.array(sorted(c for c in changes if c is not None), dtype=np.int64)
    last = known[np.clip(np.searchsorted(known, t_ms, side="right") - 1, 0, None)]
    hours = np.clip((t_ms - last) / 3_600_000, 0, None)
    left: Floats = np.round(np.clip(300 - 1.1 * hours, 5, 300), 3).astype(np.float64)
    return left


def _pump_blob(row: dict[str, Any]) -> Document:
    status = {"status": "normal", "timestamp": row["created"], "bolusing": False}
    return {
        "battery": {"status": "normal", "voltage": row["voltage"]},
        "status": {**status, "suspended": False},
        "reservoir": row["reservoir"],
        "clock": row["clock"],
    }


def _status_doc(site: SiteConfig, row: dict[str, Any]) -> Document:
    """One devicestatus document shaped like an OpenAPS rig's upload."""
    created, isf = row["created"], _isf(site)
    reason = (
        f"COB: {row['cob']}, Dev: {row['dev']}, BGI: {row['bgi']}, ISF: {isf:g}, Target: 100; "
        f"Eventual BG {row['eventual']}. Setting temp basal of {row['rate']:g}U/hr"
    )
    iob = {"iob": row["iob"], "basaliob": row["basaliob"], "activity": row["activity"]}
    suggested = {"bg": row["bg"], "temp": "absolute", "timestamp": created, "reason": reason}
    suggested.update(rate=row["rate"], duration=30, COB=row["cob"], IOB=row["iob"])
    suggested.update(eventualBG=row["eventual"], tick=row["tick"])
    return {
        "_id": row["_id"],
        "device": f"openaps://{site.site_id}-rig",
        "created_at": created,
        "uploader": {"battery": row["uploader"], "batteryVoltage": 3600 + row["uploader"] * 6},
        "pump": _pump_blob(row),
        "openaps": {"iob": {**iob, "timestamp": created}, "suggested": suggested},
    }


def _status_rows(site: SiteConfig, day: date, t_ms: Ints) -> dict[str, list[Any]]:
    """Every numeric field of the day's status documents, computed as arrays."""
    glucose = _glucose(site, t_ms)
    bg = np.clip(np.rint(glucose), 39, 400).astype(np.int64)
    tick = np.rint(glucose - _glucose(site, t_ms - 5 * _MIN_MS)).astype(np.int64)
    iob, cob = _on_board(site, t_ms)
    isf, cr = _isf(site), _carb_ratio(site)
    eventual = np.clip(np.rint(glucose - iob * isf + cob * isf / cr), 39, 400).astype(np.int64)
    offsets = _offsets_min(site.zone, t_ms)
    local_min = (t_ms // _MIN_MS + offsets) % 1440
    charge = 100 - ((local_min - 420) % 1440) * 75 // 1440
    rng = _rng(site, day.toordinal(), _Stream.STATUS)
    return {
        "created": _utc_iso(t_ms),
        "_id": _object_ids(t_ms, rng),
        "clock": [s[:19] + s[23:] for s in _local_iso(t_ms, offsets)],
        "bg": bg.tolist(),
        "tick": [f"{v:+d}" for v in tick.tolist()],
        "iob": np.round(iob, 3).tolist(),
        "basaliob": np.round(_smooth_noise(site, t_ms) / 60, 3).tolist(),
        "activity": np.round(iob * 0.008, 4).tolist(),
        "cob": np.rint(cob).astype(np.int64).tolist(),
        "eventual": eventual.tolist(),
        "dev": np.rint(tick * 2.0).astype(np.int64).tolist(),
        "bgi": np.round(-iob * isf / 60, 2).tolist(),
        "rate": _suggested_rate(site, t_ms).tolist(),
        "reservoir": _reservoir(site, day, t_ms).tolist(),
        "uploader": charge.astype(np.int64).tolist(),
        "voltage": [round(1.5 - 0.3 * ((day.toordinal() % 20) / 20), 3)] * t_ms.size,
    }


def _devicestatus(site: SiteConfig, day: date) -> list[Document]:
    t_ms = _status_times(site, day)
    columns = _status_rows(site, day, t_ms)
    keys = list(columns)
    rows = zip(*columns.values(), strict=True)
    return [_status_doc(site, dict(zip(keys, values, strict=True))) for values in rows]


# ----------------------------------------------------------------------------- public API


def generate_collection(site: SiteConfig, day: date, collection: str) -> list[Document]:
    """The ``collection`` documents of ``site`` for UTC ``day``, oldest first (fresh copies)."""
    builders = {"entries": _entries, "treatments": _treatments, "devicestatus": _devicestatus}
    if collection not in builders:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
    return builders[collection](site, day)


def generate_day(site: SiteConfig, day: date) -> DayData:
    """Every entry, treatment and devicestatus document of ``site`` for UTC ``day``.

    Pure: the same (site, day) always gives byte-identical documents.
    """
    return DayData(
        site_id=site.site_id,
        day=day,
        entries=_entries(site, day),
        treatments=_treatments(site, day),
        devicestatus=_devicestatus(site, day),
    )


def _schedule(pairs: list[tuple[int, float]], as_text: bool) -> list[dict[str, Any]]:
    def cell(value: float) -> Any:
        return f"{value:g}" if as_text else value

    return [
        {"time": f"{m // 60:02d}:{m % 60:02d}", "value": cell(v), "timeAsSeconds": cell(m * 60)}
        for m, v in pairs
    ]


def _profile_store(site: SiteConfig, scale: float, as_text: bool) -> dict[str, Any]:
    basal = [(m, round(r * scale, 2)) for m, r in _basal_schedule(site)]
    cr, isf = _carb_ratio(site), _isf(site)
    return {
        "dia": "4" if as_text else 4,
        "carbratio": _schedule([(0, cr), (360, cr - 2), (660, cr + 1)], as_text),
        "carbs_hr": "30" if as_text else 30,
        "delay": "20" if as_text else 20,
        "sens": _schedule([(0, isf), (360, isf - 5)], as_text),
        "timezone": site.timezone,
        "basal": _schedule(basal, as_text),
        "target_low": _schedule([(0, 90)], as_text),
        "target_high": _schedule([(0, 120)], as_text),
        "units": site.units,
    }


def generate_profiles(site: SiteConfig, first_day: date, last_day: date) -> list[Document]:
    """The site's profile documents: one at ``first_day``, a retuned one mid-way; newest first."""
    middle = first_day + (last_day - first_day) / 2
    rng = _rng(site, first_day.toordinal(), _Stream.PROFILE)
    docs = []
    for index, start in enumerate(sorted({first_day, middle})):
        mills = _day_start_ms(start) + 9 * 3_600_000
        created = _utc_iso(np.array([mills], dtype=np.int64))[0]
        oid = _object_ids(np.array([mills], dtype=np.int64), rng)[0]
        docs.append(
            {
                "_id": oid,
                "defaultProfile": "Default",
                "store": {"Default": _profile_store(site, 1.0 + 0.1 * index, as_text=index == 0)},
                "startDate": created,
                "mills": mills,
                "units": site.units,
                "created_at": created,
            }
        )
    return docs[::-1]


def _time_key(collection: str, doc: Document) -> tuple[Any, str]:
    return (doc["date"] if collection == "entries" else doc["created_at"], doc["_id"])


def expected_records(
    site: SiteConfig, start: date, end: date, collection: str, now: datetime | None = None
) -> list[Document]:
    """Every ``collection`` document the server holds for UTC days [start, end), newest first.

    With ``now``, documents after it are left out, as the server does.
    """
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; expected one of {COLLECTIONS}")
    docs: list[Document] = []
    day = start
    while day < end:
        docs.extend(generate_collection(site, day, collection))
        day += timedelta(days=1)
    if now is not None:
        limit = int(now.astimezone(UTC).timestamp() * 1000)
        docs = [d for d in docs if _doc_ms(collection, d) <= limit]
    return sorted(docs, key=lambda d: _time_key(collection, d), reverse=True)


def _doc_ms(collection: str, doc: Document) -> int:
    if collection == "entries":
        return int(doc["date"])
    parsed = datetime.fromisoformat(str(doc["created_at"]))
    return int(parsed.timestamp() * 1000)
