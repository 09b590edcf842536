"""One hostile-server case, run by bench/hostile.py in a fresh process: ingest one day of
entries from the given URL into a throw-away lakehouse with the client of the code on
``PYTHONPATH`` (this worktree, or an older commit's checkout for the before figures).

Prints one JSON line: the outcome (``ok`` or the error's class and message), rows
committed and rejected, requests made, the work's seconds and the process's peak RSS.
Standalone on purpose (no ``bench`` imports): the code under test comes from PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _client(args: argparse.Namespace) -> Any:
    from pydantic import SecretStr

    from tasks.nightscout import NightscoutClient, RetryPolicy
    from tasks.settings import NightscoutSettings

    settings = NightscoutSettings(args.url, "h", api_secret=SecretStr(args.secret))
    options: dict[str, Any] = {"retry": RetryPolicy(attempts=args.attempts),
                               "timeout_s": args.timeout}
    try:  # the bounded client (this branch); older code has no overall deadline
        from tasks.bounded_http import BodyLimits

        options["limits"] = BodyLimits(deadline_s=args.deadline)
    except ImportError:
        pass
    return NightscoutClient(settings, **options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--day", type=lambda s: datetime.fromisoformat(s).replace(tzinfo=UTC),
                        required=True)
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args()

    from tasks.branches import EmbeddedBranchCatalog
    from tasks.errors import CascadeError
    from tasks.ingest import ingest_window
    from tasks.shaping import ShapeContext

    root = Path(tempfile.mkdtemp(prefix="hostile-bench-"))
    lake = EmbeddedBranchCatalog(root / "catalog.db", root / "warehouse")
    ctx = ShapeContext("h", "UTC", args.day, args.day + timedelta(days=1), "bench",
                       datetime.now(UTC))
    client = _client(args)
    started = time.perf_counter()
    outcome: dict[str, Any] = {"outcome": "ok"}
    try:
        report = ingest_window(client, lake.catalog("main"), ctx, tables=("entries",))
        counts = report.tables["entries"]
        outcome |= {"committed": counts.committed, "rejected": counts.rejected}
    except CascadeError as exc:
        outcome |= {"outcome": type(exc).__name__, "message": str(exc)[:300]}
    outcome |= {"seconds": round(time.perf_counter() - started, 3),
                "requests": client.requests_made, "peak_rss_mib": round(_peak_rss_mib(), 1)}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
