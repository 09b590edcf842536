"""What a run knows about itself: its source, run id and branch name.

The profile (lakehouse, marts database) is decided in ``tasks.profile``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from tasks.errors import ConfigError
from tasks.settings import NightscoutSettings, load_nightscout_settings

__all__ = ["current_run_id", "require_source", "run_branch_name"]


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
