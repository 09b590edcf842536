"""Glucose units: the lakehouse stays in mg/dL, people read their site's own unit.

A site's display unit comes from its latest Nightscout profile (``dim_site.display_unit``)
unless an override (``--units``, a flow's ``units`` parameter) says otherwise; this module
is the one place that converts and labels. Thresholds are shown with the consensus values
of each unit (Battelino et al., Diabetes Care 2019: 54 / 70 / 180 / 250 mg/dL are written
3.0 / 3.9 / 10.0 / 13.9 mmol/L), while every computation keeps the mg/dL thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from tasks.errors import ConfigError

__all__ = [
    "MG_DL_PER_MMOL_L",
    "UNITS",
    "GlucoseUnit",
    "Scale",
    "parse_unit",
    "resolve_unit",
    "scale_for",
]

GlucoseUnit = Literal["mg/dL", "mmol/L"]
UNITS: Final[tuple[GlucoseUnit, ...]] = ("mg/dL", "mmol/L")
MG_DL_PER_MMOL_L: Final = 18.0182  # molar mass of glucose / 10, as the marts use it

_SPELLINGS: Final[dict[str, GlucoseUnit]] = {
    "mg/dl": "mg/dL", "mgdl": "mg/dL", "mg": "mg/dL",
    "mmol/l": "mmol/L", "mmol": "mmol/L", "mmoll": "mmol/L",
}

# consensus thresholds in mg/dL and as each unit writes them
_THRESHOLDS: Final[dict[int, dict[GlucoseUnit, str]]] = {
    54: {"mg/dL": "54", "mmol/L": "3.0"},
    70: {"mg/dL": "70", "mmol/L": "3.9"},
    180: {"mg/dL": "180", "mmol/L": "10.0"},
    250: {"mg/dL": "250", "mmol/L": "13.9"},
}
# the band just inside a threshold, written in whole steps of the unit
_INNER: Final[dict[int, dict[GlucoseUnit, str]]] = {
    69: {"mg/dL": "69", "mmol/L": "3.8"},
    181: {"mg/dL": "181", "mmol/L": "10.1"},
}


def parse_unit(text: str) -> GlucoseUnit:
    """``mg/dL`` or ``mmol/L`` from any usual spelling (Nightscout writes mg/dl, mmol).

    Raises:
        ConfigError: the text names neither unit.
    """
    key = text.strip().lower().replace(" ", "")
    if key in _SPELLINGS:
        return _SPELLINGS[key]
    raise ConfigError(f"unknown glucose unit {text!r}: use mg/dL or mmol/L")


def resolve_unit(site_unit: str | None, override: str | None = None) -> GlucoseUnit:
    """The unit to show a site in: the override if given, else the site's, else mg/dL."""
    if override:
        return parse_unit(override)
    if site_unit:
        return parse_unit(site_unit)
    return "mg/dL"


@dataclass(frozen=True)
class Scale:
    """Converts and labels mg/dL values for one display unit."""

    unit: GlucoseUnit

    @property
    def is_mmol(self) -> bool:
        return self.unit == "mmol/L"

    def value(self, mg_dl: float) -> float:
        """``mg_dl`` in this unit."""
        return mg_dl / MG_DL_PER_MMOL_L if self.is_mmol else mg_dl

    def number(self, mg_dl: float) -> str:
        """``mg_dl`` as people write it in this unit (mmol/L to 0.1, mg/dL whole)."""
        return f"{self.value(mg_dl):.1f}" if self.is_mmol else f"{mg_dl:.0f}"

    def text(self, mg_dl: float) -> str:
        """``mg_dl`` with its unit, e.g. ``7.2 mmol/L``."""
        return f"{self.number(mg_dl)} {self.unit}"

    def threshold(self, mg_dl: int) -> str:
        """A consensus threshold (54, 69, 70, 180, 181, 250) as this unit writes it."""
        table = _THRESHOLDS.get(mg_dl) or _INNER.get(mg_dl)
        if table is None:
            raise ValueError(f"{mg_dl} mg/dL is not a consensus threshold")
        return table[self.unit]

    def band_labels(self) -> tuple[str, str, str, str, str]:
        """The five consensus bands, bottom to top, in this unit."""
        t = self.threshold
        return (
            f"Very low <{t(54)}",
            f"Low {t(54)}–{t(69)}",
            f"In range {t(70)}–{t(180)}",
            f"High {t(181)}–{t(250)}",
            f"Very high >{t(250)}",
        )

    def axis_ticks(self) -> list[float]:
        """Y-axis ticks of an AGP in this unit (the thresholds among them)."""
        if self.is_mmol:
            return [2.0, 3.0, 3.9, 6.0, 8.0, 10.0, 13.9, 16.0, 20.0]
        return [40, 54, 70, 100, 140, 180, 250, 300, 350, 400]

    def axis_limits(self) -> tuple[float, float]:
        return (2.0, 22.2) if self.is_mmol else (40.0, 400.0)


def scale_for(unit: str) -> Scale:
    """The ``Scale`` of a unit named in any usual spelling."""
    return Scale(parse_unit(unit))
