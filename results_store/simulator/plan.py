"""What the reference engine simulates for a mode: its :class:`StrategyPlan`, read from and checked against the config.

:func:`plan_for` classifies the mode's strategy (USDT lending, CEX basis, ETH staking with or
without leverage, optionally delta-hedged on perps), refuses a combination the engine cannot
simulate with ComponentError RST-201, and derives the tokens, venues and result fields the
snapshots carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from results_store.simulator.market import DEPEG_MAX, ORACLE_NOISE_BOUND
from schemas.errors import ComponentError
from schemas.modes import ModeConfig, ResultsStoreConfig, StrategyConfig

__all__ = [
    "ATTRIBUTION_TYPES",
    "LTV_SOFT_BAND",
    "StrategyPlan",
    "plan_for",
]

ATTRIBUTION_TYPES = (
    "supply_yield", "staking_yield_oracle", "borrow_costs", "funding_pnl", "delta_pnl", "transaction_costs",
)

LTV_SOFT_BAND = 0.008            # daily (00:00 UTC): deleverage to target above target + band


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


@dataclass(frozen=True)
class _Kind:
    """The strategy's classification: which of the simulated building blocks it combines."""

    share_usd: bool
    staking: bool
    leveraged: bool
    lending_usdt: bool
    hedged: bool
    basis: bool


def _fail(mode: str, message: str) -> ComponentError:
    return ComponentError("RST-201", f"mode {mode!r}: the reference engine cannot simulate it: {message}")


def _a_token(asset: str) -> str:
    return "a" + asset[:1].upper() + asset[1:]


def plan_for(config: ModeConfig) -> StrategyPlan:
    """Derive the simulated strategy from a mode config; RST-201 if the combination is unsupported.

    Supported: USDT lending; CEX basis (spot + short perps); ETH staking (optionally leveraged
    with a lending market) in the ETH share class; the same staking, optionally leveraged, with
    its ETH delta hedged on perps in the USDT share class.
    """
    name = config.mode
    st, rs = config.strategy, config.results_store
    kind = _classify(name, st)
    lending = st.lending
    spot = "" if kind.lending_usdt else (st.spot_asset or "ETH")
    staking_token = st.staking_token or ""
    supply_token = _a_token(lending.supply_asset) if lending is not None else ""
    debt_token = f"variableDebt{lending.borrow_asset}" if kind.leveraged and lending is not None else ""
    wallet, cex = _holdings(kind, spot, staking_token, supply_token, debt_token)
    missing = [t for t in wallet + cex if t not in rs.balance_sheet_assets]
    if missing:
        raise _fail(name, f"balance_sheet_assets lacks {missing}, which the strategy holds")
    _check_results_store(name, kind, st, rs, spot)
    levered = lending if kind.leveraged else None
    return StrategyPlan(
        mode=name, share_usd=kind.share_usd, capital=float(st.initial_capital), spot=spot, staking=kind.staking,
        leveraged=kind.leveraged, lending_usdt=kind.lending_usdt, basis=kind.basis, hedge_venues=tuple(st.hedge_venues),
        target_ltv=levered.target_ltv if levered is not None else 0.0,
        max_ltv=levered.max_ltv if levered is not None else 0.0,
        liquidation_threshold=levered.liquidation_threshold if levered is not None else 0.0,
        staking_token=staking_token, supply_token=supply_token, debt_token=debt_token,
        wallet_tokens=tuple(t for t in rs.balance_sheet_assets if t in wallet), cex_assets=tuple(cex),
        instrument=f"{spot}USDT-PERP" if kind.hedged else "", tracked_assets=tuple(rs.balance_sheet_assets),
        attribution_types=tuple(rs.pnl_attribution_types), funding_venues=tuple(rs.funding_tracking_venues),
        delta_assets=tuple(rs.delta_tracking_assets), dust_tokens=tuple(rs.dust_tracking_tokens),
        tx_per_day=_tx_per_day(kind),
    )


def _classify(name: str, st: StrategyConfig) -> _Kind:
    """The strategy's building blocks; RST-201 for a combination the engine does not simulate."""
    share_usd = st.share_class == "USDT"
    if st.share_class not in ("USDT", "ETH"):
        raise _fail(name, f"share class {st.share_class} is not simulated (USDT or ETH)")
    staking = st.staking_token is not None
    hedged = bool(st.hedge_venues)
    if hedged and sorted(st.hedge_venues) != sorted(st.cex_venues):
        raise _fail(name, "hedge_venues and cex_venues must name the same venues (margin sits beside the hedge)")
    if not hedged and st.cex_venues:
        raise _fail(name, "cex_venues without hedge_venues")
    leveraged, lending_usdt = _check_lending(name, st, staking)
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
    return _Kind(share_usd=share_usd, staking=staking, leveraged=leveraged, lending_usdt=lending_usdt,
                 hedged=hedged, basis=basis)


def _check_lending(name: str, st: StrategyConfig, staking: bool) -> tuple[bool, bool]:
    """``(leveraged, lending_usdt)``: leverage loops the staking token against WETH; unlevered lending supplies USDT."""
    lending = st.lending
    if lending is None:
        return False, False
    leveraged = lending.borrow_asset is not None
    lending_usdt = not leveraged and lending.supply_asset == "USDT"
    if not leveraged and not lending_usdt:
        raise _fail(name, "unlevered lending must supply USDT")
    if leveraged:
        if not staking or lending.supply_asset != st.staking_token or lending.borrow_asset != "WETH":
            raise _fail(name, "leverage must supply the staking token and borrow WETH")
        if not 0 < lending.target_ltv < lending.max_ltv < lending.liquidation_threshold < 1:
            raise _fail(name, "need 0 < target_ltv < max_ltv < liquidation_threshold < 1")
        # The deepest feed dip on a position at target + soft band must stay below liquidation.
        if (lending.target_ltv + LTV_SOFT_BAND) / (1 - DEPEG_MAX - ORACLE_NOISE_BOUND) >= lending.liquidation_threshold:
            raise _fail(name, "target_ltv too close to liquidation_threshold for the simulated rate dips")
    return leveraged, lending_usdt


def _holdings(kind: _Kind, spot: str, staking_token: str, supply_token: str, debt_token: str
              ) -> tuple[list[str], list[str]]:
    """The tokens the strategy holds: ``(wallet, cex accounts)``."""
    if kind.lending_usdt:
        wallet = ["USDT", supply_token]
    elif kind.basis:
        wallet = ["USDT"]
    else:
        wallet = ["ETH"] + ([supply_token, debt_token] if kind.leveraged else [staking_token])
    cex = ["USDT", spot] if kind.basis else (["USDT"] if kind.hedged else [])
    return wallet, cex


def _check_results_store(name: str, kind: _Kind, st: StrategyConfig, rs: ResultsStoreConfig, spot: str) -> None:
    """RST-201 unless the configured attribution types reconcile and the tracked venues/assets exist."""
    required = {"transaction_costs"}
    if kind.lending_usdt or kind.leveraged:
        required.add("supply_yield")
    if kind.leveraged:
        required.add("borrow_costs")
    if kind.staking:
        required.add("staking_yield_oracle")
    if kind.hedged:
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


def _tx_per_day(kind: _Kind) -> float:
    """Mean number of sporadic gas-paying transactions a day (claims, approvals, oracle pokes)."""
    if kind.leveraged:
        return 3.0
    if kind.staking and kind.hedged:
        return 2.0
    if kind.staking or kind.lending_usdt:
        return 1.0
    return 0.0
