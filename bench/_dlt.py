"""The dlt baseline: the same simulator data into Iceberg with dlt's own pieces.

dlt's REST API source (``dlt.sources.rest_api``) reads the three collections window by
window, and its filesystem destination writes them as Iceberg tables
(``table_format="iceberg"``) on the same local disk. dlt is imported inside the functions:
it is installed only with the ``bench`` dependency group (``.venv-bench``).

Speed settings, from dlt's performance guide, for a 2-core machine: the REST resources
run in parallel threads (``parallelized=True``), normalize runs in as many processes as
there are cores, extract rotates files every ``EXTRACT_FILE_MAX_ITEMS`` rows so normalize
has files to share out, and pages are large (one request per window).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

__all__ = ["DLT_SETTINGS", "ingest_site", "rest_api_config"]

EXTRACT_FILE_MAX_ITEMS: Final = 50_000
PAGE_COUNT: Final = 50_000  # a 30-day window holds ~8,640 entries or status documents

DLT_SETTINGS: Final = {
    "RUNTIME__DLTHUB_TELEMETRY": "false",  # no traffic but to the simulator
    "RUNTIME__LOG_LEVEL": "WARNING",
    "NORMALIZE__WORKERS": str(os.cpu_count() or 1),
    "EXTRACT__WORKERS": "3",  # one thread per collection
    "EXTRACT__DATA_WRITER__FILE_MAX_ITEMS": str(EXTRACT_FILE_MAX_ITEMS),
    "DATA_WRITER__BUFFER_MAX_ITEMS": "10000",
    "LOAD__WORKERS": "3",
}
_TIME_FIELD: Final = {"entries": "date", "treatments": "created_at",
                      "devicestatus": "created_at"}


def _bound(field: str) -> tuple[str, str]:
    """The windows resource's fields a collection's time filter reads (ms or ISO text)."""
    return ("lo_ms", "hi_ms") if field == "date" else ("lo_iso", "hi_iso")


def _resource(name: str) -> dict[str, Any]:
    field = _TIME_FIELD[name]
    lo, hi = _bound(field)
    return {
        "name": name,
        "endpoint": {
            "path": f"{name}.json",
            "params": {
                f"find[{field}][$gte]": f"{{resources.windows.{lo}}}",
                f"find[{field}][$lt]": f"{{resources.windows.{hi}}}",
                "count": PAGE_COUNT,
            },
            "paginator": "single_page",
            "data_selector": "$",
        },
    }


def rest_api_config(url: str, secret: str, windows: Any) -> dict[str, Any]:
    """dlt's declarative REST API config: the Nightscout v1 collections, one request per
    window (``windows`` is a dlt resource yielding each window's bounds)."""
    return {
        "client": {
            "base_url": url.rstrip("/") + "/api/v1/",
            "headers": {"api-secret": hashlib.sha1(secret.encode()).hexdigest()},
        },
        "resource_defaults": {"write_disposition": "append"},
        "resources": [windows, *(_resource(n) for n in _TIME_FIELD)],
    }


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _windows_resource(dlt: Any, bounds: list[tuple[datetime, datetime]]) -> Any:
    def windows() -> Iterator[list[dict[str, Any]]]:
        yield [{"lo_ms": int(lo.timestamp() * 1000), "hi_ms": int(hi.timestamp() * 1000),
                "lo_iso": _iso(lo), "hi_iso": _iso(hi)} for lo, hi in bounds]  # one page

    return dlt.resource(windows, name="windows", selected=False)


def _window_bounds(end: str, days: int, chunk_days: int) -> list[tuple[datetime, datetime]]:
    last = datetime.fromisoformat(end).replace(tzinfo=UTC) + timedelta(days=1)
    lo, out = last - timedelta(days=days), []
    while lo < last:
        hi = min(lo + timedelta(days=chunk_days), last)
        out.append((lo, hi))
        lo = hi
    return out


def _step_seconds(pipeline: Any) -> dict[str, float]:
    steps = pipeline.last_trace.steps
    return {s.step: (s.finished_at - s.started_at).total_seconds() for s in steps
            if s.step in ("extract", "normalize", "load") and s.finished_at}


def iceberg_hygiene(dataset_dir: Path) -> list[dict[str, Any]]:
    """Snapshots, data files and average file size of each Iceberg table dlt wrote."""
    from pyiceberg.table import StaticTable

    out = []
    for meta_dir in sorted(dataset_dir.glob("*/metadata")):
        latest = max(meta_dir.glob("*.metadata.json"), key=lambda p: p.stat().st_mtime)
        table = StaticTable.from_metadata(str(latest))
        sizes = table.inspect.files().column("file_size_in_bytes").to_pylist()
        out.append({"table": f"{dataset_dir.name}.{meta_dir.parent.name}",
                    "snapshots": len(table.snapshots()), "data_files": len(sizes),
                    "avg_file_kib": sum(sizes) / max(1, len(sizes)) / 1024})
    return out


def ingest_site(spec: dict[str, Any]) -> dict[str, Any]:
    """One dlt pipeline run of one site's ``days`` days into a fresh directory.

    ``spec``: url, secret, end (ISO date, last day), days, chunk_days, home.
    """
    os.environ.update(DLT_SETTINGS)
    import dlt
    from dlt.sources.rest_api import rest_api_source

    from bench._cascade import cpu_seconds, peak_rss_mib

    home = Path(spec["home"])
    bounds = _window_bounds(spec["end"], spec["days"], spec["chunk_days"])
    config = rest_api_config(spec["url"], spec["secret"], _windows_resource(dlt, bounds))
    source = rest_api_source(config, name="nightscout", parallelized=True)
    pipeline = dlt.pipeline(
        pipeline_name="nightscout_bench", pipelines_dir=str(home / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(home / "lake").as_uri()),
        dataset_name="raw", progress="log" if spec.get("verbose") else None,
    )
    started, cpu = time.perf_counter(), cpu_seconds()
    pipeline.run(source, table_format="iceberg", loader_file_format="parquet")
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    counts = pipeline.last_trace.last_normalize_info.row_counts
    rows = sum(v for k, v in counts.items() if k in _TIME_FIELD)
    hygiene = iceberg_hygiene(home / "lake" / "raw") if spec.get("hygiene") else []
    return {"seconds": seconds, "cpu_s": cpu, "rows": rows, "peak_rss_mib": peak_rss_mib(),
            "steps": _step_seconds(pipeline), "row_counts": dict(counts),
            "windows": len(bounds), "hygiene": hygiene}
