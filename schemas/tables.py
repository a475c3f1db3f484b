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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

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
    "ROW_RULE",
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
    "RowRule",
    "TableColumns",
    "arrow_schema",
    "arrow_type",
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


# The key under which a dataframe-level Check's ``statistics`` carry its RowRule.
ROW_RULE = "row_rule"


class TableColumns(Protocol):
    """A table's columns by name: the pandas DataFrame pandera checks, or the column arrays of the
    fast screen (results_store.validate_screen) on an Arrow table with no missing values."""

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True, eq=False)
class RowRule:
    """A dataframe-level rule, written once as a vectorised function of the table's columns.

    ``holds`` returns one boolean per row (True: the row keeps the rule). It uses only what a pandas
    Series and the screen's arrays both offer (comparisons, ``& | ~``, string ``==``/``!=``/``isin``,
    numpy functions), so pandera (through :meth:`on_frame`) and the screen run the same code. The
    pandera Check built by :meth:`check` or :meth:`model_check` carries the rule in its
    ``statistics`` under ``ROW_RULE``: that is how the screen finds what to run.
    """

    name: str
    error: str
    holds: Callable[[TableColumns], Any]

    def on_frame(self, df: pd.DataFrame) -> pd.Series:
        result = self.holds(df)
        # pandera places a failure at a row only when the output shares the frame's index.
        return result if isinstance(result, pd.Series) else pd.Series(result, index=df.index)

    def check(self) -> pdr.Check:
        """The rule as a schema-level pandera Check."""
        return pdr.Check(self.on_frame, name=self.name, error=self.error, statistics={ROW_RULE: self})

    def model_check(self) -> Any:
        """The rule as a DataFrameModel dataframe check (assign it to a class attribute of the model)."""

        def check(cls: type, df: pd.DataFrame) -> pd.Series:
            return self.on_frame(df)

        return pdr.dataframe_check(name=self.name, error=self.error, statistics={ROW_RULE: self})(classmethod(check))


def _liquidation_flag_consistent(at_risk: Any, ltv: Any, liquidation_threshold: Any) -> Any:
    """False where the flag contradicts the LTV.

    A position at or above its liquidation threshold must be flagged, and a position with no
    debt (LTV 0) cannot be at risk of liquidation.
    """
    must_flag = (liquidation_threshold > 0) & (ltv >= liquidation_threshold)
    cannot_flag = ltv <= 0
    return ~((must_flag & ~at_risk) | (cannot_flag & at_risk))


def _non_negative_balance(df: TableColumns) -> Any:
    return ~df["account_type"].isin(NON_NEGATIVE_ACCOUNT_TYPES) | (df["amount"] >= 0)


def _ltv_in_unit_interval(df: TableColumns) -> Any:
    is_ltv = (df["risk_group"] == "ltv_risk") & df["metric"].isin(LTV_METRICS)
    value = df["value"]
    return ~is_ltv | ((value >= 0.0) & (value <= 1.0))  # Series.between(0.0, 1.0), spelled out for arrays


_RISK_FIGURES = (("liquidation_risk", "at_risk"), ("ltv_risk", "current_ltv"), ("ltv_risk", "liquidation_threshold"))


def _liquidation_flag_by_timestep(df: TableColumns) -> Any:
    """risk_metrics is long: pair each timestep's at_risk, current_ltv and liquidation_threshold rows,
    and fail every row of a timestep whose flag contradicts its LTV."""

    def is_figure(group: str, metric: str) -> Any:
        return (df["risk_group"] == group) & (df["metric"] == metric)

    if isinstance(df, pd.DataFrame):
        # pandas pairs the figures by index alignment, which also copes with a figure repeated in a timestep.
        def pick(group: str, metric: str) -> pd.Series:
            rows = df[is_figure(group, metric)]
            return pd.Series(rows["value"].to_numpy(), index=rows["timestep"].to_numpy())

        at_risk, ltv, threshold = (pick(group, metric) for group, metric in _RISK_FIGURES)
        common = at_risk.index.intersection(ltv.index).intersection(threshold.index)
        ok = _liquidation_flag_consistent(at_risk.loc[common] > 0.5, ltv.loc[common], threshold.loc[common])
        bad_steps = set(ok.index[~ok.to_numpy()])
        return ~df["timestep"].isin(bad_steps)
    # Column arrays pair the figures by sorted timestep, which needs each figure at most once per
    # timestep; a table where one repeats is left to pandas' alignment above (the screen declines it).
    steps, values = np.asarray(df["timestep"]), np.asarray(df["value"])
    figures = []
    for group, metric in _RISK_FIGURES:
        mask = np.asarray(is_figure(group, metric), dtype=bool)
        order = np.argsort(steps[mask], kind="stable")
        at, figure = steps[mask][order], values[mask][order]
        if (at[1:] == at[:-1]).any():
            raise ValueError(f"{group}.{metric} appears twice in a timestep: only pandas' alignment pairs that")
        figures.append((at, figure))
    # Each figure's timesteps are unique (a repeat raised above), and so is an intersection of unique arrays.
    common = np.intersect1d(np.intersect1d(figures[0][0], figures[1][0], assume_unique=True), figures[2][0],
                            assume_unique=True)
    at_risk, ltv, threshold = (figure[np.searchsorted(at, common)] for at, figure in figures)
    ok = _liquidation_flag_consistent(at_risk > 0.5, ltv, threshold)
    return ~np.isin(steps, common[~ok])


def _event_order_increasing(df: TableColumns) -> Any:
    steps, order = np.asarray(df["timestep"]), np.asarray(df["event_order"])
    ok = np.ones(len(steps), dtype=bool)
    # As the pandas form did (step.ne(step.shift()) | (order.diff() > 0)): shift() made the timesteps
    # float64 before comparing, and diff() subtracts in int64, wrapping; kept so the rule judges as before.
    with np.errstate(over="ignore"):
        ok[1:] = (steps[1:].astype(np.float64) != steps[:-1].astype(np.float64)) | ((order[1:] - order[:-1]) > 0)
    return ok


def _event_near_its_timestep(df: TableColumns) -> Any:
    # An event is logged during its timestep (the longest is a day); one from 1970 in a 2024 run
    # is an unset clock, not an event: its row is quarantined, the timestep's other rows written.
    return abs(df["event_timestamp"] - df["timestamp"]) <= EVENT_TIME_TOLERANCE


NON_NEGATIVE_BALANCE = RowRule("non_negative_balance", "balance negative on an account type that cannot be negative",
                               _non_negative_balance)
LTV_IN_UNIT_INTERVAL = RowRule("ltv_in_unit_interval", "LTV outside [0, 1]", _ltv_in_unit_interval)
LIQUIDATION_FLAG = RowRule(
    "liquidation_flag_matches_ltv", "liquidation flag contradicts the LTV",
    lambda df: _liquidation_flag_consistent(df["at_risk"], df["current_ltv"], df["liquidation_threshold"]),
)
# The same rule on risk_metrics' long layout (one row per figure).
LIQUIDATION_FLAG_BY_TIMESTEP = RowRule(LIQUIDATION_FLAG.name, LIQUIDATION_FLAG.error, _liquidation_flag_by_timestep)
EVENT_ORDER_INCREASING = RowRule("event_order_increasing", "event order not strictly increasing within a timestep",
                                 _event_order_increasing)
EVENT_NEAR_ITS_TIMESTEP = RowRule(
    "event_near_its_timestep", f"event timestamp more than {EVENT_TIME_TOLERANCE.days} days from its timestep's",
    _event_near_its_timestep,
)


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

    _non_negative = NON_NEGATIVE_BALANCE.model_check()


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

    _ltv_range = LTV_IN_UNIT_INTERVAL.model_check()
    _liquidation_flag = LIQUIDATION_FLAG_BY_TIMESTEP.model_check()


class ExecutionLog(ResultRow):
    """Execution events in the engine's order within each timestep (from event_logger)."""

    event_order: Series[np.int64] = pdr.Field(description="the event's position within its timestep")
    event_type: Series[str] = pdr.Field(str_length={"min_value": 1})
    event_timestamp: Series[UtcMicros] = pdr.Field(description="when the event happened, UTC")
    details: Series[str] = pdr.Field(description="the event's other fields, as JSON")

    _order = EVENT_ORDER_INCREASING.model_check()
    _near = EVENT_NEAR_ITS_TIMESTEP.model_check()


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

    _liquidation_flag = LIQUIDATION_FLAG.model_check()


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


def arrow_type(dtype: Any) -> pa.DataType:
    """The Arrow type of a pandera dtype (TypeError for one the tables do not use)."""
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
        [pa.field(name, arrow_type(col.dtype), nullable=col.nullable) for name, col in schema.columns.items()]
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

        def _configured_attribution(df: TableColumns) -> Any:
            return (df["component"] != "attribution") | df["metric"].isin(allowed)

        schema = copy.copy(schema)
        schema.checks = [*schema.checks, RowRule(
            "configured_attribution_type", f"attribution type not in the mode's pnl_attribution_types {allowed}",
            _configured_attribution,
        ).check()]
    return schema


def column_docs(result_type: ResultType | str) -> list[tuple[str, str, str]]:
    """(column, Arrow type, description) rows for the README and `results-store schema`."""
    schema = TABLE_MODELS[ResultType(result_type)].to_schema()
    arrow = arrow_schema(result_type)
    return [(name, str(arrow.field(name).type), col.description or "")
            for name, col in schema.columns.items()]
