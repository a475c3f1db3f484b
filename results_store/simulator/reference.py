"""The reference engine: a deterministic, seeded simulator of the seven strategy modes.

It is the project's embedded data source (demo, tests, benchmarks). On first use it generates
the market (:mod:`~results_store.simulator.market`) and runs the mode's strategy
(:mod:`~results_store.simulator.plan`) through it (:mod:`~results_store.simulator.simulation`),
both vectorised with numpy, into per-timestep arrays; snapshots are then built lazily, chunk by
chunk, from slices of those arrays: one builder per snapshot component computes its columns for
the chunk and returns the component of each step. Timestep k therefore costs the same whether a
run starts at 0 or at k, and starting at k yields exactly the dicts a full run yields there.

Snapshots follow ``schemas.snapshot.TimestepSnapshot`` plus ``"timestep"`` (0-based) and, for
modes with funding venues, ``pnl_calculator.funding``. PnL is in share-class units (USD for the
USDT share class, ETH for the ETH one).

Reconciliation: ``pnl_calculator.attribution`` is the cumulative PnL by source and
``balance_based.pnl_cumulative`` is total value (balances x prices, dust at zero) minus initial
capital. They are computed independently (see :mod:`~results_store.simulator.attribution`); by
construction they agree up to floating-point rounding. Each snapshot reports
``difference = sum(attribution) - pnl_cumulative`` and ``passed = |difference| <= tolerance`` with
``tolerance = RECONCILIATION_TOLERANCE * initial_capital`` (1e-6 of capital: 1 USD on a 1M USDT
book, 0.0005 ETH on 500 ETH); the measured difference is many orders of magnitude smaller.

Memory: about 20 float64 arrays of one value per timestep for the richest mode
(``usdt_market_neutral``) — ~100 MB for a year at one minute; snapshots are never kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from results_store.simulator.market import Market
from results_store.simulator.plan import StrategyPlan, plan_for
from results_store.simulator.simulation import MARGIN_MAINTENANCE, Event, PortfolioPaths, simulate_portfolio
from results_store.utc import to_utc
from schemas.modes import ModeConfig

__all__ = [
    "DELTA_RISK_THRESHOLD",
    "NO_DEBT_HEALTH_FACTOR",
    "RECONCILIATION_TOLERANCE",
    "ReferenceEngine",
    "parse_freq",
]

RECONCILIATION_TOLERANCE = 1e-6     # of initial capital: the most |sum(attribution) - pnl| may be
NO_DEBT_HEALTH_FACTOR = 1e6         # finite stand-in for "no debt, cannot be liquidated"
DELTA_RISK_THRESHOLD = 0.02         # net delta exposure over total value that raises an alert
MARGIN_ALERT = 0.20                 # CEX margin ratio below which an alert is raised
MIN_STEP = pd.Timedelta("1min")
MAX_STEP = pd.Timedelta("1D")
_CHUNK = 2_048                      # timesteps converted to Python objects at a time

# Per funding venue: (venue, latest interval's rate, this step's payment, running total), one value per step.
_FundingColumn = tuple[str, list[float], list[float], list[float]]
# A snapshot component of one chunk: step a + j's dict as a function of j.
_Component = Callable[[int], dict[str, Any]]


def parse_freq(freq: str) -> pd.Timedelta:
    """The timestep of a pandas frequency string; ValueError unless it is fixed and within 1min..1D."""
    # "1d" is how people write a day; pandas deprecates the lower-case alias in favour of "1D".
    if freq[-1:] == "d" and freq[:-1].isdigit():
        freq = freq[:-1] + "D"
    try:
        offset = to_offset(freq)
        step = pd.Timedelta(offset)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"freq {freq!r} is not a fixed pandas frequency such as 1min, 5min, 1h, 1D") from exc
    if not MIN_STEP <= step <= MAX_STEP:
        raise ValueError(f"freq {freq!r} is outside 1min..1D")
    return step


class ReferenceEngine:
    """Snapshots of one mode over ``[start, end)`` every ``freq``; the same seed gives the same snapshots.

    Args:
        mode: the mode's config (``schemas.modes.load_mode(name)``).
        start: first timestamp (naive means UTC).
        end: end of the range, exclusive.
        freq: a fixed pandas frequency from ``1min`` to ``1D``.
        seed: non-negative random seed.

    Raises:
        ValueError: bad range, frequency or seed.
        ComponentError: RST-201 if the mode's strategy is not one the engine simulates.
    """

    def __init__(self, mode: ModeConfig, start: datetime | str, end: datetime | str, freq: str = "1min",
                 seed: int = 0) -> None:
        self.mode = mode
        self.freq = freq
        self.seed = int(seed)
        self.step = parse_freq(freq)
        self.start, self.end = to_utc(start), to_utc(end)
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        self.plan: StrategyPlan = plan_for(mode)
        self._timestamps = pd.date_range(self.start, self.end, freq=self.step, inclusive="left")
        self._market = Market(self._timestamps, step=self.step, seed=self.seed,
                              venues=len(self.plan.hedge_venues))
        self._paths: PortfolioPaths | None = None
        self.tolerance = RECONCILIATION_TOLERANCE * self.plan.capital

    @property
    def timestamps(self) -> pd.DatetimeIndex:
        """The timesteps' timestamps, tz-aware UTC."""
        return self._timestamps

    def __len__(self) -> int:
        return len(self._timestamps)

    @property
    def market(self) -> Market:
        """The run's market paths."""
        return self._market

    @property
    def paths(self) -> PortfolioPaths:
        """The simulated book; computed on first access (see ``prepare``)."""
        if self._paths is None:
            self._paths = simulate_portfolio(self.plan, self._market)
        return self._paths

    def prepare(self) -> None:
        """Generate the market and run the strategy now rather than on the first snapshot."""
        _ = self.paths

    def iter_snapshots(self, start_timestep: int = 0, stop_timestep: int | None = None
                       ) -> Iterator[tuple[pd.Timestamp, dict[str, Any]]]:
        """``(timestamp, results)`` for timesteps ``[start_timestep, stop_timestep)``, lazily.

        Every ``results`` dict is new (the caller may keep or change it); it includes ``"timestep"``.
        """
        if start_timestep < 0:
            raise ValueError(f"start_timestep must be >= 0, got {start_timestep}")
        stop = len(self) if stop_timestep is None else min(stop_timestep, len(self))
        return self._iterate(start_timestep, stop)

    def _iterate(self, start: int, stop: int) -> Iterator[tuple[pd.Timestamp, dict[str, Any]]]:
        for a in range(start, stop, _CHUNK):
            yield from self._chunk(a, min(a + _CHUNK, stop))

    # -- snapshots --------------------------------------------------------------------------------
    def _chunk(self, a: int, b: int) -> Iterator[tuple[pd.Timestamp, dict[str, Any]]]:
        """Timesteps ``[a, b)``: each component's columns computed for the chunk, its dicts built per step.

        A builder returns the component of step ``a + j`` as a function of ``j``; the snapshots are
        assembled and yielded one at a time, so only the current one is alive.
        """
        window = self._window(a, b)
        exposure = _exposure(window)
        position_monitor = _position_monitor(window)
        exposure_monitor = _exposure_monitor(window.plan, exposure)
        risk_monitor = _risk_monitor(window.plan, _risk_columns(window, exposure))
        pnl_calculator = _pnl_calculator(window, self.tolerance, self._funding_columns(a, b))
        event_logger = _event_logger(window.paths.events, a)
        for j, ts in enumerate(self._timestamps[a:b]):
            yield ts, {
                "timestep": a + j,
                "position_monitor": position_monitor(j),
                "exposure_monitor": exposure_monitor(j),
                "risk_monitor": risk_monitor(j),
                "pnl_calculator": pnl_calculator(j),
                "event_logger": event_logger(j, ts),
            }

    def _window(self, a: int, b: int) -> _Window:
        """The book and the prices the snapshots of ``[a, b)`` read."""
        plan, market = self.plan, self._market
        eth = market.eth_usd[a:b] if (plan.spot == "ETH" or not plan.share_usd) else None
        spot = None
        if plan.spot == "BTC":
            spot = market.btc_usd[a:b]
        elif plan.spot == "ETH":
            spot = eth
        rate = market.weeth_rate[a:b] if plan.staking else None
        return _Window(a=a, b=b, plan=plan, paths=self.paths, eth=eth, spot=spot, rate=rate, zeros=np.zeros(b - a))

    def _funding_columns(self, a: int, b: int) -> list[_FundingColumn]:
        """Per funding venue: the latest interval's rate, this step's payment and the running total."""
        plan, paths = self.plan, self.paths
        if not plan.funding_venues:
            return []
        funding = self._market.funding
        boundary = funding.boundary_index(self._market.epoch_ns[a:b])
        rates = funding.rates[boundary]
        steps = np.arange(a, b)
        last = np.searchsorted(paths.funding_steps, steps, side="right") - 1
        has_paid = last >= 0
        safe = np.where(has_paid, last, 0)
        if len(paths.funding_steps):
            cumulative = np.where(has_paid[:, None], paths.funding_cumulative[safe], 0.0)
            paid_now = has_paid & (paths.funding_steps[safe] == steps)
            payment = np.where(paid_now[:, None], paths.funding_payments[safe], 0.0)
        else:
            cumulative = payment = np.zeros((b - a, len(plan.hedge_venues)))
        out = []
        for venue in plan.funding_venues:
            v = plan.hedge_venues.index(venue)
            out.append((venue, rates[:, v].tolist(), payment[:, v].tolist(), cumulative[:, v].tolist()))
        return out


# -- the chunk's columns ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Window:
    """Timesteps ``[a, b)`` of a run: the book and the prices, sliced to them on demand."""

    a: int
    b: int
    plan: StrategyPlan
    paths: PortfolioPaths
    eth: np.ndarray | None           # ETH/USD, where the mode values ETH
    spot: np.ndarray | None          # the spot asset (ETH or BTC) in USD
    rate: np.ndarray | None          # weETH/ETH
    zeros: np.ndarray                # what a holding the mode does not have reads as

    @property
    def count(self) -> int:
        return self.b - self.a

    def col(self, arr: np.ndarray | None) -> np.ndarray:
        """A per-step array's window; zeros where the mode does not hold it."""
        return self.zeros if arr is None else arr[self.a:self.b]

    def rows(self, arr: np.ndarray | None) -> np.ndarray | None:
        """A venue x step array's window."""
        return None if arr is None else arr[:, self.a:self.b]


@dataclass(frozen=True)
class _Exposure:
    """Exposure columns of a chunk: USD totals and the net delta in units of the spot asset."""

    value_usd: np.ndarray
    total: np.ndarray
    net: np.ndarray
    net_usd: np.ndarray
    spot_held: np.ndarray            # spot on the CEX accounts
    short: np.ndarray                # perp sizes summed over the venues (negative: short)


@dataclass(frozen=True)
class _Risk:
    """Risk columns of a chunk, as Python lists."""

    ltv: list[float]
    health: list[float]
    leverage: list[float] | None
    at_risk: list[bool]
    margin: list[float]
    delta_risk: list[float]
    min_margin: float


def _exposure(w: _Window) -> _Exposure:
    """Gross exposure in USD and net delta in units of the spot asset."""
    plan, paths, eth, spot, rate = w.plan, w.paths, w.eth, w.spot, w.rate
    value = paths.value[w.a:w.b]
    w_eth, debt = w.col(paths.w_eth), w.col(paths.debt)
    staked = w.col(paths.w_weeth if paths.w_weeth is not None else paths.a_weeth)
    cex_usdt, cex_spot, perp_size = w.rows(paths.cex_usdt), w.rows(paths.cex_spot), w.rows(paths.perp_size)
    gross_eth = w_eth + (staked * rate if rate is not None else 0.0) + debt
    spot_held = cex_spot.sum(axis=0) if cex_spot is not None else w.zeros
    short = perp_size.sum(axis=0) if perp_size is not None else w.zeros
    if plan.share_usd:
        cash = w.col(paths.w_usdt) + w.col(paths.a_usdt)
        if cex_usdt is not None:
            cash = cash + cex_usdt.sum(axis=0)
        value_usd = value
        total = cash + (gross_eth * eth if eth is not None else 0.0)
    else:
        assert eth is not None
        value_usd = value * eth
        total = gross_eth * eth
    if spot is not None:
        total = total + (spot_held + np.abs(short)) * spot
    if plan.basis:
        net = spot_held + short
    elif plan.staking:
        eth_units = w_eth + staked * rate - debt if rate is not None else w_eth.copy()
        net = eth_units + short
    else:
        net = w.zeros
    exposure_px = spot if spot is not None else (eth if eth is not None else w.zeros)
    return _Exposure(value_usd=value_usd, total=total, net=net, net_usd=net * exposure_px, spot_held=spot_held,
                     short=short)


def _risk_columns(w: _Window, exposure: _Exposure) -> _Risk:
    """LTV, health factor and leverage of the lending position; CEX margin ratio and delta drift of the hedge."""
    plan, paths = w.plan, w.paths
    if paths.ltv is not None:
        ltv = paths.ltv[w.a:w.b]
        ltv_list = ltv.tolist()
        health_list = (plan.liquidation_threshold / ltv).tolist()
        leverage_list: list[float] | None = (1.0 / (1.0 - ltv)).tolist()
        at_risk_list = (ltv >= plan.max_ltv).tolist()
    else:
        ltv_list = w.zeros.tolist()
        health_list = [NO_DEBT_HEALTH_FACTOR] * w.count
        leverage_list = None
        at_risk_list = [False] * w.count
    if plan.hedged:
        margin_list, delta_risk_list = _hedge_risk(w, exposure)
        min_margin = MARGIN_MAINTENANCE
    else:
        margin_list = delta_risk_list = w.zeros.tolist()
        min_margin = 0.0
    return _Risk(ltv=ltv_list, health=health_list, leverage=leverage_list, at_risk=at_risk_list, margin=margin_list,
                 delta_risk=delta_risk_list, min_margin=min_margin)


def _hedge_risk(w: _Window, exposure: _Exposure) -> tuple[list[float], list[float]]:
    """CEX equity over the short notional, and |net delta| over total value."""
    spot, paths = w.spot, w.paths
    cex_usdt, perp_size, perp_entry = w.rows(paths.cex_usdt), w.rows(paths.perp_size), w.rows(paths.perp_entry)
    assert spot is not None and perp_size is not None and perp_entry is not None and cex_usdt is not None
    delta_risk = np.abs(exposure.net_usd) / exposure.value_usd
    notional = -exposure.short * spot
    equity = cex_usdt.sum(axis=0) + (perp_size * (spot - perp_entry)).sum(axis=0) + exposure.spot_held * spot
    margin = equity / notional
    return margin.tolist(), delta_risk.tolist()


# -- the components: columns for the chunk, then one dict per step -----------------------------------
def _position_monitor(w: _Window) -> _Component:
    """``position_monitor``: wallet balances (dust included), CEX accounts and perp positions."""
    plan, paths = w.plan, w.paths
    wallet_cols: list[tuple[str, list[float]]] = []
    holdings = {"USDT": paths.w_usdt, "ETH": paths.w_eth, plan.staking_token: paths.w_weeth,
                plan.supply_token: paths.a_usdt if plan.lending_usdt else paths.a_weeth,
                plan.debt_token: paths.debt}
    for token in plan.wallet_tokens:
        wallet_cols.append((token, w.col(holdings[token]).tolist()))
    for token in plan.dust_tokens:
        wallet_cols.append((token, paths.dust[token][w.a:w.b].tolist()))
    cex_cols: list[tuple[str, list[tuple[str, list[float]]]]] = []
    perp_cols: list[tuple[str, list[float], list[float]]] = []
    cex_usdt, cex_spot = w.rows(paths.cex_usdt), w.rows(paths.cex_spot)
    perp_size, perp_entry = w.rows(paths.perp_size), w.rows(paths.perp_entry)
    if cex_usdt is not None and perp_size is not None and perp_entry is not None:
        for v, venue in enumerate(plan.hedge_venues):
            assets = [("USDT", cex_usdt[v].tolist())]
            if cex_spot is not None:
                assets.append((plan.spot, cex_spot[v].tolist()))
            cex_cols.append((venue, assets))
            perp_cols.append((venue, perp_size[v].tolist(), perp_entry[v].tolist()))
    tracked, instrument = plan.tracked_assets, plan.instrument

    def at(j: int) -> dict[str, Any]:
        return {
            "wallet": {token: values[j] for token, values in wallet_cols},
            "cex_accounts": {venue: {asset: values[j] for asset, values in assets} for venue, assets in cex_cols},
            "perp_positions": {venue: {instrument: {"size": sizes[j], "entry_price": entries[j]}}
                               for venue, sizes, entries in perp_cols},
            "tracked_assets": list(tracked),
        }

    return at


def _exposure_monitor(plan: StrategyPlan, exposure: _Exposure) -> _Component:
    """``exposure_monitor``: gross exposure and the net delta of each tracked asset."""
    assets = plan.delta_assets or ((plan.spot,) if plan.spot else ())
    net_list, net_usd_list, total_list = exposure.net.tolist(), exposure.net_usd.tolist(), exposure.total.tolist()

    def at(j: int) -> dict[str, Any]:
        return {
            "total_exposure": total_list[j],
            "net_delta": net_list[j],
            "asset_exposures": {asset: {"delta": net_list[j], "exposure_usd": net_usd_list[j]} for asset in assets},
        }

    return at


def _risk_monitor(plan: StrategyPlan, risk: _Risk) -> _Component:
    """``risk_monitor``: the risk metrics and the alerts they raise."""
    def at(j: int) -> dict[str, Any]:
        return {"risk_metrics": _risk_metrics(plan, risk, j), "risk_alerts": _risk_alerts(plan, risk, j)}

    return at


def _risk_metrics(plan: StrategyPlan, risk: _Risk, j: int) -> dict[str, Any]:
    ltv_risk = {"current_ltv": risk.ltv[j], "target_ltv": plan.target_ltv, "max_ltv": plan.max_ltv,
                "liquidation_threshold": plan.liquidation_threshold}
    if risk.leverage is not None:
        ltv_risk["leverage"] = risk.leverage[j]
    return {
        "ltv_risk": ltv_risk,
        "liquidation_risk": {"at_risk": risk.at_risk[j], "health_factor": risk.health[j]},
        "cex_margin_ratio": {"current_ratio": risk.margin[j], "min_ratio": risk.min_margin},
        "delta_risk": {"delta_risk": risk.delta_risk[j], "threshold": DELTA_RISK_THRESHOLD},
    }


def _risk_alerts(plan: StrategyPlan, risk: _Risk, j: int) -> dict[str, Any]:
    alerts: dict[str, Any] = {}
    if risk.at_risk[j]:
        alerts["ltv_above_max"] = {"level": "critical" if risk.ltv[j] >= plan.liquidation_threshold else "warning",
                                   "current_ltv": risk.ltv[j], "max_ltv": plan.max_ltv}
    if plan.hedged:
        if risk.margin[j] < MARGIN_ALERT:
            alerts["cex_margin_low"] = {"level": "warning", "current_ratio": risk.margin[j], "threshold": MARGIN_ALERT}
        if risk.delta_risk[j] > DELTA_RISK_THRESHOLD:
            alerts["delta_drift"] = {"level": "warning", "delta_risk": risk.delta_risk[j],
                                     "threshold": DELTA_RISK_THRESHOLD}
    return alerts


def _pnl_calculator(w: _Window, tolerance: float, funding_cols: list[_FundingColumn]) -> _Component:
    """``pnl_calculator``: balance-based PnL, attribution, their reconciliation and, where tracked, funding."""
    value = w.paths.value[w.a:w.b]
    pnl = value - w.plan.capital
    attr_total = np.zeros(w.count)
    attr_cols: list[tuple[str, list[float] | None]] = []
    for name, cumulative in w.paths.attribution.items():
        if cumulative is None:
            attr_cols.append((name, None))
        else:
            attr_total += cumulative[w.a:w.b]
            attr_cols.append((name, cumulative[w.a:w.b].tolist()))
    difference = attr_total - pnl
    passed = (np.abs(difference) <= tolerance).tolist()
    value_list, pnl_list, diff_list = value.tolist(), pnl.tolist(), difference.tolist()

    def at(j: int) -> dict[str, Any]:
        pnl_calculator: dict[str, Any] = {
            "balance_based": {"pnl_cumulative": pnl_list[j], "total_value": value_list[j]},
            "attribution": {name: (0.0 if values is None else values[j]) for name, values in attr_cols},
            "reconciliation": {"passed": passed[j], "difference": diff_list[j], "tolerance": tolerance},
        }
        if funding_cols:
            pnl_calculator["funding"] = {
                venue: {"funding_rate": rates[j], "payment": pays[j], "cumulative": cums[j]}
                for venue, rates, pays, cums in funding_cols
            }
        return pnl_calculator

    return at


def _event_logger(events: dict[int, list[Event]], a: int) -> Callable[[int, pd.Timestamp], list[dict[str, Any]]]:
    """``event_logger``: the step's events in order, numbered from 1, stamped with the step's time."""
    def at(j: int, ts: pd.Timestamp) -> list[dict[str, Any]]:
        step_events = events.get(a + j)
        return [] if step_events is None else [
            {"order": k, "event_type": kind, "timestamp": ts, "details": dict(details)}
            for k, (kind, details) in enumerate(step_events, start=1)
        ]

    return at
