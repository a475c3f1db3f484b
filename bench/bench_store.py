"""W1 benchmark: one year of 1-minute timesteps of usdt_market_neutral (all 8 result types).

Prints, in one process run:
- the producer's own cost (replaying pre-built snapshots with fresh timestamps, no store),
- ``store_timestep_results`` latency p50/p99/p99.9 (target p99 <= 20 µs),
- end-to-end throughput, validated and committed (target >= 25k timesteps/s),
- baseline A, the seed spec's CSV design (a pandas DataFrame per result type per timestep,
  appended to CSV), measured on a slice; target: the store >= 50x it,
- baseline B, the raw floor (the same flatten + bare pyarrow.parquet writes; no validation, no
  Delta); target: the store >= 0.6x it (issue 11),
- commits and data files per table after finalize,
- peak RSS of the store alone for 1 month and for 1 year, each in a fresh subprocess with the
  allocator environment of the CLI and the deployments (ALLOCATOR_ENV below)
  (targets <= 400 MB and year/month <= 1.3).

Run: ``.venv/bin/python bench/bench_store.py`` (add ``--steps 100000`` for a quicker look;
``--unsynced-baseline`` runs the store again without its fsyncs and prints what they cost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The allocator settings the CLI and the deployments run the store with (store/allocators.py);
# glibc reads MALLOC_ARENA_MAX at process start, so the RSS children get it in their environment.
from results_store.allocators import ALLOCATOR_ENV  # noqa: E402

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ALLOCATOR_ENV["ARROW_DEFAULT_MEMORY_POOL"])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from results_store import delta_tables, durable_files  # noqa: E402
from results_store.flatten import SnapshotItem, flatten_batch  # noqa: E402
from results_store.simulator.reference import ReferenceEngine  # noqa: E402
from results_store.store import ResultsStore  # noqa: E402
from schemas.modes import load_mode  # noqa: E402
from schemas.settings import load_settings  # noqa: E402

MODE = "usdt_market_neutral"
YEAR = 525_600
MONTH = 43_200
POOL = 1_440  # one simulated day of distinct snapshots, replayed


def build_pool() -> list[dict[str, Any]]:
    engine = ReferenceEngine(load_mode(MODE), "2024-01-01", "2024-01-02", "1min", seed=1)
    return [results for _, results in engine.iter_snapshots(0, POOL)]


def replay(pool: list[dict[str, Any]], steps: int) -> Iterator[tuple[datetime, dict[str, Any]]]:
    """Pre-built snapshots with fresh timesteps and timestamps (the producer under test).

    The execution events move with their snapshot (day k of the replay shifts them k days): left at
    the pool's day, they would be quarantined from the second day on (rule event_near_its_timestep),
    and the benchmark would measure the quarantine path instead of the store's."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    minute = timedelta(minutes=1)
    n = len(pool)
    for i in range(steps):
        base = pool[i % n]
        results = dict(base)
        results["timestep"] = i
        days = i // n
        if days and base["event_logger"]:
            shift = timedelta(days=days)
            results["event_logger"] = [{**event, "timestamp": event["timestamp"] + shift} for event in base["event_logger"]]
        yield start + i * minute, results


def producer_only(pool: list[dict[str, Any]], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in replay(pool, steps):
        pass
    return time.perf_counter() - t0


async def store_run(pool: list[dict[str, Any]], steps: int, data_dir: Path, latencies: np.ndarray | None) -> dict[str, Any]:
    mode = load_mode(MODE)
    settings = load_settings(mode, data_dir=data_dir)
    store = ResultsStore(mode, "backtest", data_dir=data_dir, run_id="w1", settings=settings)
    perf = time.perf_counter_ns
    t0 = time.perf_counter()
    await store.start()
    put = store.store_timestep_results
    if latencies is not None:
        for i, (ts, results) in enumerate(replay(pool, steps)):
            a = perf()
            await put(ts, results)
            latencies[i] = perf() - a
    else:
        for ts, results in replay(pool, steps):
            await put(ts, results)
    t_fed = time.perf_counter()
    summary = await store.stop()
    t1 = time.perf_counter()
    files = {name: len(delta_tables.data_files(Path(p), run_id="w1")) for name, p in summary.table_paths.items()}
    return {
        "elapsed_s": t1 - t0,
        "feed_s": t_fed - t0,
        "finalize_s": t1 - t_fed,
        "throughput": steps / (t1 - t0),
        "commits": summary.commits,
        "rows": summary.rows,
        "data_files": files,
        "quarantined": summary.quarantined,
        "batch_size": settings.backtest_batch_size,
    }


@contextlib.contextmanager
def unsynced() -> Iterator[None]:
    """The store as it was before it synced its commits (results_store/durable_files.py): files are
    written, linked and renamed, none fsynced. A baseline that prices the syncs; nothing to run."""
    saved = durable_files.sync_file, durable_files.write_synced

    def write(path: Path, data: bytes) -> None:
        with open(path, "xb") as handle:
            handle.write(data)

    durable_files.sync_file = lambda path: None  # type: ignore[assignment]
    durable_files.write_synced = write  # type: ignore[assignment]
    try:
        yield
    finally:
        durable_files.sync_file, durable_files.write_synced = saved


def csv_baseline(pool: list[dict[str, Any]], steps: int, out: Path) -> float:
    """The seed spec's design: per timestep, one DataFrame per result type appended to CSV."""
    mode = load_mode(MODE)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written: set[str] = set()
    for ts, results in replay(pool, steps):
        flat = flatten_batch([SnapshotItem(results["timestep"], pd.Timestamp(ts), results)], mode, "w1")
        for rtype, table in flat.tables.items():
            frame = pd.DataFrame(table.to_pylist())
            path = out / f"{rtype.value}.csv"
            frame.to_csv(path, mode="a", header=rtype.value not in written, index=False)
            written.add(rtype.value)
    return steps / (time.perf_counter() - t0)


def raw_floor(pool: list[dict[str, Any]], steps: int, out: Path, chunk: int = 2_000) -> float:
    """The same flatten plus bare Parquet writes: no validation, no Delta, no raw payloads."""
    mode = load_mode(MODE)
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    t0 = time.perf_counter()
    items: list[SnapshotItem] = []
    for ts, results in replay(pool, steps):
        items.append(SnapshotItem(results["timestep"], ts, results))
        if len(items) == chunk:
            _floor_write(flatten_batch(items, mode, "w1").tables, writers, out)
            items = []
    if items:
        _floor_write(flatten_batch(items, mode, "w1").tables, writers, out)
    for w in writers.values():
        w.close()
    return steps / (time.perf_counter() - t0)


def _floor_write(tables: dict[Any, Any], writers: dict[str, pq.ParquetWriter], out: Path) -> None:
    for rtype, table in tables.items():
        name = str(rtype.value)
        if name not in writers:
            writers[name] = pq.ParquetWriter(out / f"{name}.parquet", table.schema, compression="zstd")
        writers[name].write_table(table)


def rss_child(steps: int) -> dict[str, Any]:
    """Run the store alone in a fresh interpreter and read its peak RSS."""
    proc = subprocess.run([sys.executable, __file__, "--rss-child", str(steps)], capture_output=True, text=True,
                          check=True, cwd=ROOT, env={**os.environ, **ALLOCATOR_ENV})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _peak_rss_mb() -> float:
    # Not getrusage's ru_maxrss: Linux carries it over fork and exec, so a child started by a
    # parent that already holds 1 GB would report the parent's peak. VmHWM starts afresh at exec.
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_child_main(steps: int) -> None:
    pool = build_pool()
    gc.collect()
    before = _status_mb("VmRSS") or 0.0  # imports plus the producer's pool: not the store's
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(store_run(pool, steps, Path(tmp), None))
    print(json.dumps({"steps": steps, "peak_rss_mb": round(_peak_rss_mb(), 1), "before_store_mb": round(before, 1),
                      "throughput": round(result["throughput"])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=YEAR)
    parser.add_argument("--csv-steps", type=int, default=2_000)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--unsynced-baseline", action="store_true",
                        help="run the store again without its fsyncs of data files and commits, and compare")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child_main(args.rss_child)
        return

    print(f"W1: {MODE}, {args.steps:,} timesteps of 1 minute, all 8 result types; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min; {os.cpu_count()} cores)")
    pool = build_pool()
    producer_s = producer_only(pool, args.steps)
    print(f"producer alone: {producer_s:.2f} s ({args.steps / producer_s:,.0f} timesteps/s, "
          f"{producer_s / args.steps * 1e6:.2f} µs each); the end-to-end figure below includes it, and is also shown without it")

    with tempfile.TemporaryDirectory() as tmp:
        latencies = np.zeros(args.steps, dtype=np.int64)
        gc.collect()
        result = asyncio.run(store_run(pool, args.steps, Path(tmp) / "store", latencies))
        lat_us = latencies / 1000
        p50, p99, p999 = np.percentile(lat_us, [50, 99, 99.9])
        print(f"store_timestep_results latency: p50 {p50:.2f} µs, p99 {p99:.2f} µs, p99.9 {p999:.2f} µs, "
              f"max {lat_us.max() / 1000:.1f} ms   (target p99 <= 20 µs)")
        store_tps = result["throughput"]
        store_only_s = result["elapsed_s"] - producer_s
        print(f"store end to end: {result['elapsed_s']:.2f} s = {store_tps:,.0f} timesteps/s validated and committed "
              f"(feed {result['feed_s']:.2f} s, finalize {result['finalize_s']:.2f} s; "
              f"without the producer's {producer_s:.2f} s: {args.steps / store_only_s:,.0f} timesteps/s)  "
              f"(target >= 25,000)")
        print(f"backtest batch: {result['batch_size']:,} timesteps per commit; quarantined rows: {result['quarantined']}")
        print("table               rows   commits  data files")
        for name in sorted(result["rows"]):
            print(f"  {name:<18}{result['rows'][name]:>11,}{result['commits'].get(name, 0):>8}"
                  f"{result['data_files'].get(name, 0):>10}")

        if args.unsynced_baseline:
            gc.collect()
            with unsynced():
                loose = asyncio.run(store_run(pool, args.steps, Path(tmp) / "unsynced", None))
            print(f"the store without its fsyncs (run after, same process): {loose['elapsed_s']:.2f} s = "
                  f"{loose['throughput']:,.0f} timesteps/s (finalize {loose['finalize_s']:.2f} s) -> "
                  f"synced/unsynced = {store_tps / loose['throughput']:.2f}x")
        csv_tps = csv_baseline(pool, args.csv_steps, Path(tmp) / "csv")
        floor_tps = raw_floor(pool, args.steps, Path(tmp) / "floor")
    print(f"load average after the store and its baselines: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"baseline A, spec CSV design ({args.csv_steps:,} timesteps): {csv_tps:,.0f} timesteps/s -> "
          f"store/CSV = {store_tps / csv_tps:,.1f}x   (target >= 50x)")
    print(f"baseline B, raw floor (flatten + bare Parquet): {floor_tps:,.0f} timesteps/s -> "
          f"store/floor = {store_tps / floor_tps:.2f}x   (target >= 0.6x)")

    if not args.skip_rss:
        month = rss_child(MONTH)
        year = rss_child(YEAR)
        print(f"peak RSS, store alone: 1 month {month['peak_rss_mb']:.0f} MB, 1 year {year['peak_rss_mb']:.0f} MB, "
              f"ratio {year['peak_rss_mb'] / month['peak_rss_mb']:.2f}   (targets <= 400 MB, ratio <= 1.3)")
        print(f"  of which before the store started (imports, the producer's pool): {year['before_store_mb']:.0f} MB; "
              f"the store's own peak: month {month['peak_rss_mb'] - month['before_store_mb']:.0f} MB, "
              f"year {year['peak_rss_mb'] - year['before_store_mb']:.0f} MB")


if __name__ == "__main__":
    main()
