"""How long each kind of run may take before Prefect fails it (``timeout_seconds``).

One place for every limit. On a shared work pool a run that never ends (a Nightscout that
trickles one byte at a time, a query that hangs) holds a worker slot, a pod and, for
``daily``, the deployment's single concurrency slot: with a timeout it ends ``Failed``
(``TimedOut``), the failure automation says so, and main is untouched. The limits are far
above what the benchmarks measure (docs/benchmarks.md): they catch hangs, not slow days.
A longer one for a single run: ``flow.with_options(timeout_seconds=...)``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BACKFILL", "BUILD", "CHANGE_FEED", "CHARTS", "DAILY", "INGEST_DAY", "INGEST_WINDOW",
           "MAINTAIN", "PARTITION_RUN", "PROMOTE", "PUBLISH", "RECONCILE", "VALIDATE"]

MINUTE: Final = 60
HOUR: Final = 60 * MINUTE

INGEST_DAY: Final = 1 * HOUR        # ingest_day: one UTC day of one site
INGEST_WINDOW: Final = 3 * HOUR     # one partition (up to chunk_days days of one site); also
                                    # a reconcile window
CHANGE_FEED: Final = 1 * HOUR       # one site's API v3 change feed read from its cursor
PARTITION_RUN: Final = 6 * HOUR     # a partition as a deployment run, queueing included
BUILD: Final = 3 * HOUR             # build_branch: dbt build of every layer
VALIDATE: Final = 1 * HOUR          # validate and each of its checks
PROMOTE: Final = 15 * MINUTE        # promote: a merge, a tag, a branch deleted
PUBLISH: Final = 1 * HOUR           # publish and its marts transaction
CHARTS: Final = 30 * MINUTE         # the report pictures of every site
MAINTAIN: Final = 3 * HOUR          # snapshot expiry and orphan-file removal
DAILY: Final = 6 * HOUR             # the whole chain for one day, every site
BACKFILL: Final = 48 * HOUR         # the whole chain for a range (years of history)
RECONCILE: Final = 48 * HOUR        # reconcile: re-read a range (years of history) and land it
