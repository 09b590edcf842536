"""Resolve the profile's parts once, at the flow's edge: lakehouse, source, run ids.

``CASCADE_PROFILE`` picks the lakehouse: ``embedded`` (default; SQLite catalog with
branches under ``$CASCADE_HOME``) or ``stack`` (Nessie + MinIO; see docs/stack.md).
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, date, datetime, timedelta

from tasks.errors import ConfigError
from tasks.lakehouse import Lakehouse, embedded_lakehouse, stack_lakehouse
from tasks.settings import NightscoutSettings, load_nightscout_settings

__all__ = ["current_lakehouse", "current_run_id", "day_windows", "require_source", "run_branch_name"]


def current_lakehouse() -> Lakehouse:
    """The lakehouse of the active profile (``CASCADE_PROFILE``, default embedded)."""
    profile = os.environ.get("CASCADE_PROFILE", "embedded").strip() or "embedded"
    if profile == "embedded":
        return embedded_lakehouse()
    if profile == "stack":
        return stack_lakehouse()
    raise ConfigError(
        f"CASCADE_PROFILE={profile!r} is unknown: use 'embedded' (default) or 'stack'"
    )


def require_source(url: str | None = None, block_name: str | None = None) -> NightscoutSettings:
    """The Nightscout site to ingest from, or a ConfigError saying how to name one."""
    source = load_nightscout_settings(url=url, block_name=block_name)
    if source is None:
        raise ConfigError(
            "no Nightscout site configured: set NIGHTSCOUT_URL (and NIGHTSCOUT_API_SECRET or "
            "NIGHTSCOUT_TOKEN), or NIGHTSCOUT_BLOCK to a nightscout-site block; "
            "`python -m flows demo` starts the bundled simulator instead"
        )
    return source


def current_run_id() -> str:
    """The Prefect flow run id when running in a flow, else a fresh id (8 hex chars)."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()  # None outside a flow run
    return (run_id or uuid.uuid4().hex).replace("-", "")[:8]


def run_branch_name(kind: str, run_id: str) -> str:
    """A branch name for one run: ``run-<kind>-<utc timestamp>-<run id>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"run-{kind}-{stamp}-{run_id}"


def day_windows(start: date, end: date, chunk_days: int) -> list[tuple[date, date]]:
    """Split the inclusive day range ``[start, end]`` into ``[lo, hi)`` chunks."""
    if end < start:
        raise ConfigError(f"backfill end {end} is before start {start}")
    if chunk_days < 1:
        raise ConfigError(f"chunk_days must be at least 1, got {chunk_days}")
    out, lo, stop = [], start, end + timedelta(days=1)
    while lo < stop:
        hi = min(lo + timedelta(days=chunk_days), stop)
        out.append((lo, hi))
        lo = hi
    return out
