"""The reference strategies, run through the market paths once, into per-timestep holdings arrays.

A mode's strategy is read from its config (:mod:`~results_store.simulator.plan`). The simulation
is event driven: the strategy decides only at *decision steps* — every timestep that crosses a
full hour (hedge, margin, releverage and gas-float checks; funding at the 8-hour boundaries; basis
compounding and the LTV soft band at 00:00 UTC) and the step after the risk monitor saw the LTV
at or above ``max_ltv``. Between two decision steps nothing but accrual happens: aToken and debt
balances grow by the per-step factors ``1 + apr * dt`` and sporadic transactions burn gas, so
those stretches are filled with numpy in one go. A year at one minute takes ~8,800 Python
iterations, not 525,600.

Attribution is computed afterwards, vectorised, from the holdings arrays
(:mod:`~results_store.simulator.attribution`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from results_store.simulator.attribution import Holdings, Increments, attribute, balance_value
from results_store.simulator.market import FUNDING_INTERVAL_SECONDS, Market
from results_store.simulator.plan import LTV_SOFT_BAND, StrategyPlan

__all__ = [
    "MARGIN_MAINTENANCE",
    "Event",
    "PortfolioPaths",
    "simulate_portfolio",
]

SPOT_FEE = 0.0006                # taker fee of a CEX spot trade
PERP_FEE = 0.0004                # taker fee of a perpetual trade
PERP_LOT = {"ETH": 0.01, "BTC": 0.001}
SPOT_STEP = {"ETH": 0.0001, "BTC": 0.00001}
BASIS_SPOT_SHARE = 0.5           # of each venue's capital bought as spot in a basis trade
RESERVE_SHARE = 0.01             # of capital kept in the wallet (gas float / reserve)
GAS_TOPUP_BELOW = 0.3            # top the gas float up when it falls below this share of its size
MARGIN_TARGET = 1.0 / 3.0        # CEX equity over short notional in the market-neutral modes
MARGIN_LOW, MARGIN_HIGH = 0.15, 0.60
MARGIN_MAINTENANCE = 0.05
HEDGE_DRIFT = 0.01               # resize the perp hedge when it is off by more than this share
LTV_RELEVER_BAND = 0.015         # hourly: releverage to target below target - band
AT_RISK_CUT = 0.003              # after an at-risk report: LTV to min(current, max_ltv) - cut
COMPOUND_THRESHOLD = 0.001       # basis: reinvest funding income above this share of a venue's capital
SECONDS_PER_DAY = 86_400.0

# (mean days between airdrops, smallest amount, largest amount) per dust token
DUST_PARAMS: dict[str, tuple[float, float, float]] = {
    "EIGEN": (3.0, 1.0, 25.0),
    "ETHFI": (4.0, 2.0, 40.0),
    "KING": (7.0, 0.5, 5.0),
}
DEFAULT_DUST_PARAMS = (5.0, 1.0, 10.0)


def _gas_eth(u_price: np.ndarray | float, u_units: np.ndarray | float) -> Any:
    """Gas of one transaction in ETH: 10-50 gwei times 100k-350k gas units."""
    return (10.0 + 40.0 * u_price) * (100_000.0 + 250_000.0 * u_units) * 1e-9


def _sporadic_gas(plan: StrategyPlan, market: Market, eth: np.ndarray | None) -> np.ndarray:
    """Gas per step of the sporadic transactions (claims, approvals, oracle pokes...) that only cost gas."""
    draws = market.uniforms("gas", 3)
    p_tx = min(1.0, plan.tx_per_day * market.step_seconds / SECONDS_PER_DAY)
    occurs = draws[:, 0] < p_tx
    occurs[:1] = False
    gas: np.ndarray = np.where(occurs, _gas_eth(draws[:, 1], draws[:, 2]), 0.0)
    if plan.lending_usdt and eth is not None:
        gas *= eth  # paid in USDT at the ETH price of the moment
    return gas


Event = tuple[str, dict[str, Any]]


@dataclass
class PortfolioPaths:
    """The simulated book, one value per timestep (2-D arrays are venue x timestep).

    Holdings a mode does not have are None. ``attribution`` holds cumulative PnL per type in
    share-class units (None: structurally zero for this mode). Funding is kept sparse: the steps
    with a payment, the payments and the running totals per venue.
    """

    plan: StrategyPlan
    w_usdt: np.ndarray | None
    w_eth: np.ndarray | None
    w_weeth: np.ndarray | None
    a_usdt: np.ndarray | None
    a_weeth: np.ndarray | None
    debt: np.ndarray | None
    cex_usdt: np.ndarray | None
    cex_spot: np.ndarray | None
    perp_size: np.ndarray | None
    perp_entry: np.ndarray | None
    value: np.ndarray
    attribution: dict[str, np.ndarray | None]
    ltv: np.ndarray | None
    dust: dict[str, np.ndarray]
    events: dict[int, list[Event]]
    funding_steps: np.ndarray
    funding_payments: np.ndarray
    funding_cumulative: np.ndarray

    def nbytes(self) -> int:
        """Memory held by the per-timestep arrays."""
        arrays = [self.w_usdt, self.w_eth, self.w_weeth, self.a_usdt, self.a_weeth, self.debt, self.cex_usdt,
                  self.cex_spot, self.perp_size, self.perp_entry, self.value, self.ltv,
                  *self.attribution.values(), *self.dust.values()]
        return sum(a.nbytes for a in arrays if a is not None)


@dataclass
class _Book:
    """The strategy's holdings at the current step (Python floats: the loop touches them often)."""

    w_usdt: float = 0.0
    w_eth: float = 0.0
    w_weeth: float = 0.0
    a_usdt: float = 0.0
    a_weeth: float = 0.0
    debt: float = 0.0
    cex_usdt: list[float] = field(default_factory=list)
    cex_spot: list[float] = field(default_factory=list)
    perp_size: list[float] = field(default_factory=list)
    perp_entry: list[float] = field(default_factory=list)


class _Simulation:
    """One run of a plan through the market: the book held as Python floats, recorded into arrays step by step."""

    def __init__(self, plan: StrategyPlan, market: Market) -> None:
        self.p = plan
        self.m = market
        n = self.n = market.n
        self.nv = len(plan.hedge_venues)
        self.eth = market.eth_usd if plan.spot == "ETH" or plan.onchain else None
        self.spot = (market.btc_usd if plan.spot == "BTC" else market.eth_usd) if plan.spot else None
        self.rate = market.weeth_rate if plan.staking else None
        self.b = _Book(cex_usdt=[0.0] * self.nv, cex_spot=[0.0] * self.nv, perp_size=[0.0] * self.nv,
                       perp_entry=[0.0] * self.nv)
        self.events: dict[int, list[Event]] = {}
        self.tc_inc = np.zeros(n)
        self.funding_inc = np.zeros(n) if plan.hedged else None
        self.funding_records: list[tuple[int, list[float]]] = []

        def arr(wanted: bool, rows: int = 0) -> np.ndarray | None:
            if not wanted:
                return None
            return np.empty((rows, n)) if rows else np.empty(n)

        lev, stk = plan.leveraged, plan.staking
        self.w_usdt = arr(plan.lending_usdt or plan.basis)
        self.w_eth = arr(plan.gas_in_eth)
        self.w_weeth = arr(stk and not lev)
        self.a_usdt = arr(plan.lending_usdt)
        self.a_weeth = arr(lev)
        self.debt = arr(lev)
        self.cex_usdt = arr(plan.hedged, self.nv)
        self.cex_spot = arr(plan.basis, self.nv)
        self.perp_size = arr(plan.hedged, self.nv)
        self.perp_entry = arr(plan.hedged, self.nv)
        # (per-step growth factor, running product) of each accruing balance; ones where absent
        ones = np.ones(n)
        nothing: tuple[np.ndarray, np.ndarray] = (ones, ones)
        self.g_supply, self.idx_supply = market.growth("weeth_supply") if lev else nothing
        self.g_borrow, self.idx_borrow = market.growth("weth_borrow") if lev else nothing
        self.g_usdt, self.idx_usdt = market.growth("usdt_supply") if plan.lending_usdt else nothing
        self.gas = _sporadic_gas(plan, market, self.eth)
        self.gas_cum = np.cumsum(self.gas)
        self.action_gas = _gas_eth(market.uniforms("action_gas", 1)[:, 0], 0.8)
        self.gas_float = RESERVE_SHARE * plan.capital / (float(self.eth[0]) if plan.share_usd and self.eth is not None
                                                          and plan.gas_in_eth else 1.0)
        self.base_usdt: list[float] = []
        self.venue_capital = 0.0
        self.funding = market.funding if plan.hedged else None
        self.boundary = self.funding.boundary_index(market.epoch_ns) if self.funding else None

    # -- helpers ----------------------------------------------------------------------------------
    def event(self, t: int, kind: str, **details: Any) -> None:
        self.events.setdefault(t, []).append((kind, details))

    def px_eth(self, t: int) -> float:
        """Value of one ETH in share-class units."""
        return float(self.eth[t]) if self.p.share_usd and self.eth is not None else 1.0

    def eth_units(self, t: int) -> float:
        b = self.b
        rate = float(self.rate[t]) if self.rate is not None else 0.0
        return b.w_eth + (b.w_weeth + b.a_weeth) * rate - b.debt

    def pay_gas(self, t: int, purpose: str) -> None:
        """Gas of a strategy transaction, from the wallet's gas float."""
        if not self.p.onchain:
            return
        amount = float(self.action_gas[t])
        if self.p.gas_in_eth:
            self.b.w_eth -= amount
            self.tc_inc[t] -= amount * self.px_eth(t)
            self.event(t, "GAS_FEE_PAID", asset="ETH", amount=amount, purpose=purpose)
        else:
            usd = amount * float(self.eth[t]) if self.eth is not None else amount
            self.b.w_usdt -= usd
            self.tc_inc[t] -= usd
            self.event(t, "GAS_FEE_PAID", asset="USDT", amount=usd, purpose=purpose)

    def store(self, t: int) -> None:
        b = self.b
        for name in ("w_usdt", "w_eth", "w_weeth", "a_usdt", "a_weeth", "debt"):
            target = getattr(self, name)
            if target is not None:
                target[t] = getattr(b, name)
        for name in ("cex_usdt", "cex_spot", "perp_size", "perp_entry"):
            target = getattr(self, name)
            if target is not None:
                target[:, t] = getattr(b, name)

    # -- opening ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Step 0: put the capital to work as the strategy prescribes."""
        p = self.p
        if p.lending_usdt:
            self._open_lending(p.capital)
        elif p.basis:
            self._open_basis(p.capital)
        elif not p.share_usd:
            self._open_staking(p.capital)
        else:
            self._open_hedged_staking(p.capital)
        self.store(0)

    def _open_lending(self, c: float) -> None:
        """USDT lending: supply the capital but a wallet reserve."""
        p, b, t = self.p, self.b, 0
        b.w_usdt = RESERVE_SHARE * c
        b.a_usdt = c - b.w_usdt
        self.event(t, "COLLATERAL_SUPPLIED", asset="USDT", amount=b.a_usdt, token=p.supply_token)
        self.pay_gas(t, "supply")

    def _open_basis(self, c: float) -> None:
        """Basis: split the capital over the venues, buy spot with part of it and short it on perps."""
        p, b, t = self.p, self.b, 0
        assert self.spot is not None
        s = float(self.spot[t])
        b.w_usdt = RESERVE_SHARE * c
        self.venue_capital = (c - b.w_usdt) / self.nv
        for v, venue in enumerate(p.hedge_venues):
            step = SPOT_STEP[p.spot]
            qty = math.floor(BASIS_SPOT_SHARE * self.venue_capital / (s * (1 + SPOT_FEE)) / step) * step
            fee = qty * s * SPOT_FEE
            b.cex_usdt[v] = self.venue_capital - qty * s - fee
            b.cex_spot[v] = qty
            self.tc_inc[t] -= fee
            self.event(t, "TRADE_EXECUTED", venue=venue, instrument=f"{p.spot}USDT", side="buy", size=qty,
                       price=s, fee=fee)
        self.hedge(t, force=True)
        self.base_usdt = list(b.cex_usdt)

    def _open_staking(self, c: float) -> None:
        """ETH share class: stake the capital (looped when leveraged) but a gas reserve."""
        b, t = self.b, 0
        b.w_eth = RESERVE_SHARE * c
        self.stake(t, c - b.w_eth)
        self.pay_gas(t, "stake")

    def _open_hedged_staking(self, c: float) -> None:
        """USDT share class: buy ETH on the venues, stake it, keep margin beside the perp hedge."""
        p, b, t = self.p, self.b, 0
        assert self.eth is not None
        s = float(self.eth[t])
        exposure_usd = c / (1 + MARGIN_TARGET)
        qty = exposure_usd / (s * (1 + SPOT_FEE))
        for v, venue in enumerate(p.hedge_venues):
            fee = qty / self.nv * s * SPOT_FEE
            b.cex_usdt[v] = c / self.nv - qty / self.nv * s - fee
            self.tc_inc[t] -= fee
            self.event(t, "TRADE_EXECUTED", venue=venue, instrument="ETHUSDT", side="buy", size=qty / self.nv,
                       price=s, fee=fee)
        b.w_eth = self.gas_float
        self.stake(t, qty - b.w_eth)
        self.pay_gas(t, "stake")
        self.hedge(t, force=True)

    def stake(self, t: int, eth: float) -> None:
        """Stake ETH into weETH and, when leveraged, loop it to the target LTV in one transaction."""
        p, b = self.p, self.b
        assert self.rate is not None
        rate = float(self.rate[t])
        if p.leveraged:
            collateral = eth / (1 - p.target_ltv)
            b.a_weeth = collateral / rate
            b.debt = p.target_ltv * collateral
            self.event(t, "STAKE_DEPOSIT", asset="ETH", amount=collateral, received=b.a_weeth,
                       token=p.staking_token, rate=rate)
            self.event(t, "COLLATERAL_SUPPLIED", asset=p.staking_token, amount=b.a_weeth, token=p.supply_token)
            self.event(t, "LOAN_BORROWED", asset="WETH", amount=b.debt, token=p.debt_token)
        else:
            b.w_weeth = eth / rate
            self.event(t, "STAKE_DEPOSIT", asset="ETH", amount=eth, received=b.w_weeth, token=p.staking_token,
                       rate=rate)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        n, p = self.n, self.p
        self.open()
        m = self.m
        hourly = m.crossings(3_600)
        funding_due = m.crossings(FUNDING_INTERVAL_SECONDS) if p.hedged else np.zeros(n, dtype=bool)
        daily = m.crossings(86_400) if p.basis or p.leveraged else np.zeros(n, dtype=bool)
        # 8-hour and day boundaries are hour boundaries, so the hourly steps are all scheduled ones.
        scheduled = np.flatnonzero(hourly).tolist()
        scheduled.append(n)
        k, t_prev = 0, 0
        while True:
            t_sched = scheduled[k]
            t_next = self.fill(t_prev, t_sched)
            if t_next >= n:
                break
            if t_next == t_sched:
                k += 1
            self.advance(t_next)
            self.act(t_next, bool(hourly[t_next]), bool(funding_due[t_next]), bool(daily[t_next]))
            self.store(t_next)
            t_prev = t_next

    def fill(self, t_prev: int, t_sched: int) -> int:
        """Fill the steps after ``t_prev`` up to the next decision step and return that step.

        Decision step: ``t_sched``, or earlier the step after the LTV first reaches max_ltv.
        """
        b = self.b
        sl = slice(t_prev + 1, t_sched)
        if t_sched > t_prev + 1:
            for name, idx in (("a_weeth", self.idx_supply), ("debt", self.idx_borrow), ("a_usdt", self.idx_usdt)):
                target = getattr(self, name)
                if target is not None:
                    target[sl] = getattr(b, name) * (idx[sl] / idx[t_prev])
            gas_account = "w_eth" if self.p.gas_in_eth else "w_usdt"
            for name in ("w_usdt", "w_eth", "w_weeth"):
                target = getattr(self, name)
                if target is None:
                    continue
                if name == gas_account:
                    target[sl] = getattr(b, name) - (self.gas_cum[sl] - self.gas_cum[t_prev])
                else:
                    target[sl] = getattr(b, name)
            for name in ("cex_usdt", "cex_spot", "perp_size", "perp_entry"):
                target = getattr(self, name)
                if target is not None:
                    target[:, sl] = np.asarray(getattr(b, name))[:, None]
        if self.p.leveraged and self.a_weeth is not None and self.debt is not None and self.rate is not None:
            seg = slice(t_prev, min(t_sched, self.n))
            ltv = self.debt[seg] / (self.a_weeth[seg] * self.rate[seg])
            hits = np.flatnonzero(ltv >= self.p.max_ltv)
            if hits.size:
                return min(t_prev + int(hits[0]) + 1, t_sched)
        return t_sched

    def advance(self, t: int) -> None:
        """The book at step t before the strategy acts: one step of accrual and sporadic gas."""
        b = self.b
        if self.a_weeth is not None and self.debt is not None:
            b.a_weeth = float(self.a_weeth[t - 1]) * float(self.g_supply[t])
            b.debt = float(self.debt[t - 1]) * float(self.g_borrow[t])
        if self.a_usdt is not None:
            b.a_usdt = float(self.a_usdt[t - 1]) * float(self.g_usdt[t])
        if self.p.gas_in_eth and self.w_eth is not None:
            b.w_eth = float(self.w_eth[t - 1]) - float(self.gas[t])
        elif self.w_usdt is not None:
            b.w_usdt = float(self.w_usdt[t - 1]) - float(self.gas[t])

    def act(self, t: int, hourly: bool, funding_due: bool, daily: bool) -> None:
        p = self.p
        if funding_due:
            self.pay_funding(t)
        if p.leveraged:
            assert self.a_weeth is not None and self.debt is not None and self.rate is not None
            # The strategy acts on what the risk monitor reported at the previous step.
            seen = float(self.debt[t - 1]) / (float(self.a_weeth[t - 1]) * float(self.rate[t - 1]))
            if seen >= p.max_ltv:
                # Cut just below the limit, not back to target: deleveraging sells weETH at the
                # dipped rate, and at ~9x leverage every point of LTV sold costs real equity.
                current = self.b.debt / (self.b.a_weeth * float(self.rate[t]))
                self.deleverage(t, "ltv_above_max", seen, min(current, p.max_ltv) - AT_RISK_CUT)
            elif daily and seen > p.target_ltv + LTV_SOFT_BAND:
                self.deleverage(t, "ltv_above_band", seen, p.target_ltv)
            elif hourly and seen < p.target_ltv - LTV_RELEVER_BAND:
                self.releverage(t, seen)
        if not hourly:
            return
        force_hedge = False
        if p.basis and daily:
            force_hedge = self.compound(t)
        if p.hedged and p.staking:
            force_hedge = self.rebalance_margin(t) or force_hedge
        self.top_up_gas(t)
        if p.hedged:
            self.hedge(t, force=force_hedge)

    # -- actions ----------------------------------------------------------------------------------
    def pay_funding(self, t: int) -> None:
        """Funding for every 8-hour boundary the step crossed; a short receives a positive rate."""
        assert self.funding is not None and self.boundary is not None and self.spot is not None
        b, p = self.b, self.p
        now, before = int(self.boundary[t]), int(self.boundary[t - 1])
        summed = self.funding.cumulative[now + 1] - self.funding.cumulative[before + 1]
        latest = self.funding.rates[now]
        s = float(self.spot[t])
        payments = []
        for v, venue in enumerate(p.hedge_venues):
            size = b.perp_size[v]
            pay = -size * s * float(summed[v])
            b.cex_usdt[v] += pay
            payments.append(pay)
            self.event(t, "FUNDING_PAYMENT", venue=venue, instrument=p.instrument, funding_rate=float(latest[v]),
                       intervals=now - before, position_size=size, mark_price=s, amount=pay)
        assert self.funding_inc is not None
        self.funding_inc[t] += sum(payments)
        self.funding_records.append((t, payments))

    def deleverage(self, t: int, reason: str, seen: float, to_ltv: float) -> None:
        """Withdraw weETH, redeem it at the oracle rate and repay WETH until the LTV is ``to_ltv``."""
        b = self.b
        assert self.rate is not None
        rate = float(self.rate[t])
        collateral = b.a_weeth * rate
        before = b.debt / collateral
        if before <= to_ltv:
            return
        repay = (b.debt - to_ltv * collateral) / (1 - to_ltv)
        b.a_weeth -= repay / rate
        b.debt -= repay
        self.event(t, "REBALANCE", action="deleverage", reason=reason, ltv_seen=seen, ltv_before=before,
                   ltv_after=b.debt / (b.a_weeth * rate), withdrawn=repay / rate, repaid=repay)
        self.pay_gas(t, "deleverage")

    def releverage(self, t: int, seen: float) -> None:
        """Borrow WETH, stake it and supply the weETH until the LTV is back at target."""
        b, p = self.b, self.p
        assert self.rate is not None
        rate = float(self.rate[t])
        collateral = b.a_weeth * rate
        before = b.debt / collateral
        borrow = (p.target_ltv * collateral - b.debt) / (1 - p.target_ltv)
        if borrow <= 0:
            return
        b.debt += borrow
        b.a_weeth += borrow / rate
        self.event(t, "REBALANCE", action="releverage", reason="ltv_below_band", ltv_seen=seen, ltv_before=before,
                   ltv_after=b.debt / (b.a_weeth * rate))
        self.event(t, "LOAN_BORROWED", asset="WETH", amount=borrow, token=p.debt_token)
        self.event(t, "STAKE_DEPOSIT", asset="ETH", amount=borrow, received=borrow / rate, token=p.staking_token,
                   rate=rate)
        self.event(t, "COLLATERAL_SUPPLIED", asset=p.staking_token, amount=borrow / rate, token=p.supply_token)
        self.pay_gas(t, "releverage")

    def change_staked(self, t: int, eth: float) -> float:
        """Add (eth > 0) or free (eth < 0) staked ETH equity at the oracle rate, keeping the LTV.

        Frees at most half the equity (a guard; the margin band never asks for that much) and
        returns the ETH actually moved.
        """
        b = self.b
        assert self.rate is not None
        rate = float(self.rate[t])
        if self.p.leveraged:
            collateral = b.a_weeth * rate
            ltv = b.debt / collateral
            eth = max(eth, -0.5 * (collateral - b.debt))
            change = eth / (1 - ltv)
            b.a_weeth += change / rate
            b.debt += ltv * change
        else:
            eth = max(eth, -0.5 * b.w_weeth * rate)
            b.w_weeth += eth / rate
        return eth

    def rebalance_margin(self, t: int) -> bool:
        """Keep CEX equity between 15 % and 60 % of the short notional by moving ETH to or from staking."""
        b, p = self.b, self.p
        assert self.eth is not None
        s = float(self.eth[t])
        equity = [b.cex_usdt[v] + b.perp_size[v] * (s - b.perp_entry[v]) for v in range(self.nv)]
        notional = -sum(b.perp_size) * s
        if notional <= 0:
            return False
        ratio = sum(equity) / notional
        if MARGIN_LOW <= ratio <= MARGIN_HIGH:
            return False
        moves = self._margin_moves(t, s, equity)
        usd = sum(moves)
        if abs(usd) < 1e-9 * notional:
            return False
        qty, fee, side, moves = self._trade_staked_for_margin(t, s, usd, moves)
        for v in range(self.nv):
            b.cex_usdt[v] += moves[v]
        self.tc_inc[t] -= fee
        self.event(t, "REBALANCE", action="margin_topup" if side == "sell" else "margin_release",
                   margin_ratio=ratio, usd=sum(moves),
                   **{f"transfer_{venue}": move for venue, move in zip(p.hedge_venues, moves, strict=True)})
        self.event(t, "TRADE_EXECUTED", venue=p.hedge_venues[0], instrument="ETHUSDT", side=side, size=qty, price=s,
                   fee=fee)
        self.pay_gas(t, "unstake" if side == "sell" else "stake")
        return True

    def _margin_moves(self, t: int, s: float, equity: list[float]) -> list[float]:
        """USDT into (> 0) or out of (< 0) each venue's account that brings its equity to the target margin."""
        b = self.b
        total = self.eth_units(t) * s + sum(equity)
        per_venue = MARGIN_TARGET / (1 + MARGIN_TARGET) * total / self.nv
        for v in range(self.nv):
            if per_venue - equity[v] < -b.cex_usdt[v]:
                # Unrealised perp gains cannot be withdrawn: roll the position (close and reopen at
                # the mark) so they become USDT in the account.
                self.roll_perp(t, v)
                equity[v] = b.cex_usdt[v]
        return [per_venue - equity[v] for v in range(self.nv)]

    def _trade_staked_for_margin(self, t: int, s: float, usd: float, moves: list[float]
                                 ) -> tuple[float, float, str, list[float]]:
        """Sell staked ETH for a net top-up of ``usd`` (> 0), or buy and stake ETH with released margin.

        Returns ``(quantity, fee, side, moves)``; the top-ups shrink when the sale was capped.
        """
        if usd > 0:
            qty = -self.change_staked(t, -usd / (s * (1 - SPOT_FEE)))
            fee = qty * s * SPOT_FEE
            received = qty * s * (1 - SPOT_FEE)
            if received < usd:  # the guard in change_staked capped the sale: shrink the top-ups
                topups = sum(m for m in moves if m > 0)
                scale = (received - (usd - topups)) / topups
                moves = [m * scale if m > 0 else m for m in moves]
            return qty, fee, "sell", moves
        fee = -usd * SPOT_FEE / (1 + SPOT_FEE)
        qty = self.change_staked(t, (-usd - fee) / s)
        return qty, fee, "buy", moves

    def roll_perp(self, t: int, v: int) -> None:
        """Close venue v's perp and reopen it at the mark: its PnL is realised, its entry is the mark."""
        b, p = self.b, self.p
        assert self.spot is not None
        s = float(self.spot[t])
        size = b.perp_size[v]
        realised = size * (s - b.perp_entry[v])
        fee = 2.0 * abs(size) * s * PERP_FEE
        b.cex_usdt[v] += realised - fee
        b.perp_entry[v] = s
        self.tc_inc[t] -= fee
        self.event(t, "TRADE_EXECUTED", venue=p.hedge_venues[v], instrument=p.instrument, side="roll",
                   size=abs(size), price=s, fee=fee, realised_pnl=realised, position_size=size)

    def top_up_gas(self, t: int) -> None:
        """Refill the wallet's gas float from the position once it runs low (a value-neutral move)."""
        b, p = self.b, self.p
        if p.gas_in_eth:
            if b.w_eth >= GAS_TOPUP_BELOW * self.gas_float:
                return
            moved = -self.change_staked(t, -(self.gas_float - b.w_eth))
            b.w_eth += moved
            self.event(t, "REBALANCE", action="gas_topup", asset="ETH", amount=moved)
        elif p.lending_usdt:
            if b.w_usdt >= GAS_TOPUP_BELOW * self.gas_float:
                return
            moved = self.gas_float - b.w_usdt
            b.a_usdt -= moved
            b.w_usdt += moved
            self.event(t, "REBALANCE", action="gas_topup", asset="USDT", amount=moved)
        else:
            return
        self.pay_gas(t, "gas_topup")

    def compound(self, t: int) -> bool:
        """Basis: reinvest half of each venue's funding income (above a threshold) in spot."""
        b, p = self.b, self.p
        assert self.spot is not None
        s = float(self.spot[t])
        step = SPOT_STEP[p.spot]
        bought = False
        for v, venue in enumerate(p.hedge_venues):
            excess = b.cex_usdt[v] - self.base_usdt[v]
            if excess <= COMPOUND_THRESHOLD * self.venue_capital:
                continue
            qty = math.floor(0.5 * excess / (s * (1 + SPOT_FEE)) / step) * step
            if qty <= 0:
                continue
            fee = qty * s * SPOT_FEE
            b.cex_usdt[v] -= qty * s + fee
            b.cex_spot[v] += qty
            self.tc_inc[t] -= fee
            self.event(t, "TRADE_EXECUTED", venue=venue, instrument=f"{p.spot}USDT", side="buy", size=qty, price=s,
                       fee=fee, purpose="compound_funding")
            bought = True
        return bought

    def hedge(self, t: int, *, force: bool) -> None:
        """Resize the perp shorts to the spot exposure when it drifted (or after a trade that moved it)."""
        b, p = self.b, self.p
        assert self.spot is not None
        s = float(self.spot[t])
        targets = list(b.cex_spot) if p.basis else [self.eth_units(t) / self.nv] * self.nv
        target, current = sum(targets), -sum(b.perp_size)
        if not force and abs(current - target) <= HEDGE_DRIFT * target:
            return
        lot = PERP_LOT[p.spot]
        for v, venue in enumerate(p.hedge_venues):
            old = b.perp_size[v]
            new = -round(targets[v] / lot) * lot
            change = new - old
            if abs(change) < 0.5 * lot:
                continue
            realised = 0.0
            if abs(new) > abs(old):
                # Adding to the short: the entry becomes the size-weighted average, nothing is realised.
                b.perp_entry[v] = (old * b.perp_entry[v] + change * s) / new
            else:
                realised = -change * (s - b.perp_entry[v])
            fee = abs(change) * s * PERP_FEE
            b.perp_size[v] = new
            b.cex_usdt[v] += realised - fee
            self.tc_inc[t] -= fee
            self.event(t, "TRADE_EXECUTED", venue=venue, instrument=p.instrument, side="sell" if change < 0 else "buy",
                       size=abs(change), price=s, fee=fee, realised_pnl=realised, position_size=new)

    # -- after the loop ---------------------------------------------------------------------------
    def finish(self) -> PortfolioPaths:
        """The book as arrays, with its events, value, attribution, LTV, dust and funding."""
        p = self.p
        self._sporadic_events()
        dust = self._dust()
        holdings = self.holdings()
        value = balance_value(holdings)
        attribution = attribute(holdings, Increments(g_supply=self.g_supply, g_borrow=self.g_borrow, g_usdt=self.g_usdt,
                                                     funding=self.funding_inc, transaction_costs=self.tc_inc))
        ltv = None
        if self.debt is not None and self.a_weeth is not None and self.rate is not None:
            ltv = self.debt / (self.a_weeth * self.rate)
        steps, payments, cumulative = self._funding_arrays()
        return PortfolioPaths(
            plan=p, w_usdt=self.w_usdt, w_eth=self.w_eth, w_weeth=self.w_weeth, a_usdt=self.a_usdt,
            a_weeth=self.a_weeth, debt=self.debt, cex_usdt=self.cex_usdt, cex_spot=self.cex_spot,
            perp_size=self.perp_size, perp_entry=self.perp_entry, value=value, attribution=attribution, ltv=ltv,
            dust=dust, events=self.events, funding_steps=steps, funding_payments=payments,
            funding_cumulative=cumulative,
        )

    def holdings(self) -> Holdings:
        """The holdings arrays and the prices they are valued at."""
        return Holdings(plan=self.p, n=self.n, eth=self.eth, spot=self.spot, rate=self.rate, w_usdt=self.w_usdt,
                        w_eth=self.w_eth, w_weeth=self.w_weeth, a_usdt=self.a_usdt, a_weeth=self.a_weeth, debt=self.debt,
                        cex_usdt=self.cex_usdt, cex_spot=self.cex_spot, perp_size=self.perp_size,
                        perp_entry=self.perp_entry)

    def _funding_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The steps with a funding payment, the payments (step x venue) and their running totals."""
        if self.funding_records:
            steps = np.array([t for t, _ in self.funding_records], dtype=np.int64)
            payments = np.array([pay for _, pay in self.funding_records])
            cumulative = np.cumsum(payments, axis=0)
        else:
            steps = np.zeros(0, dtype=np.int64)
            payments = cumulative = np.zeros((0, max(self.nv, 1)))
        return steps, payments, cumulative

    def _sporadic_events(self) -> None:
        """Gas of the sporadic transactions: first event of its step (it happened before any decision)."""
        asset = "ETH" if self.p.gas_in_eth else "USDT"
        for t in np.flatnonzero(self.gas).tolist():
            self.events.setdefault(t, []).insert(0, ("GAS_FEE_PAID", {"asset": asset, "amount": float(self.gas[t]),
                                                                       "purpose": "transaction"}))
        # The sporadic gas is a transaction cost of its step, in share-class units.
        if self.p.gas_in_eth and self.p.share_usd and self.eth is not None:
            self.tc_inc -= self.gas * self.eth
        else:
            self.tc_inc -= self.gas

    def _dust(self) -> dict[str, np.ndarray]:
        """Airdrops of the dust tokens, last event(s) of their step; balances only ever grow."""
        out: dict[str, np.ndarray] = {}
        for token in self.p.dust_tokens:
            days, low, high = DUST_PARAMS.get(token, DEFAULT_DUST_PARAMS)
            draws = self.m.uniforms(f"dust:{token}", 2)
            occurs = draws[:, 0] < min(1.0, self.m.step_seconds / (days * SECONDS_PER_DAY))
            occurs[:1] = False
            amounts = np.where(occurs, np.round(low + (high - low) * draws[:, 1], 6), 0.0)
            out[token] = np.cumsum(amounts)
            for t in np.flatnonzero(occurs).tolist():
                self.event(t, "DUST_AIRDROP", asset=token, amount=float(amounts[t]))
        return out


def simulate_portfolio(plan: StrategyPlan, market: Market) -> PortfolioPaths:
    """Run the plan's strategy through the market; see the module docstring."""
    if market.n == 0:
        raise ValueError("cannot simulate an empty time range")
    sim = _Simulation(plan, market)
    sim.run()
    return sim.finish()
