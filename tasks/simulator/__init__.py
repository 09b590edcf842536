"""Nightscout simulator: deterministic CGM data served over Nightscout's v1 and v3 APIs.

Start one in-process (tests, the demo)::

    with SimulatorServer([default_site("a")]) as sim:
        url = sim.url_for("a")

or in the foreground: ``python -m tasks.simulator --port 1337 --sites a,b``. Change a site
after the fact through ``sim.changes("a")`` (edits, soft and permanent deletes, late
documents; through v3 with ``srvModified`` or as v1 uploads without it) or over HTTP.
"""

from __future__ import annotations

from tasks.simulator.changes import SiteChanges
from tasks.simulator.generate import (
    COLLECTIONS,
    DayData,
    Document,
    SiteConfig,
    default_site,
    expected_records,
    generate_collection,
    generate_day,
    generate_profiles,
)
from tasks.simulator.server import Fault, SimulatorServer, start_simulator

__all__ = [
    "COLLECTIONS",
    "DayData",
    "Document",
    "Fault",
    "SimulatorServer",
    "SiteChanges",
    "SiteConfig",
    "default_site",
    "expected_records",
    "generate_collection",
    "generate_day",
    "generate_profiles",
    "start_simulator",
]
