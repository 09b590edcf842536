"""Command line: ``python -m flows <command>`` (``--help`` lists them).

``demo`` is the README's first command: with no ``NIGHTSCOUT_URL`` it starts the bundled
Nightscout simulator, then runs the pipeline on the embedded profile and says where the
data is and how to look at it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.results import IngestResult, PublishResult, RunResult

__all__ = ["main"]


@contextmanager
def _source_or_simulator(days: int) -> Iterator[str]:
    """Yield a description of the source; start the simulator when none is configured."""
    if os.environ.get("NIGHTSCOUT_URL") or os.environ.get("NIGHTSCOUT_BLOCK"):
        block = "block " + os.environ.get("NIGHTSCOUT_BLOCK", "")
        yield "Nightscout at " + os.environ.get("NIGHTSCOUT_URL", block)
        return
    from tasks.simulator import SimulatorServer, SiteConfig

    secret, token = "cascade-demo-secret", "cascade-demo-reader"  # the token opens API v3
    site = SiteConfig(site_id="demo", seed=7, timezone="Europe/London", api_secret=secret,
                      token=token)
    demo_env = {"NIGHTSCOUT_URL": "", "NIGHTSCOUT_API_SECRET": secret,
                "NIGHTSCOUT_TOKEN": token, "NIGHTSCOUT_SITE_ID": "demo"}
    with SimulatorServer([site], history_days=days + 5) as server:
        os.environ.update({**demo_env, "NIGHTSCOUT_URL": server.url_for("demo")})
        try:
            yield f"the bundled Nightscout simulator at {server.url_for('demo')}"
        finally:
            for key in demo_env:
                os.environ.pop(key, None)


def _demo(args: argparse.Namespace) -> int:
    from flows.pipeline import backfill
    from tasks.settings import load_lakehouse_settings

    end = datetime.now(UTC).date() - timedelta(days=1)
    start = end - timedelta(days=args.days - 1)
    with _source_or_simulator(args.days) as source:
        print(f"Cascade demo: {args.days} days ({start}..{end}) from {source}")
        result = backfill(start=start, end=end, chunk_days=args.chunk_days,
                          max_concurrency=args.max_concurrency,
                          dbt_node_tasks=args.dbt_node_tasks, units=args.units)
    _print_where(result, load_lakehouse_settings().home, args.units)
    return 0


def _print_where(result: RunResult, home: Path, units: str | None = None) -> None:
    print()
    _print_ingested(result.ingest)
    if result.tag is not None:
        print(f"\nAudited on branch {result.branch!r}, promoted into main as tag {result.tag!r}.")
        _print_marts(units)
    else:
        print(f"\nLanded on branch {result.branch!r} of the embedded lakehouse at {home}")
    print("\nLook at it:")
    print(f"  lakehouse       {home}  (catalog.db + warehouse/)")
    print(f"  marts (SQLite)  {home}/marts.db")
    for report in result.published.reports if result.published else []:
        print(f"  CGM report      {report.url}")
    print("  python -m flows refs                      # branches and tags")
    print("  python -m flows show marts.mrt_daily_glycaemia --ref main")
    print("  docs/querying.md: open main, a branch or a tag from DuckDB or PyIceberg")


def _print_marts(units: str | None = None) -> None:
    from tasks.profile import current_profile
    from tasks.publish import read_mart
    from tasks.report import headline_lines

    summary = read_mart(current_profile().marts_connector(), "mrt_period_summary")
    for line in headline_lines(summary, units):
        print(line)


def _refs(args: argparse.Namespace) -> int:
    from tasks.profile import current_profile

    for ref in current_profile().lakehouse.branches.list_refs():
        print(f"{ref.kind:<7} {ref.name:<50} {ref.hash}  {ref.created_at}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from tasks.lakehouse import read_table
    from tasks.profile import current_profile

    frame = read_table(current_profile().lakehouse.branches.catalog(args.ref), args.table)
    print(f"{args.table} on {args.ref}: {frame.height:,} rows")
    print(frame.head(args.limit))
    return 0


def _sql(args: argparse.Namespace) -> int:
    from tasks.profile import current_profile
    from tasks.query import open_ref

    print(open_ref(current_profile().lakehouse.branches.catalog(args.ref)).sql(args.query))
    return 0


def _flow_command(args: argparse.Namespace) -> int:
    """build / validate / promote / publish / daily: run that flow and print its result."""
    if args.command == "build":
        from flows.build_branch import build_branch

        report = build_branch(branch=args.branch, full_refresh=args.full_refresh)
        what = f"everything ({report.reason})" if report.full_refresh else "incremental"
        print(f"built {args.branch} (build {report.build_seq}, {what}): "
              f"{len(report.exported)} models, failures: {report.failures}")
    elif args.command == "validate":
        from flows.validate import validate

        audit = validate(branch=args.branch)
        print(f"validated {audit.branch}: {len(audit.checks)} checks passed; main at "
              f"{audit.main_hash}")
    elif args.command == "promote":
        from flows.promote import promote

        merged = promote(branch=args.branch)
        print(f"promoted {merged.branch} into main as {merged.tag}: {len(merged.tables)} "
              f"tables, main {merged.main_before} -> {merged.main_after}")
    elif args.command == "publish":
        from flows.publish import publish

        _print_published(publish(ref=args.ref, units=args.units, full=args.full))
    elif args.command == "daily":
        from flows.pipeline import daily

        _print_run(daily(day=args.day, sites=args.sites or None, units=args.units,
                         reconcile_days=args.reconcile_days,
                         change_feed=not args.no_change_feed, dbt_node_tasks=not args.plain_dbt,
                         full_refresh=args.full_refresh))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from flows.reconcile import reconcile

    _print_run(reconcile(start=args.start, end=args.end, sites=args.sites or None,
                         chunk_days=args.chunk_days, max_concurrency=args.max_concurrency,
                         dbt_node_tasks=not args.plain_dbt, units=args.units,
                         full_refresh=args.full_refresh))
    return 0


def _print_ingested(ingested: IngestResult) -> None:
    print(f"ingested {ingested.committed:,} rows of {', '.join(ingested.sites)} onto "
          f"{ingested.branch} ({ingested.windows} windows, {ingested.resumed} already there)")
    for name, counts in ingested.tables.items():
        print(f"  raw.{name:<13} committed {counts.committed:>8,}  duplicates "
              f"{counts.duplicates:>6,}  rejected {counts.rejected:>5,}")
    if ingested.changes is not None:
        print(f"  {ingested.changes.line()}")


def _print_published(published: PublishResult) -> None:
    marts = ", ".join(f"{name} {rows:,}" for name, rows in published.rows.items())
    print(f"published from {published.ref}@{published.hash} to {published.database}: {marts}")
    for report in published.reports:
        print(f"  report {report.site_id} ({report.unit}): {report.url}")


def _print_run(result: RunResult) -> None:
    _print_ingested(result.ingest)
    for site, day in result.days.items():
        print(f"  site {site}: local day {day}")
    if result.tag is None:
        print(f"branch {result.branch} kept, not promoted")
        return
    print(f"promoted into main as {result.tag} (attempt {result.promote_attempts})")
    if result.published is not None:
        _print_published(result.published)


def _reset(args: argparse.Namespace) -> int:
    from tasks.profile import current_profile

    info = current_profile().lakehouse.branches.reset(args.branch, args.to_ref)
    print(f"{info.name} now points where {args.to_ref} does ({info.hash}); "
          "run `python -m flows publish` to refresh the marts database")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from tasks.profile import current_profile

    current_profile().lakehouse.branches.delete_branch(args.name)
    print(f"deleted {args.name}")
    return 0


def _maintain(args: argparse.Namespace) -> int:
    from flows.maintain import maintain

    print(maintain(retain_days=args.retain_days, keep_last=args.keep_last,
                   grace_hours=args.grace_hours, dry_run=args.dry_run))
    return 0


def _backup(args: argparse.Namespace) -> int:
    from tasks.maintenance import backup_lakehouse
    from tasks.profile import current_profile

    report = backup_lakehouse(current_profile().lakehouse, args.destination)
    print(f"backed up {report.refs} refs and {report.files:,} files ({report.bytes:,} bytes) "
          f"to {report.path}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from tasks.maintenance import restore_lakehouse
    from tasks.profile import current_profile

    report = restore_lakehouse(current_profile().lakehouse, args.source)
    print(f"restored {report.refs} refs from {report.source}: copied {report.files_copied:,} "
          f"files ({report.bytes_copied:,} bytes), {report.files_present:,} were present; "
          "run `python -m flows publish` to refresh the marts database")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from flows.pipeline import backfill

    result = backfill(start=args.start, end=args.end, branch=args.branch,
                      sites=args.sites or None, fan_out=args.fan_out,
                      chunk_days=args.chunk_days, max_concurrency=args.max_concurrency,
                      max_reject_ratio=args.max_reject_ratio,
                      promote_to_main=not args.no_promote,
                      dbt_node_tasks=not args.plain_dbt, units=args.units,
                      full_refresh=args.full_refresh)
    _print_run(result)
    return 0


def _register_blocks(args: argparse.Namespace) -> int:
    from blocks.register import register_blocks

    selectors = register_blocks(prefix=args.prefix)
    print("registered Cascade's block types (nightscout-site, nessie-catalog, trino-connection, "
          "minio-credentials, aws-credentials, s3-bucket, sqlalchemy-connector)")
    if not selectors:
        print("saved no block document: on the embedded profile set NIGHTSCOUT_URL (and "
              "NIGHTSCOUT_API_SECRET or NIGHTSCOUT_TOKEN) to save a nightscout-site document, "
              "or create one in the Prefect UI (Blocks → Nightscout Site)")
        return 0
    print("saved block documents: " + ", ".join(selectors.values()))
    print("flows load them when these are set (e.g. in a work pool's job variables):")
    for variable, name in selectors.items():
        print(f"  {variable}={name}")
    return 0


def _apply_automations(args: argparse.Namespace) -> int:
    from flows.automations import apply_automations

    applied = apply_automations(block_name=args.webhook_block)
    for name, automation_id in applied.items():
        print(f"automation {name}: {automation_id}")
    print(f"notifications go through block {args.webhook_block!r}")
    return 0


def _ingest_day(args: argparse.Namespace) -> int:
    from flows.ingest_day import ingest_day

    _print_ingested(ingest_day(day=args.day, branch=args.branch))
    return 0


def _unit(text: str) -> str:
    from tasks.units import parse_unit

    try:
        return parse_unit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _units_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--units", type=_unit, metavar="UNIT",
                     help="mg/dL or mmol/L for every report and printout instead of each "
                          "site's own unit (from its Nightscout profile)")


_FULL_REFRESH = ("rebuild every model whole (default: only the partitions the run changed; "
                 "done by itself when the dbt project changed)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the pipeline on the embedded profile")
    demo.add_argument("--days", type=int, default=365, help="days of history (default 365)")
    demo.add_argument("--chunk-days", type=int, default=30)
    demo.add_argument("--max-concurrency", type=int, default=2)
    demo.add_argument("--dbt-node-tasks", action="store_true",
                      help="one Prefect task per dbt node, as deployments run it "
                           "(slower on the in-process API; the demo runs dbt plainly)")
    _units_option(demo)
    demo.set_defaults(run=_demo)
    back = sub.add_parser("backfill", help="ingest a UTC day range onto a run branch")
    back.add_argument("start", type=date.fromisoformat)
    back.add_argument("end", type=date.fromisoformat)
    back.add_argument("--branch", help="ingest onto this branch (resumes what it holds)")
    back.add_argument("--site", dest="sites", action="append", metavar="BLOCK",
                      help="a nightscout-site block; repeat for several sites on one branch")
    back.add_argument("--fan-out", choices=("tasks", "deployments"), default="tasks",
                      help="partitions as task runs here, or as cascade-ingest-window "
                           "deployment runs on the work pool")
    back.add_argument("--chunk-days", type=int, default=30)
    back.add_argument("--max-concurrency", type=int, default=2)
    back.add_argument("--max-reject-ratio", type=float, default=0.05)
    back.add_argument("--no-promote", action="store_true",
                      help="stop after ingestion and keep the branch")
    back.add_argument("--plain-dbt", action="store_true",
                      help="run dbt plainly instead of one Prefect task per dbt node")
    back.add_argument("--full-refresh", action="store_true", help=_FULL_REFRESH)
    _units_option(back)
    back.set_defaults(run=_backfill)
    for name, help_text in (("build", "dbt build on a branch"),
                            ("validate", "audit a branch"),
                            ("promote", "merge a validated branch into main")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("branch")
        if name == "build":
            cmd.add_argument("--full-refresh", action="store_true", help=_FULL_REFRESH)
        cmd.set_defaults(run=_flow_command)
    pub = sub.add_parser("publish", help="publish marts from a ref to the marts database")
    pub.add_argument("--ref", default="main")
    pub.add_argument("--full", action="store_true",
                     help="write every mart whole (default: what changed since the last "
                          "publish)")
    _units_option(pub)
    pub.set_defaults(run=_flow_command)
    dly = sub.add_parser("daily", help="the whole chain for one local day (default yesterday)")
    dly.add_argument("day", nargs="?", type=date.fromisoformat)
    dly.add_argument("--site", dest="sites", action="append", metavar="BLOCK",
                     help="a nightscout-site block; repeat for several sites on one branch")
    _units_option(dly)
    dly.add_argument("--reconcile-days", type=int, default=14,
                     help="UTC days before the daily's own re-read for edits and deletions "
                          "the change feed cannot see (default 14; 0: none)")
    dly.add_argument("--no-change-feed", action="store_true",
                     help="do not read the sites' API v3 change feeds")
    dly.add_argument("--plain-dbt", action="store_true",
                     help="run dbt plainly instead of one Prefect task per dbt node")
    dly.add_argument("--full-refresh", action="store_true", help=_FULL_REFRESH)
    dly.set_defaults(run=_flow_command)
    rec = sub.add_parser("reconcile", help="re-read a UTC day range and land what differs "
                                           "(edits and deletions of any age)")
    rec.add_argument("start", type=date.fromisoformat)
    rec.add_argument("end", type=date.fromisoformat)
    rec.add_argument("--site", dest="sites", action="append", metavar="BLOCK",
                     help="a nightscout-site block; repeat for several sites on one branch")
    rec.add_argument("--chunk-days", type=int, default=30)
    rec.add_argument("--max-concurrency", type=int, default=2)
    rec.add_argument("--plain-dbt", action="store_true",
                     help="run dbt plainly instead of one Prefect task per dbt node")
    _units_option(rec)
    rec.add_argument("--full-refresh", action="store_true", help=_FULL_REFRESH)
    rec.set_defaults(run=_reconcile)
    reset = sub.add_parser("reset", help="point a branch (main) at a tag: undo a promote")
    reset.add_argument("branch")
    reset.add_argument("to_ref")
    reset.set_defaults(run=_reset)
    delete = sub.add_parser("delete-branch", help="delete a branch or tag")
    delete.add_argument("name")
    delete.set_defaults(run=_delete)
    keep = sub.add_parser("maintain", help="expire old snapshots on main and delete files "
                                           "no branch or tag reaches (embedded profile)")
    keep.add_argument("--retain-days", type=float, default=7)
    keep.add_argument("--keep-last", type=int, default=10)
    keep.add_argument("--grace-hours", type=float, default=1)
    keep.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    keep.set_defaults(run=_maintain)
    backup = sub.add_parser("backup", help="copy catalog.db and the live warehouse files")
    backup.add_argument("destination", type=Path, help="a new, empty directory")
    backup.set_defaults(run=_backup)
    restore = sub.add_parser("restore", help="put a backup back (same CASCADE_HOME path)")
    restore.add_argument("source", type=Path)
    restore.set_defaults(run=_restore)
    day = sub.add_parser("ingest-day", help="(re-)ingest one UTC day onto a branch")
    day.add_argument("day", type=date.fromisoformat)
    day.add_argument("--branch")
    day.set_defaults(run=_ingest_day)
    reg = sub.add_parser("register-blocks",
                         help="register block types; save the stack's documents from env")
    reg.add_argument("--prefix", default="cascade", help="document name prefix")
    reg.set_defaults(run=_register_blocks)
    auto = sub.add_parser("apply-automations",
                          help="create or update the failure and freshness automations")
    auto.add_argument("--webhook-block", default="cascade-alerts",
                      help="notification block: a Custom Webhook document's name (created "
                           "from CASCADE_ALERT_WEBHOOK_URL if missing) or <type-slug>/<name>")
    auto.set_defaults(run=_apply_automations)
    refs = sub.add_parser("refs", help="list branches and tags")
    refs.set_defaults(run=_refs)
    show = sub.add_parser("show", help="print a table at a ref")
    show.add_argument("table")
    show.add_argument("--ref", default="main")
    show.add_argument("--limit", type=int, default=10)
    show.set_defaults(run=_show)
    sql = sub.add_parser("sql", help="run a DuckDB query against a ref's tables")
    sql.add_argument("query")
    sql.add_argument("--ref", default="main")
    sql.set_defaults(run=_sql)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a Cascade error ends it with its message as one line."""
    from tasks.errors import CascadeError

    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CascadeError as exc:  # the message says what failed and what to do
        print(f"cascade: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
