"""Query benchmark: one day out of the stored W1 year run (one table, one run, then 8 tables), against its peers.

Prints, in one process run:
- the layout the store writes (a backtest batch of 100,000 timesteps streamed into one file per table,
  chunk by chunk, each chunk of 5,000 timesteps as row groups of at most 32,768 rows, finalize leaving
  them as they are): files, row groups, rows and timesteps per row group, per table;
- per table, one day through ``retrieve_results``: time (median of --reps, warm: file lists and
  footers cached, as in a notebook or a service; wall and CPU) and compressed bytes read against the
  run's bytes (targets ≤ 100 ms and ≤ 5 %);
- where the time goes for one table: file list, row-group read, pandas conversion;
- the bare-Delta baseline: a pyarrow dataset from deltalake with the same filter;
- ArcticDB (LMDB backend) holding the same 8 tables indexed by timestamp: one day × 8 tables from it
  and through ``retrieve_results`` (target ≤ 1.5× ArcticDB). ArcticDB pins pandas < 3, so this part
  runs only in the bench venv (``bench/out/venv``, see README → Benchmarks); elsewhere it says so;
- with ``--sorted``, the same per-table figures on a copy rewritten by ``compact_run_sorted`` (one
  file, 16,384-row groups), the layout finalize wrote before batches were streamed.

Run: ``bench/out/venv/bin/python bench/bench_query.py`` (builds W1 under bench/out/ first if needed, ~3 min).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402

from results_store import delta_tables  # noqa: E402
from results_store.query import retrieve_results, scan_results  # noqa: E402
from results_store.row_groups import file_index, read_ordered  # noqa: E402
from schemas.result_types import ResultType  # noqa: E402
from schemas.table_keys import ORDER_COLUMNS  # noqa: E402

OUT = ROOT / "bench" / "out"
RUN = "w1"
DAY = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC))
TABLES = [t.value for t in ResultType]


def ensure_w1(path: Path, steps: int) -> Path:
    """The W1 run (bench_store's replayed year of usdt_market_neutral) stored under ``path``, built once."""
    if (path / "backtest" / "pnl_attribution").exists():
        return path
    import bench_store

    print(f"building W1 ({steps:,} timesteps) under {path} ...", flush=True)
    t0 = time.perf_counter()
    asyncio.run(bench_store.store_run(bench_store.build_pool(), steps, path, None))
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def ensure_sorted(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose runs were rewritten as one file each by compact_run_sorted (16,384-row groups)."""
    if (target / "backtest" / "pnl_attribution").exists():
        return target
    # The result tables only: raw payloads are not queried.
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("raw_snapshots", "quarantine"))
    t0 = time.perf_counter()
    for table in TABLES:
        delta_tables.compact_run_sorted(target / "backtest" / table, RUN,
                                        order_by=ORDER_COLUMNS[ResultType(table)])
    print(f"sorted layout written in {time.perf_counter() - t0:.1f} s (from the stored one)", flush=True)
    return target


def describe_layout(root: Path) -> None:
    """Files, row groups, rows and timesteps per row group of the run, per table, as stored."""
    print("\nthe run's layout as stored (per table: files, row groups; rows and timesteps per row group min/median/max):")
    for table in TABLES:
        files = delta_tables.table_files(root / "backtest" / table).runs([RUN])[0][1]
        rows, steps = [], []
        for file in files:
            index = file_index(file)
            rows += index.rows.tolist()
            steps += (index.step_max - index.step_min + 1).tolist()
        if not rows:
            continue
        print(f"  {table:<18} {len(files):>3} files {len(rows):>5} row groups   "
              f"rows {min(rows):>6,}/{int(statistics.median(rows)):>6,}/{max(rows):>6,}   "
              f"timesteps {min(steps):>5,}/{int(statistics.median(steps)):>5,}/{max(steps):>5,}   "
              f"{sum(f.size_bytes for f in files) / 1e6:6.1f} MB")


def median_ms(action: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``reps`` calls after a warm-up (file lists and footers cached, as in any process
    that queries more than once). The minimum goes to MIN_MS and the median CPU time (all threads) to
    CPU_MS: on a shared 2-core machine the median wall time carries other processes' load, the minimum
    and the CPU time are closer to the query's own cost."""
    t0 = time.perf_counter()
    action()
    FIRST_MS[action] = (time.perf_counter() - t0) * 1000
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        action()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    MIN_MS[action] = min(times)
    CPU_MS[action] = statistics.median(cpu)
    return statistics.median(times)


MIN_MS: dict[Any, float] = {}
CPU_MS: dict[Any, float] = {}
FIRST_MS: dict[Any, float] = {}  # the first call: Delta log read, footers parsed


def day_query(table: str, output: str = "pandas") -> dict[str, Any]:
    return {"result_type": table, "run_id": RUN, "start": DAY[0], "end": DAY[1], "output": output}


def per_table(root: Path, reps: int) -> dict[str, dict[str, float]]:
    rows = {}
    for table in TABLES:
        scan = scan_results(root, day_query(table))
        result = sum(w.num_rows for w in scan.windows())
        run_bytes = sum(f.size_bytes for f in scan.table.runs([RUN])[0][1])
        action = lambda t=table: retrieve_results(root, day_query(t))  # noqa: E731
        ms = median_ms(action, reps)
        rows[table] = {"ms": ms, "min_ms": MIN_MS[action], "cpu_ms": CPU_MS[action], "first_ms": FIRST_MS[action],
                       "rows": result, "row_groups": scan.stats.row_groups,
                       "bytes_pct": 100 * scan.stats.bytes_read / run_bytes if run_bytes else 0.0,
                       "run_mb": run_bytes / 1e6}
    return rows


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'table':<18} {'median ms':>9} {'min ms':>8} {'CPU ms':>8} {'rows':>8} {'row groups':>11} {'bytes read':>11} "
          f"{'run MB':>8}")
    for table, r in rows.items():
        print(f"  {table:<18} {r['ms']:>9.2f} {r['min_ms']:>8.2f} {r['cpu_ms']:>8.2f} {r['rows']:>8,.0f} "
              f"{r['row_groups']:>11,.0f} {r['bytes_pct']:>10.2f}% {r['run_mb']:>8.1f}")
    total = {k: sum(r[k] for r in rows.values()) for k in ("ms", "min_ms", "cpu_ms", "first_ms")}
    print(f"  {'8 tables':<18} {total['ms']:>9.2f} {total['min_ms']:>8.2f} {total['cpu_ms']:>8.2f}"
          f"   (first query in the process, log and footers read: {total['first_ms']:.1f} ms)")


def where_the_time_goes(root: Path, table: str, reps: int) -> None:
    """retrieve_results' stages, one day of ``table``: the query and its file list, the row groups read, pandas."""
    stages: dict[str, list[float]] = {"scan_results (parse, cached file list)": [],
                                      "windows (row groups → Arrow)": [], "concat + to_pandas": []}
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        scan = scan_results(root, day_query(table))
        t1 = time.perf_counter()
        parts = list(scan.windows())
        t2 = time.perf_counter()
        pa.concat_tables(parts).to_pandas()
        t3 = time.perf_counter()
        for name, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            stages[name].append(value * 1000)
    print(f"\nwhere the time goes, one day of {table} (median ms of {reps}):")
    for name, values in stages.items():
        print(f"  {name:<40} {statistics.median(values[1:]):8.3f}")


def bare_delta(root: Path, reps: int) -> float:
    """The baseline the issue measured: deltalake's pyarrow dataset with the same filter, 8 tables."""
    from deltalake import DeltaTable

    start = pa.scalar(DAY[0], pa.timestamp("us", "UTC"))
    end = pa.scalar(DAY[1], pa.timestamp("us", "UTC"))
    flt = (pads.field("run_id") == RUN) & (pads.field("timestamp") >= start) & (pads.field("timestamp") < end)

    def run() -> None:
        for table in TABLES:
            DeltaTable(str(root / "backtest" / table)).to_pyarrow_dataset().to_table(filter=flt).to_pandas()

    return median_ms(run, reps)


def arctic(root: Path, reps: int) -> tuple[float, float, float] | None:
    """ArcticDB's one day × 8 tables: median wall, min wall, median CPU (ms); None without arcticdb."""
    try:
        import arcticdb
    except ImportError:
        print("\nArcticDB: not installed in this venv (it pins pandas < 3): run this file with bench/out/venv/bin/python")
        return None
    uri = f"lmdb://{OUT / 'arctic-w1'}?map_size=20GB"
    library = arcticdb.Arctic(uri).get_library("w1", create_if_missing=True)
    if set(library.list_symbols()) != set(TABLES):
        t0 = time.perf_counter()
        for table in TABLES:
            # One symbol per table, indexed by timestamp (rows of one timestep share it), written in
            # slices so the year never sits whole in pandas.
            listed = delta_tables.table_files(root / "backtest" / table)
            first = True
            for window in read_ordered(listed.runs([RUN]), listed.schema, order_by=ORDER_COLUMNS[ResultType(table)]):
                frame = window.to_pandas().set_index("timestamp")
                if first:
                    library.write(table, frame, prune_previous_versions=True)
                    first = False
                else:
                    library.append(table, frame)
        print(f"\nArcticDB (LMDB) holds the 8 tables: written in {time.perf_counter() - t0:.0f} s")

    def arctic_day() -> None:
        for table in TABLES:
            _ = library.read(table, date_range=(pd.Timestamp(DAY[0]), pd.Timestamp(DAY[1]) - pd.Timedelta(microseconds=1))).data

    ms = median_ms(arctic_day, reps)
    return ms, MIN_MS[arctic_day], CPU_MS[arctic_day]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=525_600)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--sorted", action="store_true", help="also measure a compact_run_sorted copy (one file per table)")
    args = parser.parse_args()
    stored = ensure_w1(OUT / "w1-year", args.steps)
    print(f"pandas {pd.__version__}, pyarrow {pa.__version__}; one day = {DAY[0]:%Y-%m-%d} of W1 (run {RUN}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    describe_layout(stored)
    rows = per_table(stored, args.reps)
    print_table("one day per table, retrieve_results → pandas, layout as stored (streamed batches):", rows)
    if args.sorted:
        sorted_rows = per_table(ensure_sorted(stored, OUT / "w1-year-sorted"), args.reps)
        print_table("the same, sorted copy (compact_run_sorted: one file, 16,384-row groups):", sorted_rows)
    where_the_time_goes(stored, "pnl_attribution", args.reps)
    ours = sum(r["ms"] for r in rows.values())
    ours_min = sum(r["min_ms"] for r in rows.values())
    ours_cpu = sum(r["cpu_ms"] for r in rows.values())
    bare = bare_delta(stored, max(args.reps // 4, 3))
    print(f"\nbare Delta (deltalake → pyarrow dataset filter → pandas), one day × 8 tables: {bare:.1f} ms "
          f"(retrieve_results: {ours:.1f} ms, {bare / ours:.1f}× faster)")
    measured = arctic(stored, args.reps)
    if measured is not None:
        arctic_ms, arctic_min, arctic_cpu = measured
        print(f"\nArcticDB (LMDB), one day × 8 tables → pandas: median {arctic_ms:.1f} ms, min {arctic_min:.1f} ms, "
              f"CPU {arctic_cpu:.1f} ms")
        print(f"retrieve_results, one day × 8 tables → pandas: median {ours:.1f} ms ({ours / arctic_ms:.2f}× ArcticDB), "
              f"min {ours_min:.1f} ms ({ours_min / arctic_min:.2f}×), CPU {ours_cpu:.1f} ms ({ours_cpu / arctic_cpu:.2f}×); "
              "target ≤ 1.5×")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    head = rows["pnl_attribution"]
    worst = max(rows, key=lambda t: rows[t]["bytes_pct"])
    print(f"\nheadline, pnl_attribution: {head['ms']:.2f} ms median, {head['cpu_ms']:.2f} ms CPU (target ≤ 100), "
          f"{head['bytes_pct']:.2f}% of the run's bytes (target ≤ 5%); most bytes of any table: {worst} "
          f"{rows[worst]['bytes_pct']:.2f}%; slowest: {max(r['ms'] for r in rows.values()):.2f} ms")


if __name__ == "__main__":
    main()
