"""The eight result types and the component each one is built from."""

from __future__ import annotations

import enum

__all__ = ["ALWAYS_STORED", "ResultType"]


class ResultType(enum.StrEnum):
    """A result table the store can write. The value is the table's directory name."""

    BALANCE_SHEET = "balance_sheet"
    PNL_ATTRIBUTION = "pnl_attribution"
    RISK_METRICS = "risk_metrics"
    EXECUTION_LOG = "execution_log"
    DELTA_TRACKING = "delta_tracking"
    LEVERAGE_TRACKING = "leverage_tracking"
    FUNDING_TRACKING = "funding_tracking"
    DUST_TRACKING = "dust_tracking"


# Every mode stores these four; the other four are opt-in per mode.
ALWAYS_STORED: tuple[ResultType, ...] = (
    ResultType.BALANCE_SHEET,
    ResultType.PNL_ATTRIBUTION,
    ResultType.RISK_METRICS,
    ResultType.EXECUTION_LOG,
)
