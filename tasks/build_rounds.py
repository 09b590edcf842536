"""Rounds of a build that rebuilds everything: a few sites at a time.

A full build (the first build of a lakehouse, ``full_refresh``, a changed dbt project)
rebuilds every site's whole history. Run as one dbt invocation, its memory grows with the
lakehouse: 2.65 GB at 10 site-years on the embedded profile. Here it is cut into rounds of
sites whose source rows fit ``CASCADE_BUILD_ROUND_ROWS`` (a site larger than that is a round
of its own), so the build's memory follows the largest round instead.

Each round is one dbt invocation with the dbt var ``build_sites``: its sites are rebuilt
whole, every other site's partitions are left as they are, and the first round of the
build starts every model from empty (dbt/macros/touched.sql, ``cascade_round_sites``).
When everything fits one round, the build is one invocation with no var, as before.

The rows per site come from the partition summaries of the tables dbt reads (Iceberg
metadata; no data file is read).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pyiceberg.catalog import Catalog

from tasks.errors import ConfigError
from tasks.tables import AUDIT_TABLES, DBT_AUDIT_SOURCES, RAW_TABLES

__all__ = [
    "DEFAULT_ROUND_ROWS",
    "ROUND_ROWS_ENV",
    "merge_round_results",
    "plan_rounds",
    "round_rows",
    "round_vars",
    "source_rows_by_site",
]

ROUND_ROWS_ENV: Final = "CASCADE_BUILD_ROUND_ROWS"
# About two site-years of 5-minute readings with their device status and treatments
# (~220k source rows per site-year): a first backfill of 30 site-years in such rounds peaked
# at 1.4 GB on the embedded profile (docs/benchmarks.md, "Recurring runs as the history grows").
DEFAULT_ROUND_ROWS: Final = 500_000

# dbt statuses from the worst down: a node that ran in several rounds keeps its worst
_SEVERITY: Final = {"error": 5, "runtime error": 5, "fail": 4, "skipped": 3, "warn": 2}


def round_rows() -> int:
    """The source rows a round may hold (``CASCADE_BUILD_ROUND_ROWS``).

    Raises:
        ConfigError: the setting is not a positive whole number.
    """
    text = os.environ.get(ROUND_ROWS_ENV, "").strip()
    if not text:
        return DEFAULT_ROUND_ROWS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"{ROUND_ROWS_ENV}={text!r}: set it to the source rows one build round may hold, a "
            f"positive whole number (default {DEFAULT_ROUND_ROWS})")
    return value


def source_rows_by_site(catalog: Catalog) -> dict[str, int]:
    """Rows per site over the tables dbt reads (raw, and the audit sources: a site whose
    ingest found no rows has only those), from their partition summaries."""
    counts: Counter[str] = Counter()
    sources = [t.identifier for t in RAW_TABLES.values()]
    sources += [AUDIT_TABLES[name].identifier for name in DBT_AUDIT_SOURCES]
    for identifier in sources:
        if not catalog.table_exists(identifier):
            continue
        table = catalog.load_table(identifier)
        if table.current_snapshot() is None:  # created, never written
            continue
        partitions = table.inspect.partitions()
        if partitions.num_rows == 0:
            continue
        sites = partitions.column("partition").combine_chunks().field("site_id").to_pylist()
        rows = partitions.column("record_count").to_pylist()
        for site, n in zip(sites, rows, strict=True):
            counts[str(site)] += int(n)
    return dict(counts)


def plan_rounds(rows_by_site: Mapping[str, int], budget: int) -> tuple[tuple[str, ...], ...]:
    """Sites in rounds of at most ``budget`` source rows, in site order; ``()`` when all fit
    one round (the build then runs as a single invocation over every site)."""
    if sum(rows_by_site.values()) <= budget:
        return ()
    rounds: list[list[str]] = []
    held = budget + 1  # start a round at the first site
    for site in sorted(rows_by_site):
        n = rows_by_site[site]
        if held + n > budget:
            rounds.append([])
            held = 0
        rounds[-1].append(site)
        held += n
    return tuple(tuple(r) for r in rounds)


def round_vars(sites: tuple[str, ...]) -> list[str]:
    """dbt's options that limit an invocation to the round of ``sites``."""
    return ["--vars", json.dumps({"build_sites": list(sites)})]


def merge_round_results(rounds: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One result per dbt node over all rounds: its worst status (a failure in any round
    stays a failure), in the order the nodes first ran."""
    merged: dict[str, dict[str, Any]] = {}
    for results in rounds:
        for result in results:
            key = result["unique_id"]
            kept = merged.get(key)
            if kept is None or _severity(result) > _severity(kept):
                merged[key] = result
    return list(merged.values())


def _severity(result: Mapping[str, Any]) -> int:
    return _SEVERITY.get(str(result["status"]), 0)
