"""Contracts: ``check`` rejects exactly the rows pandera's own validation fails, with the
same reasons, for every rule of every raw table's contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandera.polars as pa
import polars as pl
import pytest
from pandera.errors import SchemaErrors

from tasks.contracts import CONTRACTS, check
from tasks.errors import ContractError
from tasks.shaping import ShapeContext
from tasks.tables import raw_table

CTX = ShapeContext("a", "UTC", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC),
                   "run1", datetime(2024, 1, 2, tzinfo=UTC))
AT = datetime(2024, 1, 1, 12, tzinfo=UTC)
FUTURE = AT + timedelta(days=5)


def _rows(table: str, n: int) -> pl.DataFrame:
    """``n`` rows that keep ``table``'s contract."""
    spec = raw_table(table)
    values: dict[str, object] = {"site_id": "a", "ingest_run_id": "run1",
                                 "ingested_at": CTX.ingested_at, spec.time_column: AT}
    if table == "entries":
        values |= {"entry_type": "sgv", "sgv_mg_dl": 120, "noise": 1}
    if table == "treatments":
        values |= {"event_type": "Note", "insulin_u": 1.0}
    if table == "devicestatus":
        values |= {"payload": "{}", "iob_u": 0.5}
    if table == "profile":
        values |= {"timezone": "Europe/London", "dia_h": 3.0}
    columns = {c: [values.get(c)] * n for c in spec.columns}
    columns[spec.id_column] = [f"r{i:02d}" for i in range(n)]
    return pl.DataFrame(columns, schema=spec.polars_schema)


# Each row breaks the rules named, one at a time or several together.
BREAKS: dict[str, list[dict[str, object]]] = {
    "entries": [
        {"sgv_mg_dl": 0}, {"sgv_mg_dl": 1001, "noise": 11}, {"sgv_mg_dl": None},
        {"entry_type": "mbg", "sgv_mg_dl": None}, {"entry_type": "mbg", "mbg_mg_dl": -3},
        {"entry_type": ""}, {"entry_type": "x" * 33}, {"entry_type": None},
        {"entry_at": FUTURE}, {"entry_at": None}, {"noise": -1}, {"site_id": ""},
        {"site_id": None, "ingest_run_id": None}, {"entry_id": None}, {"entry_id": "r00"},
    ],
    "treatments": [
        {"insulin_u": -1.0}, {"carbs_g": 1001.0}, {"duration_min": 1e9}, {"rate_u_per_h": 51.0},
        {"absolute_u_per_h": -0.1}, {"glucose": 2000.0}, {"event_type": "E" * 65},
        {"treatment_at": FUTURE, "event_type": ""}, {"insulin_u": float("nan")},
        {"treatment_id": "r01"},
    ],
    "devicestatus": [
        {"uploader_battery_pct": 101.0}, {"pump_reservoir_u": -1.0}, {"iob_u": -101.0},
        {"cob_g": 2001.0}, {"payload": None}, {"status_at": FUTURE}, {"devicestatus_id": None},
    ],
    "profile": [{"timezone": "Mars/Olympus"}, {"dia_h": 25.0}, {"valid_from_at": None},
                {"profile_id": "r00"}],
}


def _broken(table: str) -> pl.DataFrame:
    breaks = BREAKS[table]
    rows = _rows(table, len(breaks) + 2)  # two rows keep the contract
    for i, changes in enumerate(breaks, start=2):
        for column, value in changes.items():
            rows = rows.with_columns(
                pl.when(pl.int_range(pl.len()) == i).then(pl.lit(value, rows.schema[column]))
                .otherwise(pl.col(column)).alias(column))
    return rows


def _pandera_reasons(contract: type[pa.DataFrameModel], rows: pl.DataFrame) -> dict[int, str]:
    """Row index → "column: check; ..." from pandera's own validation (the oracle)."""
    try:
        contract.validate(rows, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return {}
    assert cases.get_column("index").null_count() == 0
    reasons = cases.group_by("index").agg(
        (pl.col("column") + ": " + pl.col("check")).unique().sort().str.join("; "))
    return {int(i): str(r) for i, r in reasons.rows()}


@pytest.mark.parametrize("table", sorted(BREAKS))
def test_check_rejects_what_pandera_rejects_with_the_same_reasons(table: str) -> None:
    rows = _broken(table)
    expected = _pandera_reasons(CONTRACTS[table], rows)
    assert set(range(2, rows.height)) <= set(expected)  # every break breaks something
    checked = check(table, rows, CTX)
    ids = rows.get_column(raw_table(table).id_column).to_list()
    assert checked.rejects.select("record_id", "reason").rows() == [
        (ids[i], "contract: " + expected[i]) for i in sorted(expected)]
    kept = [i for i in range(rows.height) if i not in expected]
    assert checked.valid.get_column(raw_table(table).id_column).to_list() == [ids[i] for i in kept]


@pytest.mark.parametrize("table", sorted(BREAKS))
def test_rows_that_keep_the_contract_are_all_valid(table: str) -> None:
    rows = _rows(table, 5)
    checked = check(table, rows, CTX)
    assert checked.valid.equals(rows) and checked.rejects.height == 0


def test_a_missing_column_is_a_shaping_bug_not_bad_data() -> None:
    with pytest.raises(ContractError, match=r"column_in_dataframe on sgv_mg_dl"):
        check("entries", _rows("entries", 2).drop("sgv_mg_dl"), CTX)


def test_a_column_of_the_wrong_dtype_is_a_shaping_bug_not_bad_data() -> None:
    rows = _rows("entries", 2).with_columns(pl.col("sgv_mg_dl").cast(pl.Int64))
    with pytest.raises(ContractError, match=r"dtype\('Int32'\) on sgv_mg_dl"):
        check("entries", rows, CTX)


# Every bound of every contract, written out by hand: the value on the bound is kept, the
# value just past it is rejected. (The tests above compare ``check`` with pandera running the
# same contract, so a changed bound would move both; these would not move.)
BOUNDS: list[tuple[str, str, object, object]] = [
    # table, column, kept, rejected
    ("entries", "sgv_mg_dl", 1, 0),
    ("entries", "sgv_mg_dl", 1000, 1001),
    ("entries", "noise", 0, -1),
    ("entries", "noise", 10, 11),
    ("entries", "entry_type", "x" * 32, "x" * 33),
    ("entries", "entry_type", "s", ""),
    ("treatments", "insulin_u", 0.0, -0.01),
    ("treatments", "insulin_u", 100.0, 100.01),
    ("treatments", "carbs_g", 1000.0, 1000.5),
    ("treatments", "duration_min", 20160.0, 20160.5),
    ("treatments", "rate_u_per_h", 50.0, 50.01),
    ("treatments", "absolute_u_per_h", 0.0, -0.01),
    ("treatments", "glucose", 1000.0, 1000.5),
    ("treatments", "event_type", "E" * 64, "E" * 65),
    ("devicestatus", "uploader_battery_pct", 100.0, 100.5),
    ("devicestatus", "pump_reservoir_u", 0.0, -0.5),
    ("devicestatus", "iob_u", -100.0, -100.5),
    ("devicestatus", "iob_u", 200.0, 200.5),
    ("devicestatus", "cob_g", 2000.0, 2000.5),
    ("profile", "dia_h", 24.0, 24.5),
    ("profile", "timezone", "UTC", "Mars/Olympus"),
]


@pytest.mark.parametrize(("table", "column", "kept", "rejected"), BOUNDS,
                         ids=[f"{t}.{c}={k!r}|{r!r}"[:60] for t, c, k, r in BOUNDS])
def test_each_bound_keeps_its_value_and_rejects_the_next(table: str, column: str, kept: object,
                                                         rejected: object) -> None:
    rows = _rows(table, 2).with_columns(
        pl.Series(column, [kept, rejected], dtype=raw_table(table).columns[column]))
    checked = check(table, rows, CTX)
    ids = rows.get_column(raw_table(table).id_column).to_list()
    assert checked.valid.get_column(raw_table(table).id_column).to_list() == [ids[0]]
    assert checked.rejects.get_column("record_id").to_list() == [ids[1]]
    assert column in checked.rejects.get_column("reason")[0]
