"""publish: gold marts from a ref (default main) into the marts database, plus the reports."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import timeouts
from tasks.lakehouse import read_table
from tasks.profile import current_profile
from tasks.publish import publish_marts_task
from tasks.report import publish_reports_task
from tasks.results import PublishResult
from tasks.runtime import current_run_id

MARTS = ("mrt_daily_glycaemia", "mrt_agp_hourly", "mrt_agp_hourly_14d", "mrt_quality_coverage",
         "mrt_period_summary", "mrt_daily_treatments")


@flow(name="publish", flow_run_name="publish {ref}", timeout_seconds=timeouts.PUBLISH)
def publish(ref: str = "main", marts_block: str | None = None,
            charts: bool = True, units: str | None = None) -> PublishResult:
    """Replace every mart in the marts database with its state at ``ref``, atomically.

    Args:
        ref: branch or tag to publish from (``main``; an older tag to roll BI back).
        marts_block: a ``sqlalchemy-connector`` block; default the embedded SQLite file.
        charts: also render each site's report (last 14 days) into the lakehouse's storage,
            with one ``cgm-report-<site>`` artifact per site.
        units: ``mg/dL`` or ``mmol/L`` for every report instead of each site's own unit
            (from its Nightscout profile).
    """
    profile = current_profile()
    info = profile.lakehouse.branches.ref(ref)
    catalog = profile.lakehouse.branches.catalog(ref)
    marts = {name: read_table(catalog, f"marts.{name}") for name in MARTS
             if catalog.table_exists(f"marts.{name}")}
    report = publish_marts_task(marts, ref, info.hash, current_run_id(),
                                profile.marts_connector(marts_block))
    reports = publish_reports_task(profile.lakehouse, marts, units) if charts else []
    get_run_logger().info("published %d marts from %s@%s", len(marts), ref, info.hash)
    return PublishResult(ref=ref, hash=info.hash, rows={k: v.height for k, v in marts.items()},
                         database=report.database, reports=reports)
