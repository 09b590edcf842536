"""Named fault points: kill this process hard at a chosen step, to prove crash safety.

``CASCADE_FAULT=<point>`` makes the process SIGKILL itself when it reaches that point,
with no clean-up, no ``finally`` and no flushing, as an OOM kill or a pulled plug would.
Unset (always, outside tests), a fault point is one environment lookup.

| point                   | where                                                          |
| ----------------------- | -------------------------------------------------------------- |
| ``ingest-mid-commit``   | after the first raw table of a window is committed, before the rest |
| ``build-mid-dbt``       | while dbt runs, after its first model is built (plain dbt)     |
| ``build-mid-export``    | after the first dbt model is landed in Iceberg, before the rest |
| ``promote-mid-merge``   | embedded: inside the merge transaction, pointers moved, not yet |
|                         | committed; Nessie: merged, before the promote's tag is created  |
| ``publish-mid-transaction`` | inside the marts transaction, first mart swapped, not committed |
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_POINTS", "fault_point"]

FAULT_POINTS = ("ingest-mid-commit", "build-mid-dbt", "build-mid-export", "promote-mid-merge",
                "publish-mid-transaction")


def fault_point(name: str) -> None:
    """SIGKILL this process if ``CASCADE_FAULT`` names this point."""
    if os.environ.get("CASCADE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
