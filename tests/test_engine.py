"""The reference engine, as a specification.

It yields one snapshot per timestep for any of the seven modes; the same seed always gives the same
snapshots, from any starting timestep; its PnL attribution reconciles with the balance-based PnL
at every timestep; its content follows the mode's configuration and the result tables' rules;
and its JSON Lines files, live source and ``simulate`` command carry exactly that data.
"""

from __future__ import annotations

import functools
import itertools
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from results_store.cli.main import app
from results_store.flatten import SnapshotItem, flatten_batch
from results_store.simulator.jsonl import read_jsonl, write_jsonl
from results_store.simulator.live_source import ReferenceLiveSource
from results_store.simulator.reference import NO_DEBT_HEALTH_FACTOR, RECONCILIATION_TOLERANCE, ReferenceEngine
from results_store.validate import validate_table
from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES, ModeConfig, load_mode
from schemas.result_types import ResultType
from schemas.snapshot import TimestepSnapshot

Snapshots = list[tuple[pd.Timestamp, dict[str, Any]]]
LEVERAGED = ("eth_leveraged", "usdt_market_neutral")
FUNDING_MODES = tuple(m for m in MODE_NAMES if load_mode(m).results_store.funding_tracking_venues)
DUST_MODES = tuple(m for m in MODE_NAMES if load_mode(m).results_store.dust_tracking_tokens)


def engine_for(mode: str, end: str = "2024-01-02", freq: str = "1min", seed: int = 0,
               start: str = "2024-01-01") -> ReferenceEngine:
    return ReferenceEngine(load_mode(mode), start, end, freq, seed=seed)


@functools.cache
def run(mode: str, end: str = "2024-01-02", freq: str = "1min", seed: int = 0) -> Snapshots:
    """All snapshots of a run, computed once per test session (tests must not change them)."""
    return list(engine_for(mode, end, freq, seed).iter_snapshots())


def floats_in(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return [value] if isinstance(value, float) else []


def value_from_balances(snap: dict[str, Any], config: ModeConfig, eth: float, btc: float, rate: float) -> float:
    """Total value recomputed from the snapshot's balances and the market prices (dust at zero)."""
    wallet = snap["position_monitor"]["wallet"]
    eth_units = (wallet.get("ETH", 0.0) + (wallet.get("weETH", 0.0) + wallet.get("aWeETH", 0.0)) * rate
                 - wallet.get("variableDebtWETH", 0.0))
    if config.strategy.share_class == "ETH":
        return eth_units
    spot = btc if config.strategy.spot_asset == "BTC" else eth
    usd = wallet.get("USDT", 0.0) + wallet.get("aUSDT", 0.0) + eth_units * eth
    for balances in snap["position_monitor"]["cex_accounts"].values():
        usd += balances.get("USDT", 0.0) + (balances.get("BTC", 0.0) + balances.get("ETH", 0.0)) * spot
    for positions in snap["position_monitor"]["perp_positions"].values():
        for position in positions.values():
            usd += position["size"] * (spot - position["entry_price"])
    return usd


# -- time grid, determinism ----------------------------------------------------------------------

def test_one_day_at_one_minute_is_1440_utc_timesteps_numbered_from_zero() -> None:
    engine = engine_for("btc_basis")
    snaps = run("btc_basis")
    assert len(engine) == len(snaps) == 1440
    assert str(engine.timestamps.tz) == "UTC"
    assert engine.timestamps[0] == pd.Timestamp("2024-01-01 00:00", tz="UTC")
    assert engine.timestamps[-1] == pd.Timestamp("2024-01-01 23:59", tz="UTC")
    assert [s["timestep"] for _, s in snaps] == list(range(1440))
    assert [ts for ts, _ in snaps] == list(engine.timestamps)


@pytest.mark.parametrize(("freq", "steps"), [("5min", 288), ("15min", 96), ("1h", 24), ("4h", 6), ("1D", 1), ("1d", 1)])
def test_every_supported_frequency_gives_its_number_of_timesteps(freq: str, steps: int) -> None:
    snaps = list(engine_for("usdt_market_neutral", freq=freq).iter_snapshots())
    assert len(snaps) == steps
    TimestepSnapshot.model_validate(snaps[-1][1])


@pytest.mark.parametrize("freq", ["30s", "2D", "1M", "nonsense"])
def test_frequencies_outside_one_minute_to_one_day_are_refused(freq: str) -> None:
    with pytest.raises(ValueError, match="freq"):
        engine_for("pure_lending", freq=freq)


def test_an_empty_or_reversed_range_and_a_negative_seed_are_refused() -> None:
    with pytest.raises(ValueError, match="after start"):
        engine_for("pure_lending", start="2024-01-02", end="2024-01-02")
    with pytest.raises(ValueError, match="seed"):
        engine_for("pure_lending", seed=-1)


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_the_same_seed_gives_identical_snapshots_and_another_seed_different_ones(mode: str) -> None:
    first = list(engine_for(mode, seed=7).iter_snapshots(0, 600))
    again = list(engine_for(mode, seed=7).iter_snapshots(0, 600))
    other = list(engine_for(mode, seed=8).iter_snapshots(0, 600))
    assert first == again
    assert [s["pnl_calculator"] for _, s in first] != [s["pnl_calculator"] for _, s in other]


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_starting_at_any_timestep_yields_exactly_what_the_full_run_yields(mode: str) -> None:
    # 2,880 steps: the starts straddle the engine's internal chunks of 2,048 timesteps.
    full = run(mode, "2024-01-11", "5min")
    for k in (1, 777, 2047, 2048, 2049, 2879):
        assert list(engine_for(mode, "2024-01-11", "5min").iter_snapshots(k, k + 7)) == full[k:k + 7], k
    assert list(engine_for(mode, "2024-01-11", "5min").iter_snapshots(2870)) == full[2870:]


def test_market_paths_do_not_depend_on_how_far_ahead_they_are_simulated() -> None:
    short = engine_for("usdt_market_neutral", "2024-03-01", "1h").market
    long = engine_for("usdt_market_neutral", "2025-01-01", "1h").market
    n = short.n
    for name in ("eth_usd", "btc_usd", "weeth_rate"):
        assert np.array_equal(getattr(short, name), getattr(long, name)[:n]), name
    for name in ("usdt_supply", "weeth_supply", "weth_borrow"):
        assert np.array_equal(short.apr(name), long.apr(name)[:n]), name
    assert np.array_equal(short.funding.rates, long.funding.rates[:len(short.funding.rates)])


@pytest.mark.parametrize("mode", [*LEVERAGED, "btc_basis"])
def test_simulating_further_ahead_does_not_change_the_past(mode: str) -> None:
    assert list(engine_for(mode, "2024-01-08").iter_snapshots(0, 1440)) == run(mode)
    two_months = list(engine_for(mode, "2024-03-01", "1h").iter_snapshots())
    assert two_months == run(mode, "2025-01-01", "1h")[:len(two_months)]
    one_step = list(engine_for(mode, "2024-01-01 01:00", "1h").iter_snapshots())
    assert one_step == two_months[:1]


# -- reconciliation ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODE_NAMES)
@pytest.mark.parametrize(("end", "freq"), [("2024-01-02", "1min"), ("2024-01-31", "1h")])
def test_attribution_reconciles_with_the_balance_based_pnl_at_every_timestep(mode: str, end: str, freq: str) -> None:
    config = load_mode(mode)
    capital = config.strategy.initial_capital
    tolerance = RECONCILIATION_TOLERANCE * capital
    configured = config.results_store.pnl_attribution_types
    snaps = run(mode, end, freq)
    for _, snap in snaps:
        pnl = snap["pnl_calculator"]
        assert list(pnl["attribution"]) == configured
        balance = pnl["balance_based"]
        assert balance["pnl_cumulative"] == pytest.approx(balance["total_value"] - capital, abs=1e-9 * capital)
        difference = sum(pnl["attribution"].values()) - balance["pnl_cumulative"]
        assert abs(difference) <= tolerance, (snap["timestep"], difference)
        assert pnl["reconciliation"]["difference"] == pytest.approx(difference, abs=1e-9 * capital)
        assert pnl["reconciliation"]["tolerance"] == tolerance
        assert pnl["reconciliation"]["passed"] is True
    # Every configured source really contributes: nothing reconciles by being left at zero.
    final = snaps[-1][1]["pnl_calculator"]["attribution"]
    assert all(value != 0.0 for value in final.values()), final


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_total_value_is_the_balances_at_market_prices(mode: str) -> None:
    config, engine = load_mode(mode), engine_for(mode)
    market = engine.market
    for ts, snap in run(mode)[::97]:
        i = snap["timestep"]
        eth, btc = float(market.eth_usd[i]), float(market.btc_usd[i])
        rate = float(market.weeth_rate[i])
        expected = value_from_balances(snap, config, eth, btc, rate)
        assert snap["pnl_calculator"]["balance_based"]["total_value"] == pytest.approx(expected, rel=1e-9), ts


# -- content -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODE_NAMES)
def test_every_snapshot_satisfies_the_snapshot_contract(mode: str) -> None:
    funding_venues = load_mode(mode).results_store.funding_tracking_venues
    for _, snap in run(mode, freq="15min"):
        TimestepSnapshot.model_validate(snap)
        assert set(snap["pnl_calculator"].get("funding", {})) == set(funding_venues)
        assert all(math.isfinite(f) for f in floats_in(snap))


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_snapshots_name_only_what_the_mode_configures(mode: str) -> None:
    config = load_mode(mode)
    rs, strategy = config.results_store, config.strategy
    wallet_allowed = set(rs.balance_sheet_assets) | set(rs.dust_tracking_tokens)
    spot = strategy.spot_asset
    for ts, snap in run(mode, freq="5min"):
        pm = snap["position_monitor"]
        assert pm["tracked_assets"] == rs.balance_sheet_assets
        assert set(pm["wallet"]) <= wallet_allowed
        assert set(rs.dust_tracking_tokens) <= set(pm["wallet"])
        assert all(v >= 0 for v in pm["wallet"].values())
        assert list(pm["cex_accounts"]) == strategy.cex_venues
        for balances in pm["cex_accounts"].values():
            assert set(balances) <= set(rs.balance_sheet_assets) and all(v >= 0 for v in balances.values())
        assert list(pm["perp_positions"]) == strategy.hedge_venues
        for positions in pm["perp_positions"].values():
            assert list(positions) == [f"{spot}USDT-PERP"]
            assert all(p["size"] < 0 and p["entry_price"] > 0 for p in positions.values())  # shorts
        exposures = snap["exposure_monitor"]["asset_exposures"]
        assert list(exposures) == (rs.delta_tracking_assets or ([spot] if spot else []))
        assert snap["exposure_monitor"]["total_exposure"] > 0
        orders = [e["order"] for e in snap["event_logger"]]
        assert orders == list(range(1, len(orders) + 1))
        assert all(e["timestamp"] == ts for e in snap["event_logger"])


def test_most_timesteps_have_no_events_and_busy_ones_only_a_few() -> None:
    for mode in MODE_NAMES:
        counts = [len(s["event_logger"]) for _, s in run(mode)]
        assert counts[0] >= 1, mode  # the opening trades
        later = counts[1:]
        assert sum(c == 0 for c in later) >= 0.95 * len(later), mode
        assert max(later) <= 6, mode


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_the_events_are_those_of_the_strategy(mode: str) -> None:
    config = load_mode(mode)
    kinds = {e["event_type"] for _, s in run(mode, "2024-01-31", "1h") for e in s["event_logger"]}
    expected = {"GAS_FEE_PAID"} if config.strategy.staking_token or config.strategy.lending else set()
    if config.strategy.lending:
        expected.add("COLLATERAL_SUPPLIED")
    if config.strategy.staking_token:
        expected.add("STAKE_DEPOSIT")
    if config.strategy.lending and config.strategy.lending.borrow_asset:
        expected.add("LOAN_BORROWED")
    if config.strategy.hedge_venues:
        expected |= {"TRADE_EXECUTED", "FUNDING_PAYMENT"}
    if config.results_store.dust_tracking_tokens:
        expected.add("DUST_AIRDROP")
    assert expected <= kinds
    assert kinds <= expected | {"REBALANCE"}


@pytest.mark.parametrize("mode", [m for m in MODE_NAMES if m not in LEVERAGED])
def test_modes_without_leverage_report_no_ltv_and_no_liquidation_risk(mode: str) -> None:
    for _, snap in run(mode, freq="5min"):
        metrics = snap["risk_monitor"]["risk_metrics"]
        assert metrics["ltv_risk"] == {"current_ltv": 0.0, "target_ltv": 0.0, "max_ltv": 0.0,
                                       "liquidation_threshold": 0.0}
        assert metrics["liquidation_risk"] == {"at_risk": False, "health_factor": NO_DEBT_HEALTH_FACTOR}


@pytest.mark.parametrize("mode", LEVERAGED)
def test_leveraged_ltv_drifts_around_target_and_excursions_over_max_are_flagged_then_rebalanced(mode: str) -> None:
    lending = load_mode(mode).strategy.lending
    assert lending is not None
    snaps = run(mode, "2025-01-01", "1h")
    ltvs = []
    excursions = 0
    for k, (_, snap) in enumerate(snaps):
        metrics, alerts = snap["risk_monitor"]["risk_metrics"], snap["risk_monitor"]["risk_alerts"]
        ltv, liquidation = metrics["ltv_risk"], metrics["liquidation_risk"]
        current = ltv["current_ltv"]
        ltvs.append(current)
        assert (ltv["target_ltv"], ltv["max_ltv"], ltv["liquidation_threshold"]) == (
            lending.target_ltv, lending.max_ltv, lending.liquidation_threshold)
        assert 0 < current < lending.liquidation_threshold
        assert liquidation["health_factor"] == pytest.approx(lending.liquidation_threshold / current)
        assert liquidation["at_risk"] is (current >= lending.max_ltv)
        assert ("ltv_above_max" in alerts) is liquidation["at_risk"]
        if liquidation["at_risk"]:
            excursions += 1
            following = snaps[k + 1][1]["event_logger"]
            rebalance = [e for e in following if e["event_type"] == "REBALANCE"]
            assert rebalance and rebalance[0]["details"]["action"] == "deleverage"
            assert snaps[k + 1][1]["risk_monitor"]["risk_metrics"]["ltv_risk"]["current_ltv"] < lending.max_ltv
    assert excursions >= 1
    assert abs(float(np.median(ltvs)) - lending.target_ltv) < 0.01


@pytest.mark.parametrize("mode", LEVERAGED)
def test_supplied_and_borrowed_balances_accrue_between_trades(mode: str) -> None:
    snaps = run(mode)
    for (_, before), (_, after) in itertools.pairwise(snaps[1:]):
        if after["event_logger"]:
            continue
        assert after["position_monitor"]["wallet"]["aWeETH"] > before["position_monitor"]["wallet"]["aWeETH"]
        assert after["position_monitor"]["wallet"]["variableDebtWETH"] > \
            before["position_monitor"]["wallet"]["variableDebtWETH"]


def test_pure_lending_supply_balance_accrues_at_a_few_percent_a_year() -> None:
    snaps = run("pure_lending", "2024-01-31", "1h")
    first, last = (s["position_monitor"]["wallet"]["aUSDT"] for s in (snaps[0][1], snaps[-1][1]))
    annualised = (last / first - 1) * 365 / 30
    assert 0.02 < annualised < 0.07


@pytest.mark.parametrize("mode", FUNDING_MODES)
def test_hedged_modes_stay_close_to_delta_neutral(mode: str) -> None:
    spot = load_mode(mode).strategy.spot_asset or ""
    snaps = run(mode, "2024-01-31", "1h")
    risks = [s["risk_monitor"]["risk_metrics"]["delta_risk"] for _, s in snaps]
    assert all(r["threshold"] == 0.02 for r in risks)
    within = sum(r["delta_risk"] <= r["threshold"] for r in risks)
    assert within >= 0.98 * len(risks)
    for _, snap in snaps:
        exposure = snap["exposure_monitor"]
        value = snap["pnl_calculator"]["balance_based"]["total_value"]
        assert abs(exposure["asset_exposures"][spot]["exposure_usd"]) < 0.1 * value


@pytest.mark.parametrize("mode", FUNDING_MODES)
@pytest.mark.parametrize("freq", ["1min", "4h", "1D"])
def test_funding_is_paid_only_at_00_08_16_utc_on_the_configured_venues(mode: str, freq: str) -> None:
    venues = load_mode(mode).results_store.funding_tracking_venues
    paid_at, cumulative = set(), dict.fromkeys(venues, 0.0)
    for ts, snap in run(mode, "2024-01-04", freq):
        funding = snap["pnl_calculator"]["funding"]
        assert list(funding) == venues
        events = [e for e in snap["event_logger"] if e["event_type"] == "FUNDING_PAYMENT"]
        paying = [v for v, f in funding.items() if f["payment"] != 0.0]
        assert sorted(e["details"]["venue"] for e in events) == sorted(paying)
        for venue, f in funding.items():
            cumulative[venue] += f["payment"]
            assert f["cumulative"] == pytest.approx(cumulative[venue], abs=1e-6)
        if paying:
            assert paying == venues
            paid_at.add((ts.hour, ts.minute))
    # The opening step (00:00 on the first day) has no position yet to pay on.
    assert paid_at == ({(0, 0)} if freq == "1D" else {(0, 0), (8, 0), (16, 0)})


def test_funding_rates_are_mostly_positive_and_sometimes_negative() -> None:
    rates = [f["funding_rate"] for _, s in run("eth_basis", "2024-04-01", "4h")
             for f in s["pnl_calculator"]["funding"].values()]
    positive = sum(r > 0 for r in rates) / len(rates)
    assert 0.6 < positive < 0.97
    assert all(abs(r) < 0.003 for r in rates)


def test_dust_airdrops_happen_only_in_dust_modes_and_dust_balances_only_grow() -> None:
    for mode in MODE_NAMES:
        tokens = load_mode(mode).results_store.dust_tracking_tokens
        snaps = run(mode, "2024-01-31", "1h")
        airdrops = [e for _, s in snaps for e in s["event_logger"] if e["event_type"] == "DUST_AIRDROP"]
        if not tokens:
            assert airdrops == [], mode
            continue
        assert {e["details"]["asset"] for e in airdrops} == set(tokens)
        previous = dict.fromkeys(tokens, 0.0)
        for _, snap in snaps:
            wallet = snap["position_monitor"]["wallet"]
            dropped = {e["details"]["asset"]: e["details"]["amount"] for e in snap["event_logger"]
                       if e["event_type"] == "DUST_AIRDROP"}
            for token in tokens:
                assert wallet[token] == pytest.approx(previous[token] + dropped.get(token, 0.0))
                previous[token] = wallet[token]


@pytest.mark.parametrize("mode", LEVERAGED)
def test_a_window_with_an_ltv_excursion_passes_every_result_table_rule(mode: str) -> None:
    config = load_mode(mode)
    snaps = run(mode, "2025-01-01", "1h")
    flagged = next(k for k, (_, s) in enumerate(snaps) if s["risk_monitor"]["risk_metrics"]["liquidation_risk"]["at_risk"])
    window = snaps[max(flagged - 50, 0):flagged + 50]
    result = flatten_batch([SnapshotItem(s["timestep"], ts, s) for ts, s in window], config, "excursion")
    assert result.rejected == []
    for rtype, table in result.tables.items():
        outcome = validate_table(rtype, table, config)
        assert outcome.errors == [], (rtype.value, [str(e) for e in outcome.errors][:2])
    leverage = result.tables[ResultType.LEVERAGE_TRACKING].to_pydict()
    assert any(leverage["at_risk"])


def test_the_market_looks_like_2024() -> None:
    market = engine_for("usdt_market_neutral", "2025-01-01", "1h").market
    assert market.eth_usd[0] == 3_000.0
    assert engine_for("btc_basis", "2025-01-01", "1h").market.btc_usd[0] == 60_000.0
    hourly_vol = float(np.std(np.diff(np.log(market.eth_usd)))) * math.sqrt(24 * 365)
    assert 0.5 < hourly_vol < 0.8
    rate = market.weeth_rate
    assert rate[0] == pytest.approx(1.04, abs=0.002)
    assert 0.02 < float(np.median(rate[-720:])) / float(rate[0]) - 1 < 0.04  # ~3 % staking a year
    for name, low, high in (("usdt_supply", 0.01, 0.08), ("weth_borrow", 0.01, 0.045)):
        apr = market.apr(name)
        assert low < float(apr.min()) and float(apr.max()) < high, name


@pytest.mark.parametrize("change", ["share_class", "attribution", "balance_sheet"])
def test_a_strategy_the_engine_cannot_simulate_is_refused_with_rst_201(change: str) -> None:
    config = load_mode("usdt_market_neutral")
    rs = config.results_store
    if change == "share_class":
        config = config.model_copy(update={"strategy": config.strategy.model_copy(update={"share_class": "BTC"})})
    elif change == "attribution":
        rs = rs.model_copy(update={"pnl_attribution_types": [t for t in rs.pnl_attribution_types if t != "borrow_costs"]})
        config = config.model_copy(update={"component_config": {"results_store": rs}})
    else:
        rs = rs.model_copy(update={"balance_sheet_assets": [a for a in rs.balance_sheet_assets if a != "aWeETH"]})
        config = config.model_copy(update={"component_config": {"results_store": rs}})
    with pytest.raises(ComponentError) as refused:
        ReferenceEngine(config, "2024-01-01", "2024-01-02")
    assert refused.value.error_code == "RST-201"
    assert {"share_class": "BTC", "attribution": "borrow_costs", "balance_sheet": "aWeETH"}[change] in str(refused.value)


def test_a_year_at_one_minute_keeps_its_arrays_under_200_mb() -> None:
    engine = engine_for("usdt_market_neutral", "2025-01-01", "1min")
    tracemalloc.start()
    try:
        engine.prepare()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(engine) == 527_040  # 2024 is a leap year
    assert engine.paths.nbytes() < 150e6
    assert peak < 200e6
    last = next(engine.iter_snapshots(len(engine) - 1))[1]
    assert last["pnl_calculator"]["reconciliation"]["passed"] is True


# -- JSON Lines ---------------------------------------------------------------------------------

def test_json_lines_round_trip_exactly(tmp_path: Path) -> None:
    engine = engine_for("usdt_market_neutral", freq="1h")
    path = tmp_path / "snaps.jsonl"
    assert write_jsonl(engine, path) == 24
    first = path.read_text().splitlines()[0]
    assert first.startswith('{"timestamp":"2024-01-01T00:00:00+00:00","timestep":0,"position_monitor":')
    back = list(read_jsonl(path))
    assert back == list(engine.iter_snapshots())
    assert all(isinstance(ts, pd.Timestamp) and str(ts.tz) == "UTC" for ts, _ in back)


def test_pairs_without_a_timestep_are_numbered_in_order(tmp_path: Path) -> None:
    pairs = [(ts, {k: v for k, v in s.items() if k != "timestep"}) for ts, s in run("pure_lending")[:3]]
    path = tmp_path / "plain.jsonl"
    assert write_jsonl(iter(pairs), path) == 3
    assert [s["timestep"] for _, s in read_jsonl(path)] == [0, 1, 2]
    assert not (tmp_path / "plain.jsonl.part").exists()


@pytest.mark.parametrize(("broken", "message"), [
    ('{"timestamp": "2024-01-01T00:03:00+00:00", "timestep": 3, "position', "not valid JSON"),
    ('[1, 2, 3]', "expected a JSON object"),
    ('{"timestep": 3}', "no 'timestamp'"),
    ('{"timestamp": "yesterday-ish", "timestep": 3}', "not an ISO-8601 timestamp"),
    ('{"timestamp": "2024-01-01T00:03:00+00:00", "timestep": -3}', "an integer from 0 to 2^63-1"),
])
def test_a_corrupt_line_raises_rst_101_naming_file_and_line(tmp_path: Path, broken: str, message: str) -> None:
    path = tmp_path / "snaps.jsonl"
    write_jsonl(run("btc_basis")[:6], path)
    lines = path.read_text().splitlines()
    lines[3] = broken
    path.write_text("\n".join(lines) + "\n")
    reader = read_jsonl(path)
    assert [s["timestep"] for _, s in (next(reader) for _ in range(3))] == [0, 1, 2]  # lazily, up to the bad line
    with pytest.raises(ComponentError) as bad:
        next(reader)
    assert bad.value.error_code == "RST-101"
    assert f"{path}:4:" in str(bad.value) and message in str(bad.value)


# -- live source --------------------------------------------------------------------------------

def test_the_live_source_yields_what_is_due_and_continues_after_the_last_committed_timestep() -> None:
    mode = load_mode("usdt_market_neutral")
    source = ReferenceLiveSource(mode, "2024-01-01", "1min")
    assert source.pending(None, pd.Timestamp("2023-12-31 23:59", tz="UTC")) == []
    first = source.pending(None, pd.Timestamp("2024-01-01 00:04:30", tz="UTC"))
    assert [s["timestep"] for _, s in first] == [0, 1, 2, 3, 4]
    later = source.pending(4, pd.Timestamp("2024-01-01 00:09:00", tz="UTC"))
    assert [s["timestep"] for _, s in later] == [5, 6, 7, 8, 9]
    assert source.pending(9, pd.Timestamp("2024-01-01 00:09:59", tz="UTC")) == []
    assert first + later == run("usdt_market_neutral")[:10]


def test_a_restarted_live_source_continues_with_identical_data_in_bounded_batches() -> None:
    mode = load_mode("eth_leveraged")
    now = pd.Timestamp("2024-01-03 12:00", tz="UTC")
    before_restart = ReferenceLiveSource(mode, "2024-01-01", "1min", max_batch=1_000).pending(None, now)
    assert len(before_restart) == 1_000
    restarted = ReferenceLiveSource(mode, "2024-01-01", "1min", max_batch=1_000)
    batches = []
    after = before_restart[-1][1]["timestep"]
    while batch := restarted.pending(after, now):
        batches.extend(batch)
        after = batch[-1][1]["timestep"]
    assert after == 2 * 1_440 + 720
    assert batches == list(engine_for("eth_leveraged", "2024-01-04").iter_snapshots(1_000, after + 1))


# -- command line -------------------------------------------------------------------------------

def test_simulate_writes_one_line_per_timestep_and_says_how_many(tmp_path: Path) -> None:
    out = tmp_path / "snaps.jsonl"
    result = CliRunner().invoke(app, ["simulate", "--mode", "btc_basis", "--start", "2024-01-01", "--end", "2024-01-02",
                                      "--freq", "1min", "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1440
    assert "wrote 1440 timesteps" in result.output
    assert list(read_jsonl(out)) == run("btc_basis")


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "no_such_mode"], "'no_such_mode' is not a strategy mode"),
    (["--mode", "btc_basis", "--freq", "1M"], "freq"),
])
def test_simulate_explains_a_bad_mode_or_frequency_and_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["simulate", *args, "--start", "2024-01-01", "--end", "2024-01-02",
                                      "--out", str(tmp_path / "x.jsonl")], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x.jsonl").exists()
