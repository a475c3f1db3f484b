"""Flattening a batch of snapshots into one Arrow table per enabled result type."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pandas as pd
import pytest

from results_store.flatten import SnapshotItem, flatten_batch, perp_base_asset
from results_store.validate import validate_table
from schemas.modes import MODE_NAMES, load_mode
from schemas.result_types import ResultType
from schemas.tables import arrow_schema

USDT_MN = load_mode("usdt_market_neutral")  # all eight result types


def _rows(result: Any, rtype: str) -> list[dict[str, Any]]:
    """A table's rows without the run_id/timestamp/timestep prefix."""
    return [{k: v for k, v in row.items() if k not in ("run_id", "timestamp", "timestep")}
            for row in result.tables[ResultType(rtype)].to_pylist()]


def test_a_hand_built_snapshot_maps_to_exactly_these_rows(snapshot, t0):
    result = flatten_batch([SnapshotItem(5, t0, snapshot)], USDT_MN, "run-x")
    assert result.rejected == []
    assert set(result.tables) == set(ResultType)
    for rtype, table in result.tables.items():
        assert table.schema == arrow_schema(rtype)
        assert set(table.column("run_id").to_pylist()) == {"run-x"}
        assert set(table.column("timestep").to_pylist()) == {5}
        assert set(table.column("timestamp").to_pylist()) == {t0}

    assert _rows(result, "balance_sheet") == [
        {"venue": "wallet", "account_type": "wallet", "asset": "USDT", "instrument": "USDT", "amount": 1000.0},
        {"venue": "wallet", "account_type": "wallet", "asset": "weETH", "instrument": "weETH", "amount": 95.0},
        {"venue": "binance", "account_type": "cex", "asset": "USDT", "instrument": "USDT", "amount": 500.0},
        {"venue": "binance", "account_type": "perp", "asset": "ETH", "instrument": "ETHUSDT-PERP", "amount": -2.5},
    ]
    assert _rows(result, "pnl_attribution") == [
        {"component": "attribution", "metric": "funding_pnl", "value": 10.0},
        {"component": "attribution", "metric": "delta_pnl", "value": 2.5},
        {"component": "balance_based", "metric": "pnl_cumulative", "value": 12.5},
        {"component": "balance_based", "metric": "total_value", "value": 1012.5},
        {"component": "reconciliation", "metric": "difference", "value": 0.0},
        {"component": "reconciliation", "metric": "tolerance", "value": 0.001},
        {"component": "reconciliation", "metric": "passed", "value": 1.0},
    ]
    assert _rows(result, "risk_metrics") == [
        {"risk_group": "ltv_risk", "metric": "current_ltv", "value": 0.89},
        {"risk_group": "ltv_risk", "metric": "target_ltv", "value": 0.9},
        {"risk_group": "ltv_risk", "metric": "max_ltv", "value": 0.91},
        {"risk_group": "ltv_risk", "metric": "liquidation_threshold", "value": 0.93},
        {"risk_group": "liquidation_risk", "metric": "at_risk", "value": 0.0},
        {"risk_group": "liquidation_risk", "metric": "health_factor", "value": 1.045},
        {"risk_group": "cex_margin_ratio", "metric": "current_ratio", "value": 0.35},
        {"risk_group": "cex_margin_ratio", "metric": "min_ratio", "value": 0.05},
        {"risk_group": "delta_risk", "metric": "delta_risk", "value": 0.005},
        {"risk_group": "delta_risk", "metric": "threshold", "value": 0.02},
    ]
    assert _rows(result, "execution_log") == [
        {"event_order": 1, "event_type": "GAS_FEE_PAID", "event_timestamp": t0, "details": '{"amount":2.0}'},
        # A key outside the contract travels with the details.
        {"event_order": 2, "event_type": "FUNDING_PAYMENT", "event_timestamp": t0, "details": '{"venue":"binance"}'},
    ]
    assert _rows(result, "delta_tracking") == [
        {"asset": "ETH", "delta": -0.05, "exposure_usd": -150.0, "net_delta": -0.05, "total_exposure_usd": 1e5},
    ]
    assert _rows(result, "leverage_tracking") == [
        {"current_ltv": 0.89, "target_ltv": 0.9, "max_ltv": 0.91, "liquidation_threshold": 0.93,
         "health_factor": 1.045, "leverage": pytest.approx(1 / (1 - 0.89)), "at_risk": False},
    ]
    assert _rows(result, "funding_tracking") == [
        {"venue": "binance", "funding_rate": 0.0001, "payment": 0.75, "cumulative": 10.0},
    ]
    # Every configured dust token, held or not.
    assert _rows(result, "dust_tracking") == [
        {"token": "EIGEN", "amount": 4.0}, {"token": "ETHFI", "amount": 0.0}, {"token": "KING", "amount": 0.0},
    ]


def test_dust_tokens_are_excluded_from_the_balance_sheet_only_in_modes_that_track_dust(snapshot, t0):
    tracked = flatten_batch([SnapshotItem(0, t0, snapshot)], USDT_MN, "r")
    assert "EIGEN" not in tracked.tables[ResultType.BALANCE_SHEET].column("asset").to_pylist()
    untracked = flatten_batch([SnapshotItem(0, t0, snapshot)], load_mode("btc_basis"), "r")
    assert "EIGEN" in untracked.tables[ResultType.BALANCE_SHEET].column("asset").to_pylist()


@pytest.mark.parametrize("mode_name", MODE_NAMES)
def test_each_mode_gets_exactly_its_enabled_tables_with_their_schemas(snapshot, t0, mode_name):
    mode = load_mode(mode_name)
    result = flatten_batch([SnapshotItem(0, t0, snapshot)], mode, "r")
    assert set(result.tables) == set(mode.results_store.result_types)
    for rtype, table in result.tables.items():
        assert table.schema == arrow_schema(rtype)
        assert table.num_rows > 0


def test_disabled_result_types_produce_no_table(snapshot, t0):
    result = flatten_batch([SnapshotItem(0, t0, snapshot)], load_mode("pure_lending"), "r")
    assert set(result.tables) == {ResultType.BALANCE_SHEET, ResultType.PNL_ATTRIBUTION, ResultType.RISK_METRICS,
                                  ResultType.EXECUTION_LOG}


def test_an_empty_batch_gives_empty_tables_with_the_exact_schemas():
    result = flatten_batch([], USDT_MN, "r")
    assert result.rejected == []
    assert set(result.tables) == set(ResultType)
    for rtype, table in result.tables.items():
        assert table.num_rows == 0 and table.schema == arrow_schema(rtype)


def _batch(snapshot: dict[str, Any], t0: datetime, broken_at: dict[int, dict[str, Any]]) -> list[SnapshotItem]:
    return [SnapshotItem(i, t0 + timedelta(minutes=i), broken_at.get(i, snapshot)) for i in range(5)]


def test_a_broken_snapshot_mid_batch_is_rejected_alone_naming_timestep_and_path(snapshot, t0):
    one = flatten_batch([SnapshotItem(0, t0, snapshot)], USDT_MN, "r")
    broken = copy.deepcopy(snapshot)
    del broken["risk_monitor"]["risk_metrics"]["ltv_risk"]["current_ltv"]

    result = flatten_batch(_batch(snapshot, t0, {2: broken}), USDT_MN, "r")

    (rejected,) = result.rejected
    assert rejected.timestep == 2 and rejected.timestamp == t0 + timedelta(minutes=2)
    assert rejected.payload is broken
    assert rejected.error.error_code == "RST-101"
    assert "timestep 2" in str(rejected.error)
    assert "risk_monitor.risk_metrics.ltv_risk.current_ltv" in str(rejected.error)
    for rtype, table in result.tables.items():
        # The four good snapshots flatten fully, in order; the broken one leaves no row anywhere.
        assert table.schema == arrow_schema(rtype)
        assert table.num_rows == 4 * one.tables[rtype].num_rows
        assert sorted(set(table.column("timestep").to_pylist())) == [0, 1, 3, 4]
        assert table.column("timestep").to_pylist() == sorted(table.column("timestep").to_pylist())


@pytest.mark.parametrize(("breakage", "path"), [
    (lambda s: s["pnl_calculator"].pop("funding"), "pnl_calculator.funding"),
    (lambda s: s["pnl_calculator"].update(funding={}), "pnl_calculator.funding"),
    (lambda s: s.pop("exposure_monitor"), "exposure_monitor"),
    (lambda s: s["position_monitor"]["perp_positions"]["binance"]["ETHUSDT-PERP"].pop("entry_price"),
     "position_monitor.perp_positions.binance.ETHUSDT-PERP.entry_price"),
    (lambda s: s["position_monitor"]["wallet"].update(USDT="a lot"), "position_monitor.wallet.USDT"),
    (lambda s: s["position_monitor"]["wallet"].update(USDT=None), "position_monitor.wallet.USDT"),
    (lambda s: s["event_logger"][1].update(order=1.5), "event_logger.1.order"),
    (lambda s: s["risk_monitor"]["risk_metrics"]["delta_risk"].update(threshold="high"),
     "risk_monitor.risk_metrics.delta_risk.threshold"),
    (lambda s: s["pnl_calculator"]["attribution"].update(funding_pnl=[1.0]), "pnl_calculator.attribution.funding_pnl"),
])
def test_every_kind_of_breakage_rejects_only_its_snapshot_as_rst_101(snapshot, t0, breakage, path):
    one = flatten_batch([SnapshotItem(0, t0, snapshot)], USDT_MN, "r")
    broken = copy.deepcopy(snapshot)
    breakage(broken)
    result = flatten_batch(_batch(snapshot, t0, {1: broken, 3: broken}), USDT_MN, "r")
    assert [r.timestep for r in result.rejected] == [1, 3]
    for r in result.rejected:
        assert r.error.error_code == "RST-101"
        assert f"timestep {r.timestep}" in str(r.error)
        assert path in str(r.error), str(r.error)
        assert path in r.error.details["paths"]
        assert str(pickle.loads(pickle.dumps(r.error))) == str(r.error)  # Prefect ships errors across processes
    for rtype, table in result.tables.items():
        assert table.schema == arrow_schema(rtype)
        assert table.num_rows == 3 * one.tables[rtype].num_rows
        assert set(table.column("timestep").to_pylist()) == {0, 2, 4}


def test_funding_is_only_required_where_funding_is_tracked(snapshot, t0):
    del snapshot["pnl_calculator"]["funding"]
    assert flatten_batch([SnapshotItem(0, t0, snapshot)], load_mode("eth_leveraged"), "r").rejected == []


def test_a_batch_of_nothing_but_broken_snapshots_still_gives_every_table(snapshot, t0):
    del snapshot["event_logger"]
    result = flatten_batch([SnapshotItem(0, t0, snapshot), SnapshotItem(1, t0, snapshot)], USDT_MN, "r")
    assert [r.timestep for r in result.rejected] == [0, 1]
    assert {t: tb.num_rows for t, tb in result.tables.items()} == dict.fromkeys(ResultType, 0)


def test_extras_numeric_risk_figures_become_rows_and_a_given_leverage_is_used(snapshot, t0):
    ltv = snapshot["risk_monitor"]["risk_metrics"]["ltv_risk"]
    ltv["leverage"] = 9.5
    ltv["note"] = "descriptive, not a figure"
    snapshot["pnl_calculator"]["balance_based"]["fees_paid"] = 3.0
    result = flatten_batch([SnapshotItem(0, t0, snapshot)], USDT_MN, "r")
    risk = {(r["risk_group"], r["metric"]): r["value"] for r in _rows(result, "risk_metrics")}
    assert risk[("ltv_risk", "leverage")] == 9.5
    assert ("ltv_risk", "note") not in risk
    pnl = {(r["component"], r["metric"]): r["value"] for r in _rows(result, "pnl_attribution")}
    assert pnl[("balance_based", "fees_paid")] == 3.0
    assert _rows(result, "leverage_tracking")[0]["leverage"] == 9.5


def test_event_details_are_sorted_json_with_timestamps_in_utc_micros(snapshot, t0):
    snapshot["event_logger"] = [{
        "order": 7, "event_type": "TRADE", "timestamp": pd.Timestamp("2024-01-01 13:00:00.123456+01:00"),
        "details": {"venue": "okx", "amount": 1.5, "at": datetime(2024, 1, 1, tzinfo=UTC)}, "b_extra": True,
    }]
    (event,) = _rows(flatten_batch([SnapshotItem(0, t0, snapshot)], USDT_MN, "r"), "execution_log")
    assert event["event_timestamp"] == datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert event["details"] == '{"amount":1.5,"at":"2024-01-01T00:00:00+00:00","b_extra":true,"venue":"okx"}'
    assert list(orjson.loads(event["details"])) == sorted(orjson.loads(event["details"]))


@pytest.mark.parametrize("stamp", [
    datetime(2024, 1, 1, 12, 0, tzinfo=UTC),
    datetime(2024, 1, 1, 12, 0),  # naive means UTC
    datetime(2024, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
    pd.Timestamp("2024-01-01 12:00", tz="UTC"),
    pd.Timestamp("2024-01-01 07:00", tz="America/New_York"),
])
def test_snapshot_timestamps_of_any_kind_are_stored_as_utc(snapshot, stamp):
    result = flatten_batch([SnapshotItem(0, stamp, snapshot)], USDT_MN, "r")
    assert result.tables[ResultType.DUST_TRACKING].column("timestamp").to_pylist()[0] == datetime(
        2024, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("instrument", "base"), [
    ("ETHUSDT-PERP", "ETH"), ("BTCUSDT-PERP", "BTC"), ("ETHUSDC-PERP", "ETH"), ("BTCUSD-PERP", "BTC"),
    ("BTC-USD-SWAP", "BTC"), ("ETHUSDT", "ETH"), ("ethusdt-perp", "ETH"),
])
def test_perp_instruments_map_to_their_base_asset(instrument, base):
    assert perp_base_asset(instrument) == base


def test_one_simulated_day_of_every_mode_flattens_and_validates_with_zero_quarantined_rows():
    from results_store.simulator.reference import ReferenceEngine

    for mode_name in MODE_NAMES:
        mode = load_mode(mode_name)
        engine = ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1min", seed=11)
        items = [SnapshotItem(results.get("timestep", i), ts, results)
                 for i, (ts, results) in enumerate(engine.iter_snapshots())]
        assert len(items) == 1440, mode_name
        result = flatten_batch(items, mode, "day")
        assert result.rejected == [], (mode_name, [str(r.error) for r in result.rejected[:3]])
        assert set(result.tables) == set(mode.results_store.result_types)
        for rtype, table in result.tables.items():
            assert table.schema == arrow_schema(rtype)
            outcome = validate_table(rtype, table, mode)
            assert outcome.errors == [], (mode_name, rtype.value, [str(e) for e in outcome.errors][:3])
            assert outcome.quarantine.num_rows == 0
            assert outcome.valid.num_rows == table.num_rows
        assert result.tables[ResultType.RISK_METRICS].num_rows >= 1440 * 8
