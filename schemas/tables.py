"""One pandera model per result table: the single source of truth for its columns and rules.

Everything else derives from these models: the Arrow schema the flattener builds
(:func:`arrow_schema`), the Delta schema of the tables, the per-mode validation schema with the
mode's allowed assets, venues and tokens (:func:`mode_schema`) and the column docs.

Layout is long (tidy): one row per (timestep, entity), so every mode shares one schema per type.
Two rules hold for every table without being repeated in each model: every float column must be
finite, and every row carries ``run_id``, ``timestamp`` (UTC, microseconds) and ``timestep``.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa
from pandera.typing import Series

from schemas.modes import ModeConfig, config_hash
from schemas.result_types import ResultType

__all__ = [
    "ACCOUNT_TYPES",
    "PNL_COMPONENTS",
    "RISK_GROUPS",
    "SPARSE_TABLES",
    "TABLE_KEYS",
    "TABLE_MODELS",
    "BalanceSheet",
    "DeltaTracking",
    "DustTracking",
    "ExecutionLog",
    "FundingTracking",
    "LeverageTracking",
    "PnlAttribution",
    "ResultRow",
    "RiskMetrics",
    "arrow_schema",
    "column_docs",
    "key_columns",
    "mode_schema",
    "model_arrow_schema",
]

UtcMicros = Annotated[pd.DatetimeTZDtype, "us", "UTC"]

# Account types whose balances can never be negative; perp sizes are signed (short < 0).
ACCOUNT_TYPES = ("wallet", "cex", "perp")
NON_NEGATIVE_ACCOUNT_TYPES = ("wallet", "cex")
PNL_COMPONENTS = ("attribution", "balance_based", "reconciliation")
RISK_GROUPS = ("ltv_risk", "liquidation_risk", "cex_margin_ratio", "delta_risk")
LTV_METRICS = ("current_ltv", "target_ltv", "max_ltv", "liquidation_threshold")

# How far an event's time may be from its snapshot's (rule event_near_its_timestep): a timestep is
# at most a day, so a week is generous and still catches a clock that was never set.
EVENT_TIME_TOLERANCE = pd.Timedelta(days=7)

# The column a row-level (dataframe) rule is about, so violation messages can name it.
ROW_RULE_COLUMNS = {
    "non_negative_balance": "amount",
    "ltv_in_unit_interval": "value",
    "liquidation_flag_matches_ltv": "at_risk",
    "event_order_increasing": "event_order",
    "event_near_its_timestep": "event_timestamp",
    "configured_attribution_type": "metric",
}


def _liquidation_flag_consistent(
    at_risk: pd.Series, ltv: pd.Series, liquidation_threshold: pd.Series
) -> pd.Series:
    """False where the flag contradicts the LTV.

    A position at or above its liquidation threshold must be flagged, and a position with no
    debt (LTV 0) cannot be at risk of liquidation.
    """
    must_flag = (liquidation_threshold > 0) & (ltv >= liquidation_threshold)
    cannot_flag = ltv <= 0
    return ~((must_flag & ~at_risk) | (cannot_flag & at_risk))


class ResultRow(pdr.DataFrameModel):
    """Columns every result table starts with."""

    run_id: Series[str] = pdr.Field(str_length={"min_value": 1}, description="the run this row belongs to")
    timestamp: Series[UtcMicros] = pdr.Field(description="engine time of the timestep, UTC")
    timestep: Series[np.int64] = pdr.Field(ge=0, description="0-based index of the timestep in its run")

    class Config:
        strict = True
        ordered = True
        coerce = False


class BalanceSheet(ResultRow):
    """Raw balances: wallet tokens, CEX account balances and perp positions (from position_monitor)."""

    venue: Series[str] = pdr.Field(description="'wallet' for on-chain tokens, else the CEX venue")
    account_type: Series[str] = pdr.Field(isin=list(ACCOUNT_TYPES), description="wallet | cex | perp")
    asset: Series[str] = pdr.Field(description="token or (for perps) the base asset")
    instrument: Series[str] = pdr.Field(description="the asset itself, or the perp instrument name")
    amount: Series[float] = pdr.Field(description="balance in asset units; perp size is signed")

    @pdr.dataframe_check(name="non_negative_balance", error="balance negative on an account type that cannot be negative")
    @classmethod
    def _non_negative(cls, df: pd.DataFrame) -> pd.Series:
        return ~df["account_type"].isin(NON_NEGATIVE_ACCOUNT_TYPES) | (df["amount"] >= 0)


class PnlAttribution(ResultRow):
    """Cumulative PnL by source, the balance-based PnL and their reconciliation (from pnl_calculator)."""

    component: Series[str] = pdr.Field(isin=list(PNL_COMPONENTS), description="attribution | balance_based | reconciliation")
    metric: Series[str] = pdr.Field(description="attribution type, or the balance/reconciliation figure")
    value: Series[float] = pdr.Field(description="in share-class units (reconciliation 'passed' is 1.0/0.0)")


class RiskMetrics(ResultRow):
    """Risk figures by group: LTV, liquidation, CEX margin and delta risk (from risk_monitor)."""

    risk_group: Series[str] = pdr.Field(isin=list(RISK_GROUPS), description="which risk the metric measures")
    metric: Series[str] = pdr.Field(description="name of the figure within its group")
    value: Series[float] = pdr.Field(description="the figure; flags are 1.0/0.0")

    @pdr.dataframe_check(name="ltv_in_unit_interval", error="LTV outside [0, 1]")
    @classmethod
    def _ltv_range(cls, df: pd.DataFrame) -> pd.Series:
        is_ltv = (df["risk_group"] == "ltv_risk") & df["metric"].isin(LTV_METRICS)
        return ~is_ltv | df["value"].between(0.0, 1.0)

    @pdr.dataframe_check(name="liquidation_flag_matches_ltv", error="liquidation flag contradicts the LTV")
    @classmethod
    def _liquidation_flag(cls, df: pd.DataFrame) -> pd.Series:
        def pick(group: str, metric: str) -> pd.Series:
            rows = df[(df["risk_group"] == group) & (df["metric"] == metric)]
            return pd.Series(rows["value"].to_numpy(), index=rows["timestep"].to_numpy())

        at_risk = pick("liquidation_risk", "at_risk")
        ltv = pick("ltv_risk", "current_ltv")
        threshold = pick("ltv_risk", "liquidation_threshold")
        common = at_risk.index.intersection(ltv.index).intersection(threshold.index)
        ok = _liquidation_flag_consistent(
            at_risk.loc[common] > 0.5, ltv.loc[common], threshold.loc[common]
        )
        bad_steps = set(ok.index[~ok.to_numpy()])
        return ~df["timestep"].isin(bad_steps)


class ExecutionLog(ResultRow):
    """Execution events in the engine's order within each timestep (from event_logger)."""

    event_order: Series[np.int64] = pdr.Field(description="the event's position within its timestep")
    event_type: Series[str] = pdr.Field(str_length={"min_value": 1})
    event_timestamp: Series[UtcMicros] = pdr.Field(description="when the event happened, UTC")
    details: Series[str] = pdr.Field(description="the event's other fields, as JSON")

    @pdr.dataframe_check(name="event_order_increasing", error="event order not strictly increasing within a timestep")
    @classmethod
    def _order(cls, df: pd.DataFrame) -> pd.Series:
        step_change = df["timestep"].ne(df["timestep"].shift())
        return step_change | (df["event_order"].diff() > 0)

    @pdr.dataframe_check(name="event_near_its_timestep",
                         error=f"event timestamp more than {EVENT_TIME_TOLERANCE.days} days from its timestep's")
    @classmethod
    def _near(cls, df: pd.DataFrame) -> pd.Series:
        # An event is logged during its timestep (the longest is a day); one from 1970 in a 2024 run
        # is an unset clock, not an event: its row is quarantined, the timestep's other rows written.
        return (df["event_timestamp"] - df["timestamp"]).abs() <= EVENT_TIME_TOLERANCE


class DeltaTracking(ResultRow):
    """Delta exposure per tracked asset, with the portfolio totals (from exposure_monitor)."""

    asset: Series[str]
    delta: Series[float] = pdr.Field(description="net position in asset units")
    exposure_usd: Series[float]
    net_delta: Series[float] = pdr.Field(description="portfolio net delta at this timestep")
    total_exposure_usd: Series[float] = pdr.Field(description="portfolio gross exposure at this timestep")


class LeverageTracking(ResultRow):
    """LTV and leverage of the lending position, one row per timestep (from risk_monitor)."""

    current_ltv: Series[float] = pdr.Field(ge=0, le=1)
    target_ltv: Series[float] = pdr.Field(ge=0, le=1)
    max_ltv: Series[float] = pdr.Field(ge=0, le=1)
    liquidation_threshold: Series[float] = pdr.Field(ge=0, le=1)
    health_factor: Series[float] = pdr.Field(gt=0)
    leverage: Series[float] = pdr.Field(ge=1, description="collateral value over equity")
    at_risk: Series[bool]

    @pdr.dataframe_check(name="liquidation_flag_matches_ltv", error="liquidation flag contradicts the LTV")
    @classmethod
    def _liquidation_flag(cls, df: pd.DataFrame) -> pd.Series:
        return _liquidation_flag_consistent(df["at_risk"], df["current_ltv"], df["liquidation_threshold"])


class FundingTracking(ResultRow):
    """Perp funding per venue (from pnl_calculator)."""

    venue: Series[str]
    funding_rate: Series[float] = pdr.Field(description="rate of the latest 8-hour interval")
    payment: Series[float] = pdr.Field(description="received (+) or paid (-) at this timestep")
    cumulative: Series[float] = pdr.Field(description="received since the run started")


class DustTracking(ResultRow):
    """Balances of airdropped dust tokens (from position_monitor's wallet)."""

    token: Series[str]
    amount: Series[float] = pdr.Field(ge=0)


TABLE_MODELS: dict[ResultType, type[ResultRow]] = {
    ResultType.BALANCE_SHEET: BalanceSheet,
    ResultType.PNL_ATTRIBUTION: PnlAttribution,
    ResultType.RISK_METRICS: RiskMetrics,
    ResultType.EXECUTION_LOG: ExecutionLog,
    ResultType.DELTA_TRACKING: DeltaTracking,
    ResultType.LEVERAGE_TRACKING: LeverageTracking,
    ResultType.FUNDING_TRACKING: FundingTracking,
    ResultType.DUST_TRACKING: DustTracking,
}


# The key of each table: no two rows of a table may share these values. Declared here, beside the
# models, so the audit's uniqueness check and any reader that joins tables use the same definition.
# balance_sheet needs account_type: a basis venue holds spot BTC (cex) and a BTC perp, both with
# asset "BTC"; and instrument, not asset, tells two perps on the same base apart.
TABLE_KEYS: dict[ResultType, tuple[str, ...]] = {
    ResultType.BALANCE_SHEET: ("run_id", "timestep", "venue", "account_type", "instrument"),
    ResultType.PNL_ATTRIBUTION: ("run_id", "timestep", "component", "metric"),
    ResultType.RISK_METRICS: ("run_id", "timestep", "risk_group", "metric"),
    ResultType.EXECUTION_LOG: ("run_id", "timestep", "event_order"),
    ResultType.DELTA_TRACKING: ("run_id", "timestep", "asset"),
    ResultType.LEVERAGE_TRACKING: ("run_id", "timestep"),
    ResultType.FUNDING_TRACKING: ("run_id", "timestep", "venue"),
    ResultType.DUST_TRACKING: ("run_id", "timestep", "token"),
}

# Tables with rows only at the timesteps where something happened (events); every other table has
# rows at every stored timestep.
SPARSE_TABLES: frozenset[ResultType] = frozenset({ResultType.EXECUTION_LOG})


def key_columns(result_type: ResultType | str) -> tuple[str, ...]:
    """The columns that identify one row of a result table (see ``TABLE_KEYS``)."""
    return TABLE_KEYS[ResultType(result_type)]


def _arrow_type(dtype: Any) -> pa.DataType:
    text = str(dtype)
    if text.startswith("datetime64[us, UTC]"):
        return pa.timestamp("us", tz="UTC")
    mapping = {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "str": pa.string(),
        "string": pa.string(),
        "string[pyarrow]": pa.string(),
        "string[python]": pa.string(),
    }
    if text not in mapping:
        raise TypeError(f"no Arrow type for pandera dtype {text!r}")
    return mapping[text]


def model_arrow_schema(model: type[pdr.DataFrameModel]) -> pa.Schema:
    """The Arrow (and hence Delta) schema derived from a pandera model."""
    schema = model.to_schema()
    return pa.schema(
        [pa.field(name, _arrow_type(col.dtype), nullable=col.nullable) for name, col in schema.columns.items()]
    )


def arrow_schema(result_type: ResultType | str) -> pa.Schema:
    """The Arrow (and hence Delta) schema of a result table."""
    return model_arrow_schema(TABLE_MODELS[ResultType(result_type)])


def float_columns(result_type: ResultType | str) -> list[str]:
    return [n for n, t in zip(arrow_schema(result_type).names, arrow_schema(result_type).types, strict=True)
            if pa.types.is_floating(t)]


def _allowed_values(result_type: ResultType, mode: ModeConfig) -> dict[str, list[str]]:
    rs, strategy = mode.results_store, mode.strategy
    venues = sorted({"wallet", *strategy.cex_venues, *strategy.hedge_venues})
    return {
        ResultType.BALANCE_SHEET: {"asset": rs.balance_sheet_assets, "venue": venues},
        ResultType.DELTA_TRACKING: {"asset": rs.delta_tracking_assets},
        ResultType.FUNDING_TRACKING: {"venue": rs.funding_tracking_venues},
        ResultType.DUST_TRACKING: {"token": rs.dust_tracking_tokens},
    }.get(result_type, {})


_SCHEMA_CACHE: dict[tuple[ResultType, str], pdr.DataFrameSchema] = {}


def mode_schema(result_type: ResultType | str, mode: ModeConfig) -> pdr.DataFrameSchema:
    """The model's schema plus the rules that depend on the mode and hold for every table.

    Adds: every float column finite; the mode's allowed assets/venues/tokens; for PnL, attribution
    rows must name one of the mode's attribution types. Built once per (table, mode content):
    building it costs more than validating a small batch.
    """
    rtype = ResultType(result_type)
    key = (rtype, config_hash(mode))
    if key not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[key] = _build_mode_schema(rtype, mode)
    return _SCHEMA_CACHE[key]


def _build_mode_schema(rtype: ResultType, mode: ModeConfig) -> pdr.DataFrameSchema:
    schema = TABLE_MODELS[rtype].to_schema()
    updates: dict[str, dict[str, Any]] = {}
    for name in float_columns(rtype):
        # NaN is a null to pandas; let it through the null check so the finite rule names it.
        finite = pdr.Check(np.isfinite, name="finite", error="non-finite number", ignore_na=False)
        updates[name] = {"checks": [*schema.columns[name].checks, finite], "nullable": True}
    for name, allowed in _allowed_values(rtype, mode).items():
        checks = [*updates.get(name, {}).get("checks", schema.columns[name].checks),
                  pdr.Check.isin(allowed, name="configured_values",
                                 error=f"{name} not in the mode's configured list {allowed}")]
        updates[name] = {"checks": checks}
    if updates:
        schema = schema.update_columns(updates)
    if rtype is ResultType.PNL_ATTRIBUTION:
        allowed = list(mode.results_store.pnl_attribution_types)

        def _configured_attribution(df: pd.DataFrame) -> pd.Series:
            return (df["component"] != "attribution") | df["metric"].isin(allowed)

        schema = copy.copy(schema)
        schema.checks = [*schema.checks, pdr.Check(
            _configured_attribution, name="configured_attribution_type",
            error=f"attribution type not in the mode's pnl_attribution_types {allowed}",
        )]
    return schema


def column_docs(result_type: ResultType | str) -> list[tuple[str, str, str]]:
    """(column, Arrow type, description) rows for the README and `results-store schema`."""
    schema = TABLE_MODELS[ResultType(result_type)].to_schema()
    arrow = arrow_schema(result_type)
    return [(name, str(arrow.field(name).type), col.description or "")
            for name, col in schema.columns.items()]
