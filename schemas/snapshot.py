"""The contract of one timestep's component data, as an engine hands it to the store.

The store never validates snapshots one by one on the engine's path: ``results_store.flatten`` reads the
raw dicts in bulk and only when a batch fails does it call :func:`explain_snapshot` to name the
timestep and the path of the broken key. Unknown extra keys are allowed everywhere and survive in
``raw_snapshots``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import ComponentError

__all__ = [
    "COMPONENT_KEYS",
    "EventRecord",
    "ExposureMonitorData",
    "PnlCalculatorData",
    "PositionMonitorData",
    "RiskMonitorData",
    "TimestepSnapshot",
    "explain_snapshot",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PerpPosition(_Open):
    size: float = Field(description="signed contracts in base-asset units; negative is short")
    entry_price: float


class PositionMonitorData(_Open):
    wallet: dict[str, float] = Field(description="on-chain token balances by token")
    cex_accounts: dict[str, dict[str, float]] = Field(description="venue -> asset -> balance")
    perp_positions: dict[str, dict[str, PerpPosition]] = Field(description="venue -> instrument -> position")
    tracked_assets: list[str]


class AssetExposure(_Open):
    delta: float = Field(description="net position in asset units")
    exposure_usd: float


class ExposureMonitorData(_Open):
    total_exposure: float
    net_delta: float
    asset_exposures: dict[str, AssetExposure]


class LtvRisk(_Open):
    current_ltv: float
    target_ltv: float
    max_ltv: float
    liquidation_threshold: float


class LiquidationRisk(_Open):
    at_risk: bool
    health_factor: float


class CexMarginRatio(_Open):
    current_ratio: float
    min_ratio: float


class DeltaRisk(_Open):
    delta_risk: float
    threshold: float


class RiskMetrics(_Open):
    ltv_risk: LtvRisk
    liquidation_risk: LiquidationRisk
    cex_margin_ratio: CexMarginRatio
    delta_risk: DeltaRisk


class RiskMonitorData(_Open):
    risk_metrics: RiskMetrics
    risk_alerts: dict[str, Any]


class VenueFunding(_Open):
    funding_rate: float = Field(description="rate of the last 8-hour funding interval")
    payment: float = Field(description="funding received (+) or paid (-) at this timestep")
    cumulative: float = Field(description="funding received since the start of the run")


class BalanceBased(_Open):
    pnl_cumulative: float
    total_value: float


class Reconciliation(_Open):
    passed: bool
    difference: float
    tolerance: float


class PnlCalculatorData(_Open):
    balance_based: BalanceBased
    attribution: dict[str, float] = Field(description="cumulative PnL by attribution type")
    reconciliation: Reconciliation
    funding: dict[str, VenueFunding] = Field(
        default_factory=dict, description="per-venue funding; required when funding_tracking is on"
    )


class EventRecord(_Open):
    order: int
    event_type: str
    timestamp: datetime
    details: dict[str, Any] = Field(default_factory=dict)


class TimestepSnapshot(_Open):
    """One timestep's data from the five components the store aggregates."""

    position_monitor: PositionMonitorData
    exposure_monitor: ExposureMonitorData
    risk_monitor: RiskMonitorData
    pnl_calculator: PnlCalculatorData
    event_logger: list[EventRecord]


COMPONENT_KEYS: tuple[str, ...] = tuple(TimestepSnapshot.model_fields)


def explain_snapshot(results: Any, *, timestep: int, timestamp: Any) -> ComponentError | None:
    """Validate one snapshot against the contract; describe the first problems, or return None."""
    try:
        TimestepSnapshot.model_validate(results)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:5]:
            path = ".".join(str(p) for p in err["loc"]) or "(snapshot)"
            parts.append(f"{path}: {err['msg']}")
        more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        return ComponentError(
            "RST-101",
            f"timestep {timestep} ({timestamp}): " + "; ".join(parts) + more,
            details={"timestep": timestep, "timestamp": str(timestamp),
                     "paths": [".".join(str(p) for p in e["loc"]) for e in exc.errors()]},
        )
    return None
