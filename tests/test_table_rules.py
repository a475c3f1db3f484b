"""Every rule of every result table rejects a crafted bad frame, naming table, column, rule and timestep.

Each frame holds two timesteps: 41 made of the table's good rows, 42 the same rows with one value
broken. The rule must reject timestep 42 only, and say so; timestep 41 must come through intact.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from results_store.validate import validate_table
from schemas.modes import load_mode
from schemas.result_types import ResultType
from schemas.tables import ROW_RULE_COLUMNS, TABLE_MODELS, arrow_schema, float_columns, mode_schema

MODE = load_mode("usdt_market_neutral")  # stores all eight result types
T0 = pd.Timestamp("2024-01-01", tz="UTC")
GOOD_STEP, BAD_STEP = 41, 42
NAN, INF = float("nan"), float("inf")

# One valid timestep's rows per table (without run_id/timestamp/timestep, which _frame adds).
GOOD: dict[str, list[dict[str, Any]]] = {
    "balance_sheet": [
        {"venue": "wallet", "account_type": "wallet", "asset": "weETH", "instrument": "weETH", "amount": 10.0},
        {"venue": "binance", "account_type": "cex", "asset": "USDT", "instrument": "USDT", "amount": 5.0},
        # A short perp is a negative amount, and allowed.
        {"venue": "binance", "account_type": "perp", "asset": "ETH", "instrument": "ETHUSDT-PERP", "amount": -3.0},
    ],
    "pnl_attribution": [
        {"component": "attribution", "metric": "funding_pnl", "value": 1.5},
        {"component": "balance_based", "metric": "pnl_cumulative", "value": 1.5},
        {"component": "reconciliation", "metric": "passed", "value": 1.0},
    ],
    "risk_metrics": [
        {"risk_group": "ltv_risk", "metric": "current_ltv", "value": 0.89},
        {"risk_group": "ltv_risk", "metric": "max_ltv", "value": 0.91},
        {"risk_group": "ltv_risk", "metric": "liquidation_threshold", "value": 0.93},
        {"risk_group": "liquidation_risk", "metric": "at_risk", "value": 0.0},
        {"risk_group": "delta_risk", "metric": "delta_risk", "value": 0.01},
    ],
    "execution_log": [
        {"event_order": 1, "event_type": "GAS_FEE_PAID", "event_timestamp": T0, "details": "{}"},
        {"event_order": 2, "event_type": "STAKE_DEPOSIT", "event_timestamp": T0, "details": "{}"},
    ],
    "delta_tracking": [
        {"asset": "ETH", "delta": 0.1, "exposure_usd": 300.0, "net_delta": 0.1, "total_exposure_usd": 1e6},
    ],
    "leverage_tracking": [
        {"current_ltv": 0.89, "target_ltv": 0.89, "max_ltv": 0.91, "liquidation_threshold": 0.93,
         "health_factor": 1.04, "leverage": 9.1, "at_risk": False},
    ],
    "funding_tracking": [{"venue": "okx", "funding_rate": 0.0001, "payment": -0.5, "cumulative": 12.0}],
    "dust_tracking": [{"token": "EIGEN", "amount": 3.0}],
}


def _frame(table: str, bad_rows: list[dict[str, Any]]) -> pa.Table:
    """Timestep 41 of good rows, then timestep 42 of ``bad_rows`` (a row may override any column)."""
    base = {"run_id": "run-1", "timestamp": T0}
    rows = [{**base, "timestep": GOOD_STEP, **r} for r in GOOD[table]]
    rows += [{**base, "timestep": BAD_STEP, **r} for r in bad_rows]
    return pa.Table.from_pylist(rows, schema=arrow_schema(table))


def _bad(table: str, index: int, **change: Any) -> list[dict[str, Any]]:
    """The table's good rows with row ``index`` changed."""
    rows = [dict(r) for r in GOOD[table]]
    rows[index].update(change)
    return rows


def test_every_table_has_a_good_example_that_passes_whole():
    assert {t.value for t in TABLE_MODELS} == set(GOOD)
    for table in GOOD:
        frame = _frame(table, GOOD[table])
        outcome = validate_table(table, frame, MODE)
        assert outcome.errors == [], (table, [str(e) for e in outcome.errors])
        assert outcome.valid.equals(frame)
        assert outcome.quarantine.num_rows == 0


# (table, bad rows, column the message names, rule, offending timestep)
Case = tuple[str, list[dict[str, Any]], str, str, int]

CASES: list[Case] = [
    # Every table: run_id non-empty, timestep non-negative.
    *[(t, _bad(t, 0, run_id=""), "run_id", "str_length", BAD_STEP) for t in GOOD],
    *[(t, _bad(t, 0, timestep=-1), "timestep", "greater_than_or_equal_to", -1) for t in GOOD],
    # Every float column of every table: finite (NaN, +inf and -inf are all refused).
    *[(t, _bad(t, 0, **{c: bad}), c, "finite", BAD_STEP)
      for t in GOOD for c in float_columns(t) for bad in (NAN, INF, -INF)],
    # balance_sheet
    ("balance_sheet", _bad("balance_sheet", 0, asset="DOGE", instrument="DOGE"), "asset", "configured_values",
     BAD_STEP),
    ("balance_sheet", _bad("balance_sheet", 1, venue="ftx"), "venue", "configured_values", BAD_STEP),
    ("balance_sheet", _bad("balance_sheet", 1, account_type="margin"), "account_type", "isin", BAD_STEP),
    ("balance_sheet", _bad("balance_sheet", 0, amount=-1.0), "amount", "non_negative_balance", BAD_STEP),
    ("balance_sheet", _bad("balance_sheet", 1, amount=-0.01), "amount", "non_negative_balance", BAD_STEP),
    # pnl_attribution
    ("pnl_attribution", _bad("pnl_attribution", 0, metric="alpha_magic"), "metric", "configured_attribution_type",
     BAD_STEP),
    ("pnl_attribution", _bad("pnl_attribution", 1, component="vibes"), "component", "isin", BAD_STEP),
    # risk_metrics
    ("risk_metrics", _bad("risk_metrics", 1, value=1.2), "value", "ltv_in_unit_interval", BAD_STEP),
    ("risk_metrics", _bad("risk_metrics", 1, value=-0.1), "value", "ltv_in_unit_interval", BAD_STEP),
    ("risk_metrics", _bad("risk_metrics", 4, risk_group="vibes"), "risk_group", "isin", BAD_STEP),
    # at or above the liquidation threshold but not flagged ...
    ("risk_metrics", _bad("risk_metrics", 0, value=0.95), "*", "liquidation_flag_matches_ltv", BAD_STEP),
    # ... and flagged with no debt at all
    ("risk_metrics", [*_bad("risk_metrics", 0, value=0.0)[:3], {**GOOD["risk_metrics"][3], "value": 1.0},
                      GOOD["risk_metrics"][4]], "*", "liquidation_flag_matches_ltv", BAD_STEP),
    # execution_log
    ("execution_log", _bad("execution_log", 1, event_order=1), "event_order", "event_order_increasing", BAD_STEP),
    ("execution_log", _bad("execution_log", 0, event_order=3), "event_order", "event_order_increasing", BAD_STEP),
    ("execution_log", _bad("execution_log", 0, event_type=""), "event_type", "str_length", BAD_STEP),
    # an event from 1970 in a 2024 run: an unset clock, not an event
    ("execution_log", _bad("execution_log", 1, event_timestamp=pd.Timestamp("1970-01-01", tz="UTC")),
     "event_timestamp", "event_near_its_timestep", BAD_STEP),
    # delta_tracking, funding_tracking, dust_tracking: the mode's lists
    ("delta_tracking", _bad("delta_tracking", 0, asset="SOL"), "asset", "configured_values", BAD_STEP),
    ("funding_tracking", _bad("funding_tracking", 0, venue="deribit"), "venue", "configured_values", BAD_STEP),
    ("dust_tracking", _bad("dust_tracking", 0, token="PEPE"), "token", "configured_values", BAD_STEP),
    ("dust_tracking", _bad("dust_tracking", 0, amount=-2.0), "amount", "greater_than_or_equal_to", BAD_STEP),
    # leverage_tracking: every LTV column in [0, 1], health factor > 0, leverage >= 1, flag vs LTV
    *[("leverage_tracking", _bad("leverage_tracking", 0, **{c: -0.1}), c, "greater_than_or_equal_to", BAD_STEP)
      for c in ("current_ltv", "target_ltv", "max_ltv", "liquidation_threshold")],
    *[("leverage_tracking", _bad("leverage_tracking", 0, **{c: 1.3}), c, "less_than_or_equal_to", BAD_STEP)
      for c in ("current_ltv", "target_ltv", "max_ltv", "liquidation_threshold")],
    ("leverage_tracking", _bad("leverage_tracking", 0, health_factor=0.0), "health_factor", "greater_than", BAD_STEP),
    ("leverage_tracking", _bad("leverage_tracking", 0, leverage=0.5), "leverage", "greater_than_or_equal_to",
     BAD_STEP),
    ("leverage_tracking", _bad("leverage_tracking", 0, current_ltv=0.95), "at_risk", "liquidation_flag_matches_ltv",
     BAD_STEP),
    ("leverage_tracking", _bad("leverage_tracking", 0, current_ltv=0.0, at_risk=True), "at_risk",
     "liquidation_flag_matches_ltv", BAD_STEP),
]


def _case_id(case: Case) -> str:
    table, rows, column, rule, _ = case
    changed = [f"{k}={v!r}" for bad, good in zip(rows, GOOD[table], strict=False) for k, v in bad.items()
               if good.get(k) != v and not (v != v and good.get(k) != good.get(k))]
    return f"{table}.{column}.{rule}[{','.join(changed)}]"


@pytest.mark.parametrize(("table", "rows", "column", "rule", "step"), CASES, ids=[_case_id(c) for c in CASES])
def test_each_rule_rejects_its_bad_frame_and_names_table_column_rule_and_timestep(table, rows, column, rule, step):
    frame = _frame(table, rows)
    outcome = validate_table(table, frame, MODE)

    messages = [str(e) for e in outcome.errors]
    hits = [m for m in messages if f"{table}.{column}: rule '{rule}'" in m]
    assert len(hits) == 1, messages
    assert hits[0].endswith(f"failed at timestep(s) {step}"), hits[0]
    assert all(e.error_code == "RST-102" for e in outcome.errors)

    quarantined = outcome.quarantine.to_pylist()
    assert any(q["rule"] == rule and q["column"] == column and q["timestep"] == step and q["result_type"] == table
               for q in quarantined), quarantined
    # The good timestep is kept whole; nothing of the bad one that broke the rule is.
    kept = outcome.valid.column("timestep").to_pylist()
    assert kept.count(GOOD_STEP) == len(GOOD[table])
    assert outcome.valid.num_rows + len({q["payload"] for q in quarantined}) == frame.num_rows


def _rule_column(table: str, rule: str) -> str:
    column = ROW_RULE_COLUMNS.get(rule, "*")
    return column if column in arrow_schema(table).names else "*"


def test_every_rule_of_every_table_has_a_case_above():
    declared: set[tuple[str, str, str]] = set()
    for rtype in ResultType:
        schema = mode_schema(rtype, MODE)
        declared |= {(rtype.value, _rule_column(rtype.value, str(c.name)), str(c.name)) for c in schema.checks}
        declared |= {(rtype.value, name, str(c.name)) for name, col in schema.columns.items() for c in col.checks}
    covered = {(table, column, rule) for table, _, column, rule, _ in CASES}
    assert declared - covered == set()


def test_the_configured_lists_are_the_modes_own():
    # BTC is a balance-sheet asset of btc_basis but not of usdt_market_neutral.
    row = {"run_id": "r", "timestamp": T0, "timestep": 0, "venue": "binance", "account_type": "cex",
           "asset": "BTC", "instrument": "BTC", "amount": 1.0}
    frame = pa.Table.from_pylist([row], schema=arrow_schema("balance_sheet"))
    assert validate_table("balance_sheet", frame, load_mode("btc_basis")).errors == []
    (error,) = validate_table("balance_sheet", frame, MODE).errors
    assert "balance_sheet.asset: rule 'configured_values'" in str(error)


def test_event_order_restarts_in_each_timestep_and_the_liquidation_flag_may_be_raised_when_due():
    # Both timesteps number their events 1, 2: no violation across the timestep boundary.
    assert validate_table("execution_log", _frame("execution_log", GOOD["execution_log"]), MODE).errors == []
    flagged = _bad("leverage_tracking", 0, current_ltv=0.95, at_risk=True)
    assert validate_table("leverage_tracking", _frame("leverage_tracking", flagged), MODE).errors == []
    risk = _bad("risk_metrics", 0, value=0.95)
    risk[3] = {**risk[3], "value": 1.0}
    assert validate_table("risk_metrics", _frame("risk_metrics", risk), MODE).errors == []


def test_a_rule_broken_in_many_timesteps_lists_ten_then_counts_the_rest():
    rows = [{"run_id": "r", "timestamp": T0, "timestep": s, "token": "PEPE", "amount": 1.0} for s in range(25)]
    outcome = validate_table("dust_tracking", pa.Table.from_pylist(rows, schema=arrow_schema("dust_tracking")), MODE)
    (error,) = outcome.errors
    assert str(error).endswith("failed at timestep(s) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 +15 more")
    assert error.details["rows"] == 25
    assert outcome.valid.num_rows == 0
    assert pc.all(pc.equal(outcome.quarantine.column("rule"), "configured_values")).as_py()
