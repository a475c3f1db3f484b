"""The reference strategies, run through the market paths once, into per-timestep holdings arrays.

A mode's strategy is read from its config (:class:`StrategyPlan`). The simulation is event driven:
the strategy decides only at *decision steps* — every timestep that crosses a full hour (hedge,
margin, releverage and gas-float checks; funding at the 8-hour boundaries; basis compounding and
the LTV soft band at 00:00 UTC) and the step after the risk monitor saw the LTV at or above ``max_ltv``. Between two
decision steps nothing but accrual happens: aToken and debt balances grow by the per-step factors
``1 + apr * dt`` and sporadic transactions burn gas, so those stretches are filled with numpy in
one go. A year at one minute takes ~8,800 Python iterations, not 525,600.

Attribution is computed afterwards, vectorised, from the holdings arrays. For each step the
change in portfolio value is split into disjoint effects, each from its economic source:

- ``delta_pnl``: the previous step's net units of ETH/BTC (spot, staked ETH at the previous
  weETH rate, minus debt, plus perp sizes) times the price change;
- ``staking_yield_oracle``: weETH held (wallet or supplied) times the change of the weETH/ETH
  rate, at the new price;
- ``supply_yield`` / ``borrow_costs``: the per-step accrual of aToken / debt balances, at the new
  prices;
- ``funding_pnl``: funding payments; ``transaction_costs``: gas and trading fees.

Every trade the strategy makes is value-neutral at the step's prices apart from its fee
(rebalances at the oracle rate, spot trades at the mark, perp resizes realise exactly the PnL they
remove from the position), and airdropped dust tokens are carried at zero value. So in exact
arithmetic the effects sum to the change of the balance-based value; what remains is
floating-point rounding, which the engine reports per timestep instead of hiding it anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from results_store.simulator.market import DEPEG_MAX, FUNDING_INTERVAL_SECONDS, ORACLE_NOISE_BOUND, Market
from schemas.errors import ComponentError
from schemas.modes import ModeConfig

__all__ = [
    "ATTRIBUTION_TYPES",
    "PortfolioPaths",
    "StrategyPlan",
    "plan_for",
    "simulate_portfolio",
]

ATTRIBUTION_TYPES = (
    "supply_yield", "staking_yield_oracle", "borrow_costs", "funding_pnl", "delta_pnl", "transaction_costs",
)

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
LTV_SOFT_BAND = 0.008            # daily (00:00 UTC): deleverage to target above target + band
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


def _a_token(asset: str) -> str:
    return "a" + asset[:1].upper() + asset[1:]


@dataclass(frozen=True)
class StrategyPlan:
    """What the engine simulates for one mode, derived from and checked against its config."""

    mode: str
    share_usd: bool
    capital: float
    spot: str                      # ETH or BTC: the asset held/hedged; "" for USDT lending
    staking: bool
    leveraged: bool
    lending_usdt: bool
    basis: bool
    hedge_venues: tuple[str, ...]
    target_ltv: float
    max_ltv: float
    liquidation_threshold: float
    staking_token: str
    supply_token: str
    debt_token: str
    wallet_tokens: tuple[str, ...]
    cex_assets: tuple[str, ...]
    instrument: str
    tracked_assets: tuple[str, ...]
    attribution_types: tuple[str, ...]
    funding_venues: tuple[str, ...]
    delta_assets: tuple[str, ...]
    dust_tokens: tuple[str, ...]
    tx_per_day: float

    @property
    def hedged(self) -> bool:
        return bool(self.hedge_venues)

    @property
    def gas_in_eth(self) -> bool:
        """On-chain ETH strategies pay gas in ETH; USDT lending pays it in USDT; basis is CEX only."""
        return self.staking

    @property
    def onchain(self) -> bool:
        return self.staking or self.lending_usdt


def _fail(mode: str, message: str) -> ComponentError:
    return ComponentError("RST-201", f"mode {mode!r}: the reference engine cannot simulate it: {message}")


def plan_for(config: ModeConfig) -> StrategyPlan:
    """Derive the simulated strategy from a mode config; RST-201 if the combination is unsupported.

    Supported: USDT lending; CEX basis (spot + short perps); ETH staking (optionally leveraged
    with a lending market) in the ETH share class; the same staking, optionally leveraged, with
    its ETH delta hedged on perps in the USDT share class.
    """
    name = config.mode
    st, rs = config.strategy, config.results_store
    share_usd = st.share_class == "USDT"
    if st.share_class not in ("USDT", "ETH"):
        raise _fail(name, f"share class {st.share_class} is not simulated (USDT or ETH)")
    staking = st.staking_token is not None
    lending = st.lending
    leveraged = lending is not None and lending.borrow_asset is not None
    hedged = bool(st.hedge_venues)
    if hedged and sorted(st.hedge_venues) != sorted(st.cex_venues):
        raise _fail(name, "hedge_venues and cex_venues must name the same venues (margin sits beside the hedge)")
    if not hedged and st.cex_venues:
        raise _fail(name, "cex_venues without hedge_venues")
    lending_usdt = lending is not None and not leveraged and lending.supply_asset == "USDT"
    if lending is not None and not leveraged and not lending_usdt:
        raise _fail(name, "unlevered lending must supply USDT")
    if leveraged:
        assert lending is not None
        if not staking or lending.supply_asset != st.staking_token or lending.borrow_asset != "WETH":
            raise _fail(name, "leverage must supply the staking token and borrow WETH")
        if not 0 < lending.target_ltv < lending.max_ltv < lending.liquidation_threshold < 1:
            raise _fail(name, "need 0 < target_ltv < max_ltv < liquidation_threshold < 1")
        # The deepest feed dip on a position at target + soft band must stay below liquidation.
        if (lending.target_ltv + LTV_SOFT_BAND) / (1 - DEPEG_MAX - ORACLE_NOISE_BOUND) >= lending.liquidation_threshold:
            raise _fail(name, "target_ltv too close to liquidation_threshold for the simulated rate dips")
    if lending_usdt and (staking or hedged):
        raise _fail(name, "USDT lending is simulated on its own")
    basis = hedged and not staking
    if staking and (st.spot_asset or "ETH") != "ETH":
        raise _fail(name, "staking needs spot_asset ETH")
    if share_usd and staking and not hedged:
        raise _fail(name, "USDT-share staking must hedge its ETH delta")
    if not share_usd and (hedged or not staking):
        raise _fail(name, "the ETH share class is simulated for (leveraged) staking only")
    if basis and st.spot_asset is None:
        raise _fail(name, "a basis trade needs spot_asset")
    if not (basis or staking or lending_usdt):
        raise _fail(name, "nothing to simulate: no lending, staking or hedge")
    spot = "" if lending_usdt else (st.spot_asset or "ETH")
    staking_token = st.staking_token or ""
    supply_token = _a_token(lending.supply_asset) if lending is not None else ""
    debt_token = f"variableDebt{lending.borrow_asset}" if leveraged and lending is not None else ""

    if lending_usdt:
        wallet = ["USDT", supply_token]
    elif basis:
        wallet = ["USDT"]
    else:
        wallet = ["ETH"] + ([supply_token, debt_token] if leveraged else [staking_token])
    cex = ["USDT", spot] if basis else (["USDT"] if hedged else [])
    missing = [t for t in wallet + cex if t not in rs.balance_sheet_assets]
    if missing:
        raise _fail(name, f"balance_sheet_assets lacks {missing}, which the strategy holds")
    required = {"transaction_costs"}
    if lending_usdt or leveraged:
        required.add("supply_yield")
    if leveraged:
        required.add("borrow_costs")
    if staking:
        required.add("staking_yield_oracle")
    if hedged:
        required |= {"funding_pnl", "delta_pnl"}
    unknown = [t for t in rs.pnl_attribution_types if t not in ATTRIBUTION_TYPES]
    if unknown:
        raise _fail(name, f"unknown pnl_attribution_types {unknown}; simulated: {list(ATTRIBUTION_TYPES)}")
    absent = sorted(required - set(rs.pnl_attribution_types))
    if absent:
        raise _fail(name, f"pnl_attribution_types lacks {absent}; without them the attribution cannot reconcile")
    if not set(rs.funding_tracking_venues) <= set(st.hedge_venues):
        raise _fail(name, "funding_tracking_venues must be hedge venues")
    if not set(rs.delta_tracking_assets) <= {spot}:
        raise _fail(name, f"delta_tracking_assets may only name the spot asset {spot!r}")
    if leveraged:
        tx_per_day = 3.0
    elif staking and hedged:
        tx_per_day = 2.0
    elif staking or lending_usdt:
        tx_per_day = 1.0
    else:
        tx_per_day = 0.0
    return StrategyPlan(
        mode=name, share_usd=share_usd, capital=float(st.initial_capital), spot=spot, staking=staking,
        leveraged=leveraged, lending_usdt=lending_usdt, basis=basis, hedge_venues=tuple(st.hedge_venues),
        target_ltv=lending.target_ltv if leveraged and lending else 0.0,
        max_ltv=lending.max_ltv if leveraged and lending else 0.0,
        liquidation_threshold=lending.liquidation_threshold if leveraged and lending else 0.0,
        staking_token=staking_token, supply_token=supply_token, debt_token=debt_token,
        wallet_tokens=tuple(t for t in rs.balance_sheet_assets if t in wallet), cex_assets=tuple(cex),
        instrument=f"{spot}USDT-PERP" if hedged else "", tracked_assets=tuple(rs.balance_sheet_assets),
        attribution_types=tuple(rs.pnl_attribution_types), funding_venues=tuple(rs.funding_tracking_venues),
        delta_assets=tuple(rs.delta_tracking_assets), dust_tokens=tuple(rs.dust_tracking_tokens),
        tx_per_day=tx_per_day,
    )


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
        # Sporadic transactions (claims, approvals, oracle pokes...) that only cost gas.
        draws = market.uniforms("gas", 3)
        p_tx = min(1.0, plan.tx_per_day * market.step_seconds / SECONDS_PER_DAY)
        occurs = draws[:, 0] < p_tx
        occurs[:1] = False
        gas = np.where(occurs, _gas_eth(draws[:, 1], draws[:, 2]), 0.0)
        if plan.lending_usdt and self.eth is not None:
            gas *= self.eth  # paid in USDT at the ETH price of the moment
        self.gas = gas
        self.gas_cum = np.cumsum(gas)
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
        p, b, t = self.p, self.b, 0
        c = p.capital
        if p.lending_usdt:
            b.w_usdt = RESERVE_SHARE * c
            b.a_usdt = c - b.w_usdt
            self.event(t, "COLLATERAL_SUPPLIED", asset="USDT", amount=b.a_usdt, token=p.supply_token)
            self.pay_gas(t, "supply")
        elif p.basis:
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
        elif not p.share_usd:
            b.w_eth = RESERVE_SHARE * c
            self.stake(t, c - b.w_eth)
            self.pay_gas(t, "stake")
        else:
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
        self.store(t)

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
        total = self.eth_units(t) * s + sum(equity)
        per_venue = MARGIN_TARGET / (1 + MARGIN_TARGET) * total / self.nv
        for v in range(self.nv):
            if per_venue - equity[v] < -b.cex_usdt[v]:
                # Unrealised perp gains cannot be withdrawn: roll the position (close and reopen at
                # the mark) so they become USDT in the account.
                self.roll_perp(t, v)
                equity[v] = b.cex_usdt[v]
        moves = [per_venue - equity[v] for v in range(self.nv)]
        usd = sum(moves)
        if abs(usd) < 1e-9 * notional:
            return False
        if usd > 0:
            qty = -self.change_staked(t, -usd / (s * (1 - SPOT_FEE)))
            fee = qty * s * SPOT_FEE
            received = qty * s * (1 - SPOT_FEE)
            if received < usd:  # the guard in change_staked capped the sale: shrink the top-ups
                topups = sum(m for m in moves if m > 0)
                scale = (received - (usd - topups)) / topups
                moves = [m * scale if m > 0 else m for m in moves]
            side = "sell"
        else:
            fee = -usd * SPOT_FEE / (1 + SPOT_FEE)
            qty = self.change_staked(t, (-usd - fee) / s)
            side = "buy"
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
        p = self.p
        self._sporadic_events()
        dust = self._dust()
        value = self._value()
        attribution = self._attribution()
        ltv = None
        if self.debt is not None and self.a_weeth is not None and self.rate is not None:
            ltv = self.debt / (self.a_weeth * self.rate)
        if self.funding_records:
            steps = np.array([t for t, _ in self.funding_records], dtype=np.int64)
            payments = np.array([pay for _, pay in self.funding_records])
            cumulative = np.cumsum(payments, axis=0)
        else:
            steps = np.zeros(0, dtype=np.int64)
            payments = cumulative = np.zeros((0, max(self.nv, 1)))
        return PortfolioPaths(
            plan=p, w_usdt=self.w_usdt, w_eth=self.w_eth, w_weeth=self.w_weeth, a_usdt=self.a_usdt,
            a_weeth=self.a_weeth, debt=self.debt, cex_usdt=self.cex_usdt, cex_spot=self.cex_spot,
            perp_size=self.perp_size, perp_entry=self.perp_entry, value=value, attribution=attribution, ltv=ltv,
            dust=dust, events=self.events, funding_steps=steps, funding_payments=payments,
            funding_cumulative=cumulative,
        )

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

    def _value(self) -> np.ndarray:
        """Balance-based portfolio value in share-class units (dust at zero)."""
        p = self.p
        value = np.zeros(self.n)
        eth_units = np.zeros(self.n)
        if self.w_eth is not None:
            eth_units += self.w_eth
        if self.rate is not None:
            staked = self.w_weeth if self.w_weeth is not None else self.a_weeth
            assert staked is not None
            eth_units += staked * self.rate
        if self.debt is not None:
            eth_units -= self.debt
        if not p.share_usd:
            return eth_units
        for cash in (self.w_usdt, self.a_usdt):
            if cash is not None:
                value += cash
        if self.cex_usdt is not None:
            value += self.cex_usdt.sum(axis=0)
        if self.eth is not None and (self.w_eth is not None or self.rate is not None):
            value += eth_units * self.eth
        if self.spot is not None and self.cex_spot is not None:
            value += self.cex_spot.sum(axis=0) * self.spot
        if self.spot is not None and self.perp_size is not None and self.perp_entry is not None:
            value += (self.perp_size * (self.spot - self.perp_entry)).sum(axis=0)
        return value

    def _attribution(self) -> dict[str, np.ndarray | None]:
        """Cumulative PnL per type from its source; see the module docstring."""
        p, n = self.p, self.n
        px = self.eth if p.share_usd and self.eth is not None else np.ones(n)
        out: dict[str, np.ndarray | None] = dict.fromkeys(p.attribution_types)

        def emit(name: str, increments: np.ndarray) -> None:
            if name in out:
                out[name] = np.cumsum(increments)

        if self.rate is not None:
            staked = self.w_weeth if self.w_weeth is not None else self.a_weeth
            assert staked is not None
            inc = np.zeros(n)
            inc[1:] = staked[:-1] * (self.rate[1:] - self.rate[:-1]) * px[1:]
            emit("staking_yield_oracle", inc)
        if self.a_weeth is not None or self.a_usdt is not None:
            inc = np.zeros(n)
            if self.a_weeth is not None and self.rate is not None:
                inc[1:] += self.a_weeth[:-1] * (self.g_supply[1:] - 1.0) * self.rate[1:] * px[1:]
            if self.a_usdt is not None:
                inc[1:] += self.a_usdt[:-1] * (self.g_usdt[1:] - 1.0)
            emit("supply_yield", inc)
        if self.debt is not None:
            inc = np.zeros(n)
            inc[1:] = -self.debt[:-1] * (self.g_borrow[1:] - 1.0) * px[1:]
            emit("borrow_costs", inc)
        if p.share_usd and p.spot:
            assert self.spot is not None
            inc = np.zeros(n)
            if self.eth is not None and (self.w_eth is not None or self.rate is not None):
                units = np.zeros(n - 1)
                if self.w_eth is not None:
                    units += self.w_eth[:-1]
                if self.rate is not None:
                    staked = self.w_weeth if self.w_weeth is not None else self.a_weeth
                    assert staked is not None
                    units += staked[:-1] * self.rate[:-1]
                if self.debt is not None:
                    units -= self.debt[:-1]
                inc[1:] += units * (self.eth[1:] - self.eth[:-1])
            spot_units = np.zeros(n - 1) if n else np.zeros(0)
            if self.cex_spot is not None:
                spot_units += self.cex_spot[:, :-1].sum(axis=0)
            if self.perp_size is not None:
                spot_units += self.perp_size[:, :-1].sum(axis=0)
            inc[1:] += spot_units * (self.spot[1:] - self.spot[:-1])
            emit("delta_pnl", inc)
        if self.funding_inc is not None:
            emit("funding_pnl", self.funding_inc)
        emit("transaction_costs", self.tc_inc)
        return out


def simulate_portfolio(plan: StrategyPlan, market: Market) -> PortfolioPaths:
    """Run the plan's strategy through the market; see the module docstring."""
    if market.n == 0:
        raise ValueError("cannot simulate an empty time range")
    sim = _Simulation(plan, market)
    sim.run()
    return sim.finish()
