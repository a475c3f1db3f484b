"""Fixtures shared by the tests: Prefect's test settings, one Prefect harness, a hand-built snapshot."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from results_store.prefect_env import configure_prefect

# Prefect reads its settings once, at import, and test modules import it at collection time:
# this conftest is loaded before any of them, so it is the one place that configures Prefect.
configure_prefect(Path(tempfile.gettempdir()) / "results-store-flow-tests", quiet_console=True)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test of the session (start-up ~10 s on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield

SNAPSHOT_TIME = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def t0() -> datetime:
    """The engine time of the hand-built snapshot (and of its events)."""
    return SNAPSHOT_TIME


@pytest.fixture
def snapshot() -> dict[str, Any]:
    """A fresh usdt_market_neutral-shaped snapshot with one of everything, small enough to check by hand.

    Its wallet holds the dust token EIGEN (dust_tracking only) next to ordinary tokens; the
    second event carries a key outside the contract ("venue").
    """
    return {
        "position_monitor": {
            "wallet": {"USDT": 1000.0, "weETH": 95.0, "EIGEN": 4.0},
            "cex_accounts": {"binance": {"USDT": 500.0}},
            "perp_positions": {"binance": {"ETHUSDT-PERP": {"size": -2.5, "entry_price": 3000.0}}},
            "tracked_assets": ["USDT", "weETH"],
        },
        "exposure_monitor": {
            "total_exposure": 1e5,
            "net_delta": -0.05,
            "asset_exposures": {"ETH": {"delta": -0.05, "exposure_usd": -150.0}},
        },
        "risk_monitor": {
            "risk_metrics": {
                "ltv_risk": {"current_ltv": 0.89, "target_ltv": 0.9, "max_ltv": 0.91, "liquidation_threshold": 0.93},
                "liquidation_risk": {"at_risk": False, "health_factor": 1.045},
                "cex_margin_ratio": {"current_ratio": 0.35, "min_ratio": 0.05},
                "delta_risk": {"delta_risk": 0.005, "threshold": 0.02},
            },
            "risk_alerts": {},
        },
        "pnl_calculator": {
            "balance_based": {"pnl_cumulative": 12.5, "total_value": 1012.5},
            "attribution": {"funding_pnl": 10.0, "delta_pnl": 2.5},
            "reconciliation": {"passed": True, "difference": 0.0, "tolerance": 0.001},
            "funding": {"binance": {"funding_rate": 0.0001, "payment": 0.75, "cumulative": 10.0}},
        },
        "event_logger": [
            {"order": 1, "event_type": "GAS_FEE_PAID", "timestamp": SNAPSHOT_TIME, "details": {"amount": 2.0}},
            {"order": 2, "event_type": "FUNDING_PAYMENT", "timestamp": SNAPSHOT_TIME, "details": {},
             "venue": "binance"},
        ],
    }
