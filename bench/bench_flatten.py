"""The store's CPU stages alone, on one batch of usdt_market_neutral snapshots (all 8 result types).

Prints, best of ``--repeat`` runs: flatten (timesteps/s; target >= 40k on 2 cores), validate
(pandas conversion + lazy pandera, rows/s), the raw-payload JSON and its sha256 — so the
end-to-end figure of bench_store.py can be read against what bounds it.

Snapshots come from the reference engine (one simulated day, replayed with fresh timesteps and
timestamps); without ``results_store.simulator.reference`` a hand-built snapshot of the same shape is used.

Run: ``.venv/bin/python bench/bench_flatten.py [--steps 20000] [--repeat 5]``

``--flatten-only`` times flatten_batch alone in CPU seconds (``time.process_time``: the machine is
shared, so wall time says more about the neighbours than about the code) on one chunk the size
the store flattens (5,000 timesteps by default), for usdt_market_neutral or, with
``--all-modes``, each of the seven modes; best of ``--repeat``, in µs per timestep:
``.venv/bin/python bench/bench_flatten.py --flatten-only --all-modes --repeat 7``
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_store.flatten import SnapshotItem, flatten_batch
from results_store.validate import validate_table
from schemas.modes import MODE_NAMES, ModeConfig, load_mode

MODE = "usdt_market_neutral"
POOL = 1_440  # one simulated day of distinct snapshots
CHUNK = 5_000  # the store's backtest chunk (what one flatten_batch call gets)


def _hand_built() -> dict[str, Any]:
    """A usdt_market_neutral-shaped snapshot: 8 wallet tokens (3 dust), 3 CEX + 3 perp venues, 6 attribution types."""
    at = datetime(2024, 1, 1, tzinfo=UTC)
    venues = ("binance", "bybit", "okx")
    return {
        "position_monitor": {
            "wallet": {"USDT": 10_000.0, "ETH": 0.0, "weETH": 0.0, "aWeETH": 2155.2, "variableDebtWETH": 1994.9,
                       "EIGEN": 0.0, "ETHFI": 0.0, "KING": 0.0},
            "cex_accounts": {v: {"USDT": 83_333.3} for v in venues},
            "perp_positions": {v: {"ETHUSDT-PERP": {"size": -82.19, "entry_price": 3001.3}} for v in venues},
            "tracked_assets": ["USDT", "ETH", "weETH", "aWeETH", "variableDebtWETH"],
        },
        "exposure_monitor": {"total_exposure": 1.37e7, "net_delta": 0.00015,
                             "asset_exposures": {"ETH": {"delta": 0.00015, "exposure_usd": 0.47}}},
        "risk_monitor": {
            "risk_metrics": {
                "ltv_risk": {"current_ltv": 0.89, "target_ltv": 0.89, "max_ltv": 0.91, "liquidation_threshold": 0.93,
                             "leverage": 9.09},
                "liquidation_risk": {"at_risk": False, "health_factor": 1.045},
                "cex_margin_ratio": {"current_ratio": 0.335, "min_ratio": 0.05},
                "delta_risk": {"delta_risk": 4.7e-07, "threshold": 0.02},
            },
            "risk_alerts": {},
        },
        "pnl_calculator": {
            "balance_based": {"pnl_cumulative": 0.467, "total_value": 1_000_000.467},
            "attribution": {"supply_yield": 0.205, "staking_yield_oracle": 1.538, "borrow_costs": -1.276,
                            "funding_pnl": 0.0, "delta_pnl": 0.0002, "transaction_costs": 0.0},
            "reconciliation": {"passed": True, "difference": -3.8e-10, "tolerance": 1.0},
            "funding": {v: {"funding_rate": 1e-05, "payment": 0.0, "cumulative": 0.0} for v in venues},
        },
        "event_logger": [{"order": 1, "event_type": "GAS_FEE_PAID", "timestamp": at, "details": {"gas_usd": 2.1}}],
    }


def build_pool(mode: ModeConfig) -> tuple[str, list[dict[str, Any]]]:
    """One day of distinct snapshots, and where they came from."""
    try:
        from results_store.simulator.reference import ReferenceEngine
    except ImportError:
        return "hand-built snapshot", [_hand_built()]
    engine = ReferenceEngine(mode, "2024-01-01", "2024-01-02", "1min", seed=1)
    return "reference engine, one day replayed", [results for _, results in engine.iter_snapshots(0, POOL)]


def build_items(pool: list[dict[str, Any]], steps: int) -> list[SnapshotItem]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    minute = timedelta(minutes=1)
    return [SnapshotItem(i, start + i * minute, {**pool[i % len(pool)], "timestep": i}) for i in range(steps)]


def flatten_cpu(modes: list[str], steps: int, repeat: int) -> None:
    """flatten_batch alone: best CPU time of ``repeat`` runs on one chunk per mode, in µs per timestep."""
    print(f"flatten_batch, {steps:,}-timestep chunk, CPU time (process_time), best of {repeat}")
    for name in modes:
        mode = load_mode(name)
        _, pool = build_pool(mode)
        items = build_items(pool, steps)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            flat = flatten_batch(items, mode, "bench")
            best = min(best, time.process_time() - t0)
        assert not flat.rejected, flat.rejected[0].error
        rows = sum(t.num_rows for t in flat.tables.values())
        print(f"  {name:<32} {best * 1e6 / steps:6.2f} µs/timestep  {best * 1000:7.1f} ms  "
              f"{rows / steps:5.1f} rows/timestep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timesteps in the batch (default 20,000; {CHUNK:,} with --flatten-only)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    parser.add_argument("--flatten-only", action="store_true", help="time flatten_batch alone, in CPU time")
    parser.add_argument("--all-modes", action="store_true", help="with --flatten-only: each of the seven modes")
    args = parser.parse_args()
    if args.flatten_only:
        flatten_cpu(list(MODE_NAMES) if args.all_modes else [MODE], args.steps or CHUNK, args.repeat)
        return
    args.steps = args.steps or 20_000

    mode = load_mode(MODE)
    source, pool = build_pool(mode)
    items = build_items(pool, args.steps)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        flat = flatten_batch(items, mode, "bench")
        t1 = time.perf_counter()
        for rtype, table in flat.tables.items():
            validate_table(rtype, table, mode)
        t2 = time.perf_counter()
        payloads = [orjson.dumps(i.results, default=lambda o: o.isoformat()) for i in items]
        t3 = time.perf_counter()
        for p in payloads:
            hashlib.sha256(p).hexdigest()
        t4 = time.perf_counter()
        for name, seconds in (("flatten", t1 - t0), ("validate", t2 - t1), ("raw json", t3 - t2),
                              ("sha256", t4 - t3), ("all four", t4 - t0)):
            best[name] = min(best.get(name, float("inf")), seconds)
    assert not flat.rejected, flat.rejected[0].error
    rows = sum(t.num_rows for t in flat.tables.values())
    print(f"{args.steps:,} timesteps of {MODE} ({source}) -> {rows:,} rows over {len(flat.tables)} tables "
          f"({rows / args.steps:.1f} rows per timestep); best of {args.repeat}")
    for name, seconds in best.items():
        extra = f"  {rows / seconds / 1e6:6.2f}M rows/s" if name in ("flatten", "validate") else ""
        print(f"  {name:<9} {seconds * 1000:8.0f} ms  {args.steps / seconds:>10,.0f} timesteps/s{extra}")


if __name__ == "__main__":
    main()
