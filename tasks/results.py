"""What the flows hand each other, the UI and the command line: typed results.

Every flow returns one of these (never a loose dict), so the next flow, the CLI and a
test read the same named fields. They are plain frozen dataclasses: Prefect persists them
as it does any return value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from tasks.dbt_runner import BuildReport
from tasks.ingest import TableCounts
from tasks.validation import Check

__all__ = [
    "ChangesReport",
    "IngestResult",
    "PromoteResult",
    "PublishResult",
    "PublishedReport",
    "RunResult",
    "ValidationResult",
]


@dataclass(frozen=True)
class ChangesReport:
    """What a run's change feeds and reconcile windows did (``daily``, ``reconcile``)."""

    feeds: dict[str, str]  # site id -> feed status: ok, started, or why there is none
    changes_read: int  # changes the feeds listed
    windows: int  # reconcile windows re-read
    table_days_landed: int  # (table, UTC day) pairs that differed and were landed
    rows_removed: int  # rows taken out of the lake (audit.deletions)
    requests: int  # HTTP requests to the sites, feeds and windows together

    def line(self) -> str:
        """One log line: ``changes: feeds (a ok) listed 3; 2 reconcile windows, ...``."""
        feeds = ", ".join(f"{site} {status.split(':')[0]}" for site, status in self.feeds.items())
        return (f"changes: feeds ({feeds or 'off'}) listed {self.changes_read}; "
                f"{self.windows} reconcile windows, {self.table_days_landed} table-days "
                f"differed and landed, {self.rows_removed} rows removed; "
                f"{self.requests} requests")


@dataclass(frozen=True)
class IngestResult:
    """What an ingest step landed on its branch, per raw table (every site together)."""

    branch: str
    run_id: str
    sites: list[str]
    timezones: dict[str, str]  # site id -> the IANA timezone its local days are cut in
    windows: int  # partitions (site × day chunk) in the run
    resumed: int  # of those, already on the branch from an earlier attempt
    tables: dict[str, TableCounts]
    changes: ChangesReport | None = None  # edits and deletions landed (daily, reconcile)

    @property
    def committed(self) -> int:
        """Rows committed to the raw tables."""
        return sum(c.committed for c in self.tables.values())


@dataclass(frozen=True)
class ValidationResult:
    """A branch that passed every audit check, and main's hash when it did."""

    branch: str
    main_hash: str
    checks: list[Check]


@dataclass(frozen=True)
class PromoteResult:
    """A merge into main: the tag it left and main's hash before and after."""

    branch: str
    tag: str
    tables: list[str]
    main_before: str
    main_after: str


@dataclass(frozen=True)
class PublishedReport:
    """A site's report: where it was stored, its links, and the figures a run summary shows
    (the last 14 days, formatted in the site's unit)."""

    site_id: str
    unit: str
    url: str  # what a browser opens (file:// or a presigned object-store link)
    location: str  # file:///… or s3://bucket/key
    latest_url: str  # the site's latest.html
    artifact_key: str  # cgm-report-<site>
    headline: dict[str, str | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishResult:
    """Marts published from a ref: rows per mart, where to, and the reports rendered."""

    ref: str
    hash: str
    rows: dict[str, int]  # rows written per mart
    database: str
    reports: list[PublishedReport] = field(default_factory=list)
    modes: dict[str, str] = field(default_factory=dict)  # mart -> "whole" | "partitions"
    build_seq: int | None = None  # the ref's latest build, which the database now holds


@dataclass(frozen=True)
class RunResult:
    """A parent run (``backfill`` or ``daily``): its ingest, then — unless it stopped after
    ingesting — the build, the audit, the promote and the publish."""

    ingest: IngestResult
    build: BuildReport | None = None
    validation: ValidationResult | None = None
    promoted: PromoteResult | None = None
    published: PublishResult | None = None
    promote_attempts: int = 0
    days: dict[str, date] = field(default_factory=dict)  # daily: each site's local day

    @property
    def branch(self) -> str:
        """The run's branch (deleted once promoted)."""
        return self.ingest.branch

    @property
    def tag(self) -> str | None:
        """The ``promoted-…`` tag on main, when the run was promoted."""
        return self.promoted.tag if self.promoted else None
