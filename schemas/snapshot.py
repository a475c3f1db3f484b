"""The contract of one timestep's component data, as an engine hands it to the store.

The store never validates snapshots one by one on the engine's path: ``results_store.flatten`` reads the
raw dicts in bulk and only when a batch fails does it call :func:`explain_snapshot` to name the
timestep and the path of the broken key. Unknown extra keys are allowed everywhere and survive in
``raw_snapshots``.

The contract also bounds what places a snapshot in a run, because the tables must hold it: a
timestep is an integer in ``0..TIMESTEP_MAX`` (an int64), a timestamp (the snapshot's and each
event's) lies within pandas' Timestamp range, ``TIMESTAMP_MIN_US..TIMESTAMP_MAX_US`` in whole
microseconds (a µs UTC column holds far more, but every reader of the tables goes through pandas).
"""

from __future__ import annotations

import numbers
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from schemas.errors import ComponentError

__all__ = [
    "COMPONENT_KEYS",
    "NO_TIME_US",
    "TIMESTAMP_MAX_US",
    "TIMESTAMP_MIN_US",
    "TIMESTEP_MAX",
    "EventRecord",
    "ExposureMonitorData",
    "PnlCalculatorData",
    "PositionMonitorData",
    "RiskMonitorData",
    "TimestepSnapshot",
    "explain_placement",
    "explain_snapshot",
    "printable",
    "timestamp_problem",
    "timestep_problem",
    "to_micros",
]

TIMESTEP_MAX = 2**63 - 1
# pandas' first and last nanosecond, rounded inwards to whole microseconds.
TIMESTAMP_MIN_US = -(-pd.Timestamp.min.value // 1000)
TIMESTAMP_MAX_US = pd.Timestamp.max.value // 1000
# What the store records as the µs of a timestamp it cannot read (pandas reads it back as NaT).
NO_TIME_US = -(2**63)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = range(-(2**63), 2**63)


def to_micros(value: Any) -> int:
    """Microseconds since the epoch (UTC), an int64, of a datetime / pd.Timestamp (naive = UTC), ISO
    string or int µs; TypeError or ValueError for anything else (NaT, unparseable text, an int
    beyond int64). Whether the tables hold that time is :func:`timestamp_problem`'s question."""
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is None:
            value = value.tz_localize("UTC")
        try:
            return int(value.value // 1000)
        except OverflowError:
            # .value counts nanoseconds, which a Timestamp of a coarser unit (pandas >= 2) can
            # lie beyond; its microseconds still fit an int64.
            return int(value.as_unit("us").asm8.view("i8"))
    if isinstance(value, datetime):
        if value is pd.NaT:  # a datetime subclass that is no time at all
            raise ValueError("NaT is not a time")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta: timedelta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in _INT64:
            raise ValueError(f"{value} µs is beyond int64")
        return value
    if isinstance(value, str):
        try:
            return to_micros(pd.Timestamp(value))
        except OverflowError as exc:  # pandas raises it for some far-off texts
            raise ValueError(str(exc)) from exc
    raise TypeError(f"not a timestamp: {printable(value)}")


def printable(value: Any) -> str:
    """How a message shows ``value``: ``str`` for times and text, ``repr`` otherwise; never raises,
    even for a Timestamp pandas cannot print (outside years 1..9999)."""
    try:
        return str(value) if isinstance(value, datetime | str) else repr(value)
    except (NotImplementedError, ValueError, OverflowError):
        return f"<{type(value).__name__}>"


def timestep_problem(value: Any) -> str | None:
    """Why no table can hold ``value`` as a timestep, or None if one can (any integer type)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"{printable(value)} ({type(value).__name__}) is not an integer"
    if not 0 <= int(value) <= TIMESTEP_MAX:
        return f"{value} is outside 0..{TIMESTEP_MAX} (an int64 from 0)"
    return None


def _range_text() -> str:
    first = pd.Timestamp(TIMESTAMP_MIN_US, unit="us", tz="UTC")
    last = pd.Timestamp(TIMESTAMP_MAX_US, unit="us", tz="UTC")
    return f"outside {first.isoformat()}..{last.isoformat()}, the range pandas (and so the tables) hold"


def timestamp_problem(value: Any) -> str | None:
    """Why no table can hold ``value`` as a timestamp, or None if one can."""
    try:
        micros = to_micros(value)
    except (TypeError, ValueError) as exc:
        return f"{printable(value)} is not a time ({exc})"
    if not TIMESTAMP_MIN_US <= micros <= TIMESTAMP_MAX_US:
        return f"{printable(value)} is {_range_text()}"
    return None


def _held_by_the_tables(value: Any) -> Any:
    """An event time beyond pandas' range is named by the contract (what is not a time at all is
    left to the datetime field's own message)."""
    try:
        micros = to_micros(value)
    except (TypeError, ValueError):
        return value
    if not TIMESTAMP_MIN_US <= micros <= TIMESTAMP_MAX_US:
        raise ValueError(f"{printable(value)} is {_range_text()}")
    return value


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PerpPosition(_Open):
    size: float = Field(description="signed contracts in base-asset units; negative is short")
    entry_price: float


def _no_bool(value: Any) -> Any:
    # Pydantic's lax float takes True as 1.0: a balance that is a JSON boolean is an engine bug.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean, not a number (rule balance_is_a_number)")
    return value


Balance = Annotated[float, BeforeValidator(_no_bool)]


class PositionMonitorData(_Open):
    wallet: dict[str, Balance] = Field(description="on-chain token balances by token (a number, never a boolean)")
    cex_accounts: dict[str, dict[str, Balance]] = Field(description="venue -> asset -> balance")
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
    timestamp: Annotated[datetime, BeforeValidator(_held_by_the_tables)]
    details: dict[str, Any] = Field(default_factory=dict)


class TimestepSnapshot(_Open):
    """One timestep's data from the five components the store aggregates."""

    position_monitor: PositionMonitorData
    exposure_monitor: ExposureMonitorData
    risk_monitor: RiskMonitorData
    pnl_calculator: PnlCalculatorData
    event_logger: list[EventRecord]


COMPONENT_KEYS: tuple[str, ...] = tuple(TimestepSnapshot.model_fields)


def explain_snapshot(results: Any, *, timestep: Any, timestamp: Any) -> ComponentError | None:
    """Validate one snapshot against the contract; describe the first problems, or return None.

    ``timestep`` and ``timestamp`` only label the message; :func:`explain_placement` checks them.
    """
    try:
        TimestepSnapshot.model_validate(results)
    except ValidationError as exc:
        return _contract_error(timestep, timestamp,
                               [(".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()])
    return None


def explain_placement(timestep: Any, timestamp: Any) -> ComponentError | None:
    """RST-101 naming the ``timestep`` and/or ``timestamp`` key if no table can hold it, else None."""
    problems = [(key, problem) for key, problem in (("timestep", timestep_problem(timestep)),
                                                    ("timestamp", timestamp_problem(timestamp)))
                if problem is not None]
    return _contract_error(timestep, timestamp, problems) if problems else None


def _contract_error(timestep: Any, timestamp: Any, problems: list[tuple[str, str]]) -> ComponentError:
    parts = [f"{path or '(snapshot)'}: {message}" for path, message in problems[:5]]
    more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
    # Details go into the event log as JSON: a timestep beyond int64 is kept as its text.
    step = timestep if isinstance(timestep, int) and timestep in _INT64 else printable(timestep)
    return ComponentError(
        "RST-101",
        f"timestep {printable(timestep)} ({printable(timestamp)}): " + "; ".join(parts) + more,
        details={"timestep": step, "timestamp": printable(timestamp), "paths": [path for path, _ in problems]},
    )
