"""The snapshot contract: a missing or mistyped part is named by timestep and key path; extra keys survive."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.snapshot import COMPONENT_KEYS, TimestepSnapshot, explain_snapshot


def test_the_contract_has_the_five_components():
    assert set(COMPONENT_KEYS) == {"position_monitor", "exposure_monitor", "risk_monitor", "pnl_calculator",
                                   "event_logger"}


def test_a_valid_snapshot_has_nothing_to_explain(snapshot, t0):
    assert explain_snapshot(snapshot, timestep=0, timestamp=t0) is None


def _drop(snapshot: dict[str, Any], path: str) -> None:
    *parents, leaf = path.split(".")
    node: Any = snapshot
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[leaf]


@pytest.mark.parametrize("path", [
    "risk_monitor.risk_metrics.ltv_risk.current_ltv",
    "risk_monitor.risk_metrics.liquidation_risk.at_risk",
    "position_monitor.perp_positions.binance.ETHUSDT-PERP.entry_price",
    "exposure_monitor.asset_exposures.ETH.exposure_usd",
    "pnl_calculator.reconciliation.passed",
    "event_logger.0.order",
    "position_monitor.wallet",
    "event_logger",
])
def test_a_missing_required_part_is_rst_101_naming_timestep_and_key_path(snapshot, path):
    _drop(snapshot, path)
    error = explain_snapshot(snapshot, timestep=17, timestamp="2024-01-01T17:00:00+00:00")
    assert error is not None
    assert error.error_code == "RST-101"
    assert "timestep 17" in str(error)
    assert f"{path}: Field required" in str(error)
    assert error.details["timestep"] == 17
    assert path in error.details["paths"]


def test_a_mistyped_value_is_named_too(snapshot):
    snapshot["position_monitor"]["wallet"]["USDT"] = "a lot"
    error = explain_snapshot(snapshot, timestep=3, timestamp="t")
    assert error is not None and "timestep 3" in str(error)
    assert "position_monitor.wallet.USDT" in str(error)


def test_unknown_extra_keys_are_kept_at_every_level(snapshot):
    snapshot["strategy_manager"] = {"decision": "hold"}
    snapshot["position_monitor"]["wallet_note"] = "cold wallet"
    snapshot["risk_monitor"]["risk_metrics"]["ltv_risk"]["leverage"] = 9.1
    snapshot["event_logger"][0]["gas_price_gwei"] = 31
    assert explain_snapshot(snapshot, timestep=0, timestamp="t") is None
    dumped = TimestepSnapshot.model_validate(snapshot).model_dump()
    assert dumped["strategy_manager"] == {"decision": "hold"}
    assert dumped["position_monitor"]["wallet_note"] == "cold wallet"
    assert dumped["risk_monitor"]["risk_metrics"]["ltv_risk"]["leverage"] == 9.1
    assert dumped["event_logger"][0]["gas_price_gwei"] == 31


def test_funding_may_be_absent_from_the_contract_itself(snapshot):
    # Only modes with funding_tracking need it; flatten enforces that (see test_flatten).
    del snapshot["pnl_calculator"]["funding"]
    assert explain_snapshot(snapshot, timestep=0, timestamp="t") is None
