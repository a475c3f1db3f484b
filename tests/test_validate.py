"""Validation splits a table into rows to write and quarantine rows that say what was wrong."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pytest

from results_store.flatten import SnapshotItem, flatten_batch
from results_store.validate import quarantine_rejected, validate_table
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.result_types import ResultType
from schemas.store_tables import QUARANTINE_SCHEMA

MODE = load_mode("usdt_market_neutral")


def _flattened(snapshot: dict[str, Any], t0: datetime, steps: int = 4) -> dict[ResultType, pa.Table]:
    items = [SnapshotItem(i, t0 + timedelta(minutes=i), copy.deepcopy(snapshot)) for i in range(steps)]
    result = flatten_batch(items, MODE, "run-v")
    assert result.rejected == []
    return result.tables


def test_valid_tables_pass_through_untouched(snapshot, t0):
    for rtype, table in _flattened(snapshot, t0).items():
        outcome = validate_table(rtype, table, MODE)
        assert outcome.valid.equals(table), rtype
        assert outcome.errors == []
        assert outcome.quarantine.num_rows == 0 and outcome.quarantine.schema == QUARANTINE_SCHEMA


def test_an_empty_table_is_valid(snapshot, t0):
    empty = _flattened(snapshot, t0)[ResultType.RISK_METRICS].slice(0, 0)
    outcome = validate_table(ResultType.RISK_METRICS, empty, MODE)
    assert outcome.valid.num_rows == 0 and outcome.errors == [] and outcome.quarantine.num_rows == 0


def _with_bad_balances(snapshot: dict[str, Any], t0: datetime) -> pa.Table:
    """Balance sheet of 4 timesteps; at timestep 2 the wallet holds DOGE, at 3 a CEX balance is negative."""
    table = _flattened(snapshot, t0)[ResultType.BALANCE_SHEET]
    rows = table.to_pylist()
    for row in rows:
        if row["timestep"] == 2 and row["asset"] == "weETH":
            row["asset"] = row["instrument"] = "DOGE"
        if row["timestep"] == 3 and row["account_type"] == "cex":
            row["amount"] = -7.0
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_bad_rows_go_to_quarantine_with_every_field_and_good_rows_are_kept(snapshot, t0):
    table = _with_bad_balances(snapshot, t0)
    before = datetime.now(UTC)
    outcome = validate_table("balance_sheet", table, MODE)

    assert outcome.valid.num_rows == table.num_rows - 2
    kept = outcome.valid.to_pylist()
    assert not any(r["asset"] == "DOGE" or (r["amount"] < 0 and r["account_type"] != "perp") for r in kept)
    assert [r for r in table.to_pylist() if r["timestep"] in (0, 1)] == [r for r in kept if r["timestep"] in (0, 1)]

    quarantine = outcome.quarantine
    assert quarantine.schema == QUARANTINE_SCHEMA
    rows = quarantine.to_pylist()
    assert [(q["timestep"], q["column"], q["rule"]) for q in rows] == [
        (2, "asset", "configured_values"), (3, "amount", "non_negative_balance")]
    doge, negative = rows
    assert doge["run_id"] == "run-v" and doge["result_type"] == "balance_sheet" and doge["error_code"] == "RST-102"
    assert doge["timestamp"] == t0 + timedelta(minutes=2)
    assert before <= doge["quarantined_at"] <= datetime.now(UTC)
    assert "balance_sheet.asset" in doge["message"] and "'configured_values'" in doge["message"]
    assert "timestep 2" in doge["message"] and "'DOGE'" in doge["message"]
    payload = orjson.loads(doge["payload"])
    assert payload["asset"] == "DOGE" and payload["timestep"] == 2 and payload["venue"] == "wallet"
    assert payload["timestamp"].startswith("2024-01-01T12:02:00")
    assert orjson.loads(negative["payload"])["amount"] == -7.0
    assert "balance_sheet.amount: rule 'non_negative_balance'" in negative["message"]


def test_one_error_per_column_and_rule_naming_table_column_rule_and_timesteps(snapshot, t0):
    outcome = validate_table("balance_sheet", _with_bad_balances(snapshot, t0), MODE)
    assert sorted(str(e) for e in outcome.errors) == [
        "RST-102 result rule violated: balance_sheet.amount: rule 'non_negative_balance' (balance negative on an "
        "account type that cannot be negative) failed at timestep(s) 3",
        "RST-102 result rule violated: balance_sheet.asset: rule 'configured_values' (asset not in the mode's "
        "configured list ['USDT', 'ETH', 'weETH', 'aWeETH', 'variableDebtWETH']) failed at timestep(s) 2",
    ]
    by_rule = {e.details["rule"]: e.details for e in outcome.errors}
    assert by_rule["configured_values"] == {"table": "balance_sheet", "column": "asset", "rule": "configured_values",
                                            "timesteps": [2], "rows": 1}


def test_a_row_breaking_two_rules_is_quarantined_once_per_rule_and_dropped_once(snapshot, t0):
    table = _flattened(snapshot, t0, steps=1)[ResultType.DUST_TRACKING]
    rows = table.to_pylist()
    rows[0].update(token="PEPE", amount=-1.0)
    outcome = validate_table("dust_tracking", pa.Table.from_pylist(rows, schema=table.schema), MODE)
    assert sorted(outcome.quarantine.column("rule").to_pylist()) == ["configured_values", "greater_than_or_equal_to"]
    assert len(set(outcome.quarantine.column("payload").to_pylist())) == 1
    assert outcome.valid.num_rows == len(rows) - 1


def test_a_row_level_rule_quarantines_the_whole_timestep_it_judges(snapshot, t0):
    table = _flattened(snapshot, t0)[ResultType.RISK_METRICS]
    rows = table.to_pylist()
    for row in rows:
        if row["timestep"] == 1 and row["metric"] == "current_ltv":
            row["value"] = 0.95  # above the 0.93 liquidation threshold, yet at_risk is 0
    outcome = validate_table("risk_metrics", pa.Table.from_pylist(rows, schema=table.schema), MODE)
    (error,) = outcome.errors
    assert str(error).endswith("risk_metrics.*: rule 'liquidation_flag_matches_ltv' (liquidation flag contradicts "
                               "the LTV) failed at timestep(s) 1")
    assert set(outcome.quarantine.column("timestep").to_pylist()) == {1}
    assert set(outcome.quarantine.column("column").to_pylist()) == {"*"}
    assert 1 not in outcome.valid.column("timestep").to_pylist()
    assert outcome.valid.num_rows == 3 * (len(rows) // 4)


def test_strict_raises_the_first_violation_with_all_the_counts(snapshot, t0):
    with pytest.raises(ComponentError) as failed:
        validate_table("balance_sheet", _with_bad_balances(snapshot, t0), MODE, strict=True)
    error = failed.value
    assert error.error_code == "RST-102"
    assert str(error).startswith("RST-102 result rule violated: balance_sheet.amount: rule 'non_negative_balance'")
    assert error.details["violations"] == {"amount:non_negative_balance": 1, "asset:configured_values": 1}


def test_strict_lets_a_valid_table_through(snapshot, t0):
    table = _flattened(snapshot, t0)[ResultType.PNL_ATTRIBUTION]
    assert validate_table("pnl_attribution", table, MODE, strict=True).valid.equals(table)


def test_a_table_without_its_schema_is_refused_whole(snapshot, t0):
    table = _flattened(snapshot, t0)[ResultType.DUST_TRACKING]
    with pytest.raises(ComponentError, match=r"dust_tracking: the table does not have its result type's schema"):
        validate_table("dust_tracking", table.drop_columns(["amount"]), MODE)


def test_rejected_snapshots_become_one_quarantine_row_each(snapshot, t0):
    broken = copy.deepcopy(snapshot)
    del broken["exposure_monitor"]["net_delta"]
    items = [SnapshotItem(0, t0, snapshot), SnapshotItem(1, t0 + timedelta(minutes=1), broken)]
    flat = flatten_batch(items, MODE, "run-q")
    before = datetime.now(UTC)
    quarantine = quarantine_rejected(flat.rejected, "run-q")

    assert quarantine.schema == QUARANTINE_SCHEMA
    (row,) = quarantine.to_pylist()
    assert row["run_id"] == "run-q" and row["timestep"] == 1
    assert row["timestamp"] == t0 + timedelta(minutes=1)
    assert row["result_type"] == "snapshot" and row["rule"] == "snapshot_contract"
    assert row["column"] == "exposure_monitor.net_delta"
    assert row["error_code"] == "RST-101"
    assert "timestep 1" in row["message"] and "exposure_monitor.net_delta" in row["message"]
    payload = orjson.loads(row["payload"])
    assert set(payload) == set(broken) and "net_delta" not in payload["exposure_monitor"]
    assert payload["event_logger"][0]["timestamp"].startswith("2024-01-01T12:00:00")
    assert before <= row["quarantined_at"] <= datetime.now(UTC)


def test_no_rejections_no_quarantine_rows():
    assert quarantine_rejected([], "r").equals(QUARANTINE_SCHEMA.empty_table())


def test_string_columns_reach_pandera_as_the_pandas_str_dtype(snapshot, t0):
    # pandas 3 converts Arrow strings to its 'str' dtype, which the models' Series[str] accept as they are.
    table = _flattened(snapshot, t0)[ResultType.BALANCE_SHEET]
    dtypes = table.to_pandas().dtypes
    assert {str(dtypes[c]) for c in ("run_id", "venue", "account_type", "asset", "instrument")} == {"str"}
    assert str(dtypes["timestamp"]) == "datetime64[us, UTC]"
