"""validate_table with the fast screen (results_store/validate_screen.py) and with pandera alone.

Two shapes, both usdt_market_neutral (all 8 result types), reference-engine snapshots, all valid:

- live: one snapshot's 8 tables, the batch a live commit validates (target ack->commit p99 <= 100 ms);
- backtest: one 10,000-timestep chunk (~37 rows per timestep over the 8 tables).

For each it prints the per-call time of validate_table per table and summed over the 8 tables, as the
median and p99 of ``--repeat`` calls (the chunk: median and max), with ``screen=True`` (the default
path) and ``screen=False`` (pandas + pandera, as before the screen), and their ratio. The two are
interleaved call by call, so load from other work on the machine hits both alike.

Run: ``.venv/bin/python bench/bench_validate.py [--repeat 300] [--chunk-repeat 7] [--chunk 10000]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_store.flatten import SnapshotItem, flatten_batch
from results_store.simulator.reference import ReferenceEngine
from results_store.validate import validate_table
from schemas.modes import ModeConfig, load_mode
from schemas.result_types import ResultType

MODE = "usdt_market_neutral"


def _tables(mode: ModeConfig, steps: int, first: int = 0) -> dict[ResultType, pa.Table]:
    engine = ReferenceEngine(mode, "2024-01-01", "2024-03-01", "1min", seed=7)
    items = [SnapshotItem(first + i, ts, r) for i, (ts, r) in enumerate(engine.iter_snapshots(0, steps))]
    flat = flatten_batch(items, mode, "bench-validate")
    assert not flat.rejected
    return flat.tables


def _time(rtype: ResultType, table: pa.Table, mode: ModeConfig, screen: bool) -> float:
    started = time.perf_counter()
    outcome = validate_table(rtype, table, mode, screen=screen)
    elapsed = time.perf_counter() - started
    assert not outcome.errors and outcome.valid.num_rows == table.num_rows
    return elapsed


def _measure(tables: dict[ResultType, pa.Table], mode: ModeConfig, repeat: int) -> dict[bool, dict[str, list[float]]]:
    """Seconds per call, by screen on/off, by table (and "8 tables" for the sum of one round)."""
    times: dict[bool, dict[str, list[float]]] = {s: {t.value: [] for t in tables} | {"8 tables": []}
                                                 for s in (True, False)}
    for _ in range(repeat):
        for screen in (True, False):
            total = 0.0
            for rtype, table in tables.items():
                elapsed = _time(rtype, table, mode, screen)
                times[screen][rtype.value].append(elapsed)
                total += elapsed
            times[screen]["8 tables"].append(total)
    return times


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _report(title: str, tables: dict[ResultType, pa.Table], times: dict[bool, dict[str, list[float]]],
            tail: str) -> None:
    print(f"\n{title}")
    print(f"{'table':<18}{'rows':>8}  {'screen med':>10} {'screen ' + tail:>11}  {'pandera med':>11} "
          f"{'pandera ' + tail:>12}  {'ratio (med)':>11}")
    rows = {t.value: t_.num_rows for t, t_ in tables.items()} | {"8 tables": sum(t.num_rows for t in tables.values())}
    for name in times[True]:
        on, off = times[True][name], times[False][name]
        tail_on, tail_off = (_p99(on), _p99(off)) if tail == "p99" else (max(on), max(off))
        print(f"{name:<18}{rows[name]:>8}  {statistics.median(on) * 1e3:>8.2f}ms {tail_on * 1e3:>9.2f}ms  "
              f"{statistics.median(off) * 1e3:>9.2f}ms {tail_off * 1e3:>10.2f}ms  "
              f"{statistics.median(off) / statistics.median(on):>10.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="rounds of the one-snapshot tables")
    parser.add_argument("--chunk-repeat", type=int, default=7, help="rounds of the backtest chunk")
    parser.add_argument("--chunk", type=int, default=10_000, help="timesteps in the backtest chunk")
    args = parser.parse_args()
    mode = load_mode(MODE)

    # The opening snapshot (10 execution events) and the next one (no events, as on most live
    # timesteps: its execution_log table is empty and returns before either path).
    opening = _tables(mode, 1)
    steady = {t: table.filter(pc.equal(table.column("timestep"), 1)) for t, table in _tables(mode, 2).items()}
    chunk = _tables(mode, args.chunk)

    for shape in (opening, steady):  # warm up: schemas, screens, pandera's backends
        _measure(shape, mode, 3)
    _report(f"live: the opening snapshot's 8 tables, {args.repeat} calls each (per call)", opening,
            _measure(opening, mode, args.repeat), "p99")
    _report(f"live: a steady snapshot's 8 tables (no events), {args.repeat} calls each (per call)", steady,
            _measure(steady, mode, args.repeat), "p99")
    _measure(chunk, mode, 1)
    _report(f"backtest: one {args.chunk:,}-timestep chunk, {args.chunk_repeat} calls each (per call)", chunk,
            _measure(chunk, mode, args.chunk_repeat), "max")


if __name__ == "__main__":
    main()
