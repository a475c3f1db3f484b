"""PnL attribution and balance-based value of a simulated book, computed vectorised from its holdings arrays.

For each step the change in portfolio value is split into disjoint effects, each from its
economic source:

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
arithmetic the effects sum to the change of the balance-based value (:func:`balance_value`);
what remains is floating-point rounding, which the engine reports per timestep instead of hiding
it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from results_store.simulator.plan import StrategyPlan

__all__ = ["Holdings", "Increments", "attribute", "balance_value"]


@dataclass(frozen=True)
class Holdings:
    """The book's holdings and the prices they are valued at, one value per timestep (2-D: venue x timestep).

    None: the mode does not hold it (or does not need that price).
    """

    plan: StrategyPlan
    n: int                           # timesteps
    eth: np.ndarray | None           # ETH/USD
    spot: np.ndarray | None          # the spot asset (ETH or BTC) in USD
    rate: np.ndarray | None          # weETH/ETH
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

    def staked(self) -> np.ndarray:
        """weETH held, in the wallet or supplied as collateral."""
        staked = self.w_weeth if self.w_weeth is not None else self.a_weeth
        assert staked is not None
        return staked


@dataclass(frozen=True)
class Increments:
    """Per-step growth factors of the accruing balances (ones where absent) and the per-step flows."""

    g_supply: np.ndarray             # aWeETH
    g_borrow: np.ndarray             # WETH debt
    g_usdt: np.ndarray               # aUSDT
    funding: np.ndarray | None       # funding received, share-class units; None without a hedge
    transaction_costs: np.ndarray    # gas and fees (negative), share-class units


def balance_value(h: Holdings) -> np.ndarray:
    """Balance-based portfolio value in share-class units (dust at zero)."""
    value = np.zeros(h.n)
    eth_units = np.zeros(h.n)
    if h.w_eth is not None:
        eth_units += h.w_eth
    if h.rate is not None:
        eth_units += h.staked() * h.rate
    if h.debt is not None:
        eth_units -= h.debt
    if not h.plan.share_usd:
        return eth_units
    for cash in (h.w_usdt, h.a_usdt):
        if cash is not None:
            value += cash
    if h.cex_usdt is not None:
        value += h.cex_usdt.sum(axis=0)
    if h.eth is not None and (h.w_eth is not None or h.rate is not None):
        value += eth_units * h.eth
    if h.spot is not None and h.cex_spot is not None:
        value += h.cex_spot.sum(axis=0) * h.spot
    if h.spot is not None and h.perp_size is not None and h.perp_entry is not None:
        value += (h.perp_size * (h.spot - h.perp_entry)).sum(axis=0)
    return value


def attribute(h: Holdings, inc: Increments) -> dict[str, np.ndarray | None]:
    """Cumulative PnL per configured type, in the plan's order; None where the mode has none of it."""
    p, n = h.plan, h.n
    px = h.eth if p.share_usd and h.eth is not None else np.ones(n)
    increments: dict[str, np.ndarray] = {}
    if h.rate is not None:
        increments["staking_yield_oracle"] = _staking_yield(h, h.rate, px)
    if h.a_weeth is not None or h.a_usdt is not None:
        increments["supply_yield"] = _supply_yield(h, inc, px)
    if h.debt is not None:
        increments["borrow_costs"] = _borrow_costs(h.debt, inc, px)
    if p.share_usd and p.spot:
        increments["delta_pnl"] = _delta_pnl(h)
    if inc.funding is not None:
        increments["funding_pnl"] = inc.funding
    increments["transaction_costs"] = inc.transaction_costs
    out: dict[str, np.ndarray | None] = dict.fromkeys(p.attribution_types)
    for name in out:
        if name in increments:
            out[name] = np.cumsum(increments[name])
    return out


def _staking_yield(h: Holdings, rate: np.ndarray, px: np.ndarray) -> np.ndarray:
    """weETH held times the change of the weETH/ETH rate, at the new price."""
    inc = np.zeros(h.n)
    inc[1:] = h.staked()[:-1] * (rate[1:] - rate[:-1]) * px[1:]
    return inc


def _supply_yield(h: Holdings, inc: Increments, px: np.ndarray) -> np.ndarray:
    """The per-step accrual of the supplied (aToken) balances, at the new prices."""
    out = np.zeros(h.n)
    if h.a_weeth is not None and h.rate is not None:
        out[1:] += h.a_weeth[:-1] * (inc.g_supply[1:] - 1.0) * h.rate[1:] * px[1:]
    if h.a_usdt is not None:
        out[1:] += h.a_usdt[:-1] * (inc.g_usdt[1:] - 1.0)
    return out


def _borrow_costs(debt: np.ndarray, inc: Increments, px: np.ndarray) -> np.ndarray:
    """The per-step accrual of the debt, at the new price (negative)."""
    out = np.zeros(len(debt))
    out[1:] = -debt[:-1] * (inc.g_borrow[1:] - 1.0) * px[1:]
    return out


def _delta_pnl(h: Holdings) -> np.ndarray:
    """The previous step's net units of ETH and of the spot asset times their price changes (USD share class)."""
    n = h.n
    assert h.spot is not None
    inc = np.zeros(n)
    if h.eth is not None and (h.w_eth is not None or h.rate is not None):
        units = np.zeros(n - 1)
        if h.w_eth is not None:
            units += h.w_eth[:-1]
        if h.rate is not None:
            units += h.staked()[:-1] * h.rate[:-1]
        if h.debt is not None:
            units -= h.debt[:-1]
        inc[1:] += units * (h.eth[1:] - h.eth[:-1])
    spot_units = np.zeros(n - 1) if n else np.zeros(0)
    if h.cex_spot is not None:
        spot_units += h.cex_spot[:, :-1].sum(axis=0)
    if h.perp_size is not None:
        spot_units += h.perp_size[:, :-1].sum(axis=0)
    inc[1:] += spot_units * (h.spot[1:] - h.spot[:-1])
    return inc
