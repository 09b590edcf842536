"""publish: gold marts from a ref (default main) into the marts database, plus the reports."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_sqlalchemy import SqlAlchemyConnector
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue

from tasks import timeouts
from tasks.lakehouse import read_table
from tasks.profile import current_profile
from tasks.publish import MartRows, publish_marts_task, published_columns, published_state
from tasks.publish_plan import MART_NAMESPACE, PublishPlan, plan_publish, report_marts
from tasks.report import publish_reports_task
from tasks.results import PublishResult
from tasks.runtime import current_run_id


@task(name="plan-publish", task_run_name="what to publish of {ref}", cache_policy=NO_CACHE,
      timeout_seconds=timeouts.PUBLISH)
def _plan(catalog: Catalog, ref: str, connector: SqlAlchemyConnector, full: bool) -> PublishPlan:
    with connector:
        state, columns = published_state(connector), published_columns(connector)
    return plan_publish(catalog, ref, state, columns, full)


@task(name="read-marts", task_run_name="read the marts of {plan.ref} to publish",
      cache_policy=NO_CACHE, timeout_seconds=timeouts.PUBLISH)
def _read(catalog: Catalog, plan: PublishPlan) -> dict[str, MartRows]:
    return {name: MartRows(read_table(catalog, f"{MART_NAMESPACE}.{name}",
                                      AlwaysTrue() if m.whole else m.iceberg_filter()),
                           m.scope, m.grain)
            for name, m in plan.marts.items()}


@flow(name="publish", flow_run_name="publish {ref}", timeout_seconds=timeouts.PUBLISH)
def publish(ref: str = "main", marts_block: str | None = None, charts: bool = True,
            units: str | None = None, full: bool = False) -> PublishResult:
    """Bring the marts database to the state of ``ref``, atomically: each mart's partitions
    rebuilt since the build it last received, or the whole mart (first publish, another
    ref, a rollback, a full rebuild, a new or reshaped mart, or ``full``).

    Args:
        ref: branch or tag to publish from (``main``; an older tag to roll BI back).
        marts_block: a ``sqlalchemy-connector`` block; default the profile's database.
        charts: also render the report (last 14 days) of each site whose rows changed into
            the lakehouse's storage, with one ``cgm-report-<site>`` artifact per site.
        units: ``mg/dL`` or ``mmol/L`` for every report instead of each site's own unit
            (from its Nightscout profile); given, every site's report is rendered again,
            not only those of the sites whose rows changed.
        full: write every mart whole.
    """
    profile = current_profile()
    info = profile.lakehouse.branches.ref(ref)
    catalog = profile.lakehouse.branches.catalog(ref)
    plan = _plan(catalog, ref, profile.marts_connector(marts_block), full)
    marts = _read(catalog, plan)
    report = publish_marts_task(marts, ref, info.hash, current_run_id(),
                                profile.marts_connector(marts_block), plan.build_seq,
                                plan.build_id)
    sites = None if units is not None else plan.sites()  # None: every site
    reports = (publish_reports_task(profile.lakehouse, report_marts(catalog, sites), units)
               if charts and (sites is None or sites) else [])
    whole = sorted(name for name, m in plan.marts.items() if m.whole)
    get_run_logger().info(
        "published %d marts from %s@%s (build %s): %s whole, the rest by partition; "
        "%d report(s)", len(marts), ref, info.hash, plan.build_seq, whole or "none",
        len(reports))
    return PublishResult(ref=ref, hash=info.hash, rows=dict(report.marts),
                         database=report.database, reports=reports, modes=dict(report.modes),
                         build_seq=plan.build_seq)
