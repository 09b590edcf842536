"""The Superset bundle in bi/superset/assets hangs together, and the importer prepares it.

No Superset here: these read the YAML files (Superset's export format) and run the
bundle-preparing half of bi/superset/setup_superset.py. tests/integration/test_stack_bi.py
imports the bundle into a real Superset and checks every chart against the marts.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "bi" / "superset" / "assets"
DBT_MARTS = ROOT / "dbt" / "models" / "marts"
# publish writes every model of the marts namespace to the marts database
MARTS = {p.stem for p in DBT_MARTS.glob("*.sql")}


def _load(kind: str) -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ASSETS / kind).rglob("*.yaml"))}


@pytest.fixture(scope="module")
def setup_script() -> ModuleType:
    path = ROOT / "bi" / "superset" / "setup_superset.py"
    spec = importlib.util.spec_from_file_location("cascade_superset_setup", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


DATASETS, CHARTS, DASHBOARDS = _load("datasets"), _load("charts"), _load("dashboards")


def _dataset(chart: dict[str, Any]) -> dict[str, Any]:
    (dataset,) = [d for d in DATASETS.values() if d["uuid"] == chart["dataset_uuid"]]
    return dataset


def _metric_names(params: dict[str, Any]) -> list[str]:
    return list(params.get("metrics") or [params["metric"]])


def test_bundle_is_an_assets_export_with_one_marts_connection() -> None:
    assert yaml.safe_load((ASSETS / "metadata.yaml").read_text())["type"] == "assets"
    (database,) = _load("databases").values()
    assert database["sqlalchemy_uri"].startswith("postgresql+psycopg2://marts_reader@")
    assert ":" not in database["sqlalchemy_uri"].split("//", 1)[1].split("@")[0]  # no password
    assert not (database["allow_dml"] or database["allow_file_upload"] or database["allow_ctas"])
    assert {d["database_uuid"] for d in DATASETS.values()} == {database["uuid"]}
    uuids = [a["uuid"] for kind in (DATASETS, CHARTS, DASHBOARDS) for a in kind.values()]
    assert len(uuids) == len(set(uuids))


def test_datasets_read_published_marts_and_their_columns() -> None:
    for name, dataset in DATASETS.items():
        source = dataset["table_name"] if not dataset["sql"] else (
            re.search(r"from (mrt_\w+)", dataset["sql"]).group(1))  # type: ignore[union-attr]
        assert source in MARTS, name
        # the model and the macros it expands (agp_columns gives n_readings and p05..p95)
        model_sql = (DBT_MARTS / f"{source}.sql").read_text() + "".join(
            p.read_text() for p in (ROOT / "dbt" / "macros").glob("*.sql"))
        for column in dataset["columns"]:
            col = column["column_name"]
            if dataset["sql"] and re.search(rf"\b{col}\b", dataset["sql"]):
                continue  # made by the virtual dataset's own SQL
            if re.fullmatch(r"p\d\d", col):  # the percentiles agp_columns() writes in a loop
                assert "p{{ '%02d' % p }}" in model_sql, f"{name}.{col}"
                continue
            assert re.search(rf"\b{col}\b", model_sql), f"{name}.{col} is not in {source}"


def test_every_chart_query_context_matches_its_params() -> None:
    assert len(CHARTS) == 8
    for name, chart in CHARTS.items():
        params, context = chart["params"], json.loads(chart["query_context"])
        assert context["form_data"] == params, name
        (query,) = context["queries"]
        assert query["metrics"] == _metric_names(params), name
        dataset = _dataset(chart)
        metrics = {m["metric_name"] for m in dataset["metrics"]}
        assert set(query["metrics"]) <= metrics, name
        columns = {c["column_name"] for c in dataset["columns"]}
        used = [c if isinstance(c, str) else c["sqlExpression"] for c in query["columns"]]
        assert set(used) <= columns, name
        assert set(params.get("groupby", [])) <= columns, name
        for f in query["filters"]:
            assert f["col"] in columns, name


def test_dashboard_holds_every_chart_once_and_its_filters_target_real_columns() -> None:
    (dashboard,) = DASHBOARDS.values()
    assert dashboard["dashboard_title"] == "Cascade — glycaemia"
    position = dashboard["position"]
    placed = [n["meta"] for n in position.values()
              if isinstance(n, dict) and n.get("type") == "CHART"]
    assert sorted(m["uuid"] for m in placed) == sorted(c["uuid"] for c in CHARTS.values())
    chart_ids = {m["chartId"] for m in placed}
    by_uuid = {d["uuid"]: d for d in DATASETS.values()}
    filters = {f["name"]: f for f in dashboard["metadata"]["native_filter_configuration"]}
    assert set(filters) == {"Site", "Glucose unit", "Period"}
    for flt in filters.values():
        assert set(flt["scope"]["excluded"]) <= chart_ids
        for target in flt["targets"]:
            if target:
                columns = {c["column_name"] for c in by_uuid[target["datasetUuid"]]["columns"]}
                assert target["column"]["name"] in columns
    # the site filter reaches every dataset; the unit filter defaults to the site's own unit
    assert all("site_id" in {c["column_name"] for c in d["columns"]} for d in DATASETS.values())
    unit = filters["Glucose unit"]["defaultDataMask"]
    assert unit["extraFormData"]["filters"] == [
        {"col": "glucose_unit", "op": "IN", "val": ["Site's unit"]}]


def test_importer_sets_the_marts_address_and_the_dbt_descriptions(
    setup_script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "postgres")
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.setenv("MARTS_DATABASE", "marts")
    contents = setup_script.load_bundle(ASSETS, setup_script.dbt_docs(DBT_MARTS))
    database = yaml.safe_load(contents["databases/cascade_marts.yaml"])
    assert database["sqlalchemy_uri"] == "postgresql+psycopg2://marts_reader@postgres:6543/marts"
    daily = yaml.safe_load(contents["datasets/cascade_marts/mrt_daily_glycaemia.yaml"])
    assert daily["description"].startswith("One row per site and local day")
    described = {c["column_name"]: c["description"] for c in daily["columns"]}
    assert described["tir_pct"] == "Readings in 70-180 mg/dL inclusive."
    assert described["site_id"] is None  # undocumented in dbt: left empty
    assert set(contents) == {p.relative_to(ASSETS).as_posix() for p in ASSETS.rglob("*.yaml")}


def test_importer_refuses_a_folder_without_the_bundle(
    setup_script: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "x.yaml").write_text("slice_name: x\n")
    with pytest.raises(SystemExit, match="not a Superset assets bundle"):
        setup_script.load_bundle(tmp_path, {})
