"""The reference engine: a deterministic, seeded simulator of the seven strategy modes.

It is the project's embedded data source (demo, tests, benchmarks). On first use it generates
the market (``engine.market``) and runs the mode's strategy through it (``engine.portfolio``),
both vectorised with numpy, into per-timestep arrays; snapshots are then built lazily, chunk by
chunk, from slices of those arrays. Timestep k therefore costs the same whether a run starts at
0 or at k, and starting at k yields exactly the dicts a full run yields there.

Snapshots follow ``schemas.snapshot.TimestepSnapshot`` plus ``"timestep"`` (0-based) and, for
modes with funding venues, ``pnl_calculator.funding``. PnL is in share-class units (USD for the
USDT share class, ETH for the ETH one).

Reconciliation: ``pnl_calculator.attribution`` is the cumulative PnL by source and
``balance_based.pnl_cumulative`` is total value (balances x prices, dust at zero) minus initial
capital. They are computed independently (see ``engine.portfolio``); by construction they agree
up to floating-point rounding. Each snapshot reports ``difference = sum(attribution) -
pnl_cumulative`` and ``passed = |difference| <= tolerance`` with
``tolerance = RECONCILIATION_TOLERANCE * initial_capital`` (1e-6 of capital: 1 USD on a 1M USDT
book, 0.0005 ETH on 500 ETH); the measured difference is many orders of magnitude smaller.

Memory: about 20 float64 arrays of one value per timestep for the richest mode
(``usdt_market_neutral``) — ~100 MB for a year at one minute; snapshots are never kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from results_store.simulator.market import Market
from results_store.simulator.portfolio import MARGIN_MAINTENANCE, PortfolioPaths, StrategyPlan, plan_for, simulate_portfolio
from schemas.modes import ModeConfig

__all__ = [
    "DELTA_RISK_THRESHOLD",
    "NO_DEBT_HEALTH_FACTOR",
    "RECONCILIATION_TOLERANCE",
    "ReferenceEngine",
    "parse_freq",
    "to_utc",
]

RECONCILIATION_TOLERANCE = 1e-6     # of initial capital: the most |sum(attribution) - pnl| may be
NO_DEBT_HEALTH_FACTOR = 1e6         # finite stand-in for "no debt, cannot be liquidated"
DELTA_RISK_THRESHOLD = 0.02         # net delta exposure over total value that raises an alert
MARGIN_ALERT = 0.20                 # CEX margin ratio below which an alert is raised
MIN_STEP = pd.Timedelta("1min")
MAX_STEP = pd.Timedelta("1D")
_CHUNK = 2_048                      # timesteps converted to Python objects at a time


def to_utc(value: datetime | str | pd.Timestamp) -> pd.Timestamp:
    """A pd.Timestamp in UTC; naive input is taken to be UTC already."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


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
        plan, paths, market = self.plan, self.paths, self._market
        sl = slice(a, b)
        count = b - a
        zeros = np.zeros(count)
        capital, tolerance = plan.capital, self.tolerance

        value = paths.value[sl]
        pnl = value - capital
        attr_total = np.zeros(count)
        attr_cols: list[tuple[str, list[float] | None]] = []
        for name, cumulative in paths.attribution.items():
            if cumulative is None:
                attr_cols.append((name, None))
            else:
                attr_total += cumulative[sl]
                attr_cols.append((name, cumulative[sl].tolist()))
        difference = attr_total - pnl
        passed = (np.abs(difference) <= tolerance).tolist()

        eth = market.eth_usd[sl] if (plan.spot == "ETH" or not plan.share_usd) else None
        spot = None
        if plan.spot == "BTC":
            spot = market.btc_usd[sl]
        elif plan.spot == "ETH":
            spot = eth
        rate = market.weeth_rate[sl] if plan.staking else None

        def col(arr: np.ndarray | None) -> np.ndarray:
            return zeros if arr is None else arr[sl]

        w_eth, debt = col(paths.w_eth), col(paths.debt)
        staked = col(paths.w_weeth if paths.w_weeth is not None else paths.a_weeth)
        eth_units = w_eth + staked * rate - debt if rate is not None else w_eth.copy()
        cash = col(paths.w_usdt) + col(paths.a_usdt)
        cex_usdt = paths.cex_usdt[:, sl] if paths.cex_usdt is not None else None
        cex_spot = paths.cex_spot[:, sl] if paths.cex_spot is not None else None
        perp_size = paths.perp_size[:, sl] if paths.perp_size is not None else None
        perp_entry = paths.perp_entry[:, sl] if paths.perp_entry is not None else None
        if cex_usdt is not None:
            cash = cash + cex_usdt.sum(axis=0)

        # Exposure in USD and delta in units of the spot asset.
        gross_eth = w_eth + (staked * rate if rate is not None else 0.0) + debt
        spot_held = cex_spot.sum(axis=0) if cex_spot is not None else zeros
        short = perp_size.sum(axis=0) if perp_size is not None else zeros
        if plan.share_usd:
            value_usd = value
            total_exposure = cash + (gross_eth * eth if eth is not None else 0.0)
        else:
            assert eth is not None
            value_usd = value * eth
            total_exposure = gross_eth * eth
        if spot is not None:
            total_exposure = total_exposure + (spot_held + np.abs(short)) * spot
        if plan.basis:
            net = spot_held + short
        elif plan.staking:
            net = eth_units + short
        else:
            net = zeros
        exposure_px = spot if spot is not None else (eth if eth is not None else zeros)
        net_usd = net * exposure_px
        if plan.hedged:
            assert spot is not None and perp_size is not None and perp_entry is not None and cex_usdt is not None
            delta_risk = np.abs(net_usd) / value_usd
            notional = -short * spot
            equity = cex_usdt.sum(axis=0) + (perp_size * (spot - perp_entry)).sum(axis=0) + spot_held * spot
            margin = equity / notional
            margin_list = margin.tolist()
            delta_risk_list = delta_risk.tolist()
            min_margin = MARGIN_MAINTENANCE
        else:
            margin_list = delta_risk_list = zeros.tolist()
            min_margin = 0.0
        exposure_assets = plan.delta_assets or ((plan.spot,) if plan.spot else ())

        if paths.ltv is not None:
            ltv = paths.ltv[sl]
            ltv_list = ltv.tolist()
            health_list = (plan.liquidation_threshold / ltv).tolist()
            leverage_list = (1.0 / (1.0 - ltv)).tolist()
            at_risk_list = (ltv >= plan.max_ltv).tolist()
        else:
            ltv_list = zeros.tolist()
            health_list = [NO_DEBT_HEALTH_FACTOR] * count
            leverage_list = None
            at_risk_list = [False] * count

        wallet_cols: list[tuple[str, list[float]]] = []
        holdings = {"USDT": paths.w_usdt, "ETH": paths.w_eth, plan.staking_token: paths.w_weeth,
                    plan.supply_token: paths.a_usdt if plan.lending_usdt else paths.a_weeth,
                    plan.debt_token: paths.debt}
        for token in plan.wallet_tokens:
            wallet_cols.append((token, col(holdings[token]).tolist()))
        for token in plan.dust_tokens:
            wallet_cols.append((token, paths.dust[token][sl].tolist()))

        venues = plan.hedge_venues
        cex_cols: list[tuple[str, list[tuple[str, list[float]]]]] = []
        perp_cols: list[tuple[str, list[float], list[float]]] = []
        if cex_usdt is not None and perp_size is not None and perp_entry is not None:
            for v, venue in enumerate(venues):
                assets = [("USDT", cex_usdt[v].tolist())]
                if cex_spot is not None:
                    assets.append((plan.spot, cex_spot[v].tolist()))
                cex_cols.append((venue, assets))
                perp_cols.append((venue, perp_size[v].tolist(), perp_entry[v].tolist()))

        funding_cols = self._funding_columns(a, b)
        events = paths.events
        value_list, pnl_list, diff_list = value.tolist(), pnl.tolist(), difference.tolist()
        net_list, net_usd_list, total_list = net.tolist(), net_usd.tolist(), total_exposure.tolist()
        tracked = plan.tracked_assets
        instrument = plan.instrument
        target_ltv, max_ltv, liq = plan.target_ltv, plan.max_ltv, plan.liquidation_threshold
        hedged = plan.hedged

        for j, ts in enumerate(self._timestamps[a:b]):
            i = a + j
            at_risk = at_risk_list[j]
            alerts: dict[str, Any] = {}
            if at_risk:
                alerts["ltv_above_max"] = {"level": "critical" if ltv_list[j] >= liq else "warning",
                                           "current_ltv": ltv_list[j], "max_ltv": max_ltv}
            if hedged:
                if margin_list[j] < MARGIN_ALERT:
                    alerts["cex_margin_low"] = {"level": "warning", "current_ratio": margin_list[j],
                                                "threshold": MARGIN_ALERT}
                if delta_risk_list[j] > DELTA_RISK_THRESHOLD:
                    alerts["delta_drift"] = {"level": "warning", "delta_risk": delta_risk_list[j],
                                             "threshold": DELTA_RISK_THRESHOLD}
            ltv_risk = {"current_ltv": ltv_list[j], "target_ltv": target_ltv, "max_ltv": max_ltv,
                        "liquidation_threshold": liq}
            if leverage_list is not None:
                ltv_risk["leverage"] = leverage_list[j]
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
            step_events = events.get(i)
            yield ts, {
                "timestep": i,
                "position_monitor": {
                    "wallet": {token: values[j] for token, values in wallet_cols},
                    "cex_accounts": {venue: {asset: values[j] for asset, values in assets}
                                     for venue, assets in cex_cols},
                    "perp_positions": {venue: {instrument: {"size": sizes[j], "entry_price": entries[j]}}
                                       for venue, sizes, entries in perp_cols},
                    "tracked_assets": list(tracked),
                },
                "exposure_monitor": {
                    "total_exposure": total_list[j],
                    "net_delta": net_list[j],
                    "asset_exposures": {asset: {"delta": net_list[j], "exposure_usd": net_usd_list[j]}
                                        for asset in exposure_assets},
                },
                "risk_monitor": {
                    "risk_metrics": {
                        "ltv_risk": ltv_risk,
                        "liquidation_risk": {"at_risk": at_risk, "health_factor": health_list[j]},
                        "cex_margin_ratio": {"current_ratio": margin_list[j], "min_ratio": min_margin},
                        "delta_risk": {"delta_risk": delta_risk_list[j], "threshold": DELTA_RISK_THRESHOLD},
                    },
                    "risk_alerts": alerts,
                },
                "pnl_calculator": pnl_calculator,
                "event_logger": [] if step_events is None else [
                    {"order": k, "event_type": kind, "timestamp": ts, "details": dict(details)}
                    for k, (kind, details) in enumerate(step_events, start=1)
                ],
            }

    def _funding_columns(self, a: int, b: int) -> list[tuple[str, list[float], list[float], list[float]]]:
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
