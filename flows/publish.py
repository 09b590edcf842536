"""publish: gold marts from a ref (default main) into the marts database, plus pictures."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks import timeouts
from tasks.charts import render_charts_task
from tasks.lakehouse import read_table
from tasks.profile import current_profile
from tasks.publish import publish_marts_task
from tasks.results import PublishResult
from tasks.runtime import current_run_id
from tasks.settings import load_lakehouse_settings

MARTS = ("mrt_daily_glycaemia", "mrt_agp_hourly", "mrt_agp_hourly_14d", "mrt_quality_coverage")


@flow(name="publish", flow_run_name="publish {ref}", timeout_seconds=timeouts.PUBLISH)
def publish(ref: str = "main", marts_block: str | None = None,
            charts: bool = True) -> PublishResult:
    """Replace every mart in the marts database with its state at ``ref``, atomically.

    Args:
        ref: branch or tag to publish from (``main``; an older tag to roll BI back).
        marts_block: a ``sqlalchemy-connector`` block; default the embedded SQLite file.
        charts: also render the AGP and time-in-range pictures and artifacts.
    """
    profile = current_profile()
    info = profile.lakehouse.branches.ref(ref)
    catalog = profile.lakehouse.branches.catalog(ref)
    marts = {name: read_table(catalog, f"marts.{name}") for name in MARTS
             if catalog.table_exists(f"marts.{name}")}
    report = publish_marts_task(marts, ref, info.hash, current_run_id(),
                                profile.marts_connector(marts_block))
    pictures: list[str] = []
    if charts and {"mrt_agp_hourly", "mrt_daily_glycaemia"} <= marts.keys():
        out_dir = load_lakehouse_settings().home / "reports"
        sets = render_charts_task(marts["mrt_agp_hourly"], marts["mrt_daily_glycaemia"], out_dir)
        pictures = [str(s.report_html) for s in sets]
    get_run_logger().info("published %d marts from %s@%s", len(marts), ref, info.hash)
    return PublishResult(ref=ref, hash=info.hash, rows={k: v.height for k, v in marts.items()},
                         database=report.database, reports=pictures)
