"""Live benchmark: the live path of ``usdt_market_neutral`` at 1 and at 10 snapshots per second.

A ``ResultsStore(..., "live")`` is fed the reference engine's snapshots (built before the clock
starts), paced by the event loop against a monotonic schedule, once at 1/s and once at 10/s, each
in a fresh data directory. Prints, per rate:

- acknowledgement latency (the time ``await store.store_timestep_results`` takes: the WAL fsync
  and the hand-off to the queue) p50/p99/max (target p99 <= 5 ms);
- acknowledgement -> committed in every table p50/p99/max (targets p99 <= 100 ms at 1/s,
  <= 250 ms at 10/s). A timestep counts as committed when ``BatchWriter.commit`` returns for the
  batch holding it (every table's Delta commit has landed and been recorded); the bench observes
  that by wrapping the store's own ``commit``, it does not replace it;
- how many samples each percentile rests on (a p99 of 100 samples is their second-largest);
- where a commit's time goes: prepare (flatten, validate, raw payloads), the commit (per-table
  Parquet write, Delta commit, checksum manifest), the WAL's seal and release, the live
  compaction policy and the event log, each timed by wrapping the library's functions here;
- the machine's load average before and after each rate (the figures are wall-clock: a busy
  machine slows them).

Run: ``.venv/bin/python bench/bench_live.py`` (3 minutes at 1/s, 1 minute at 10/s; add
``--seconds-1hz 30 --seconds-10hz 15`` for a quick look, or ``--rates 10`` for one rate;
``--unsynced-baseline`` runs each rate again without the store's fsyncs of its commits, which
results_store/durable_files.py explains, and prints what they cost).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The allocator settings the CLI and the deployments run the store with (store/allocators.py).
from results_store.allocators import ALLOCATOR_ENV  # noqa: E402

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ALLOCATOR_ENV["ARROW_DEFAULT_MEMORY_POOL"])

import numpy as np  # noqa: E402
from bench_store import unsynced  # noqa: E402  (this directory is on sys.path: the benches run as scripts)

from results_store import batch_writer as batch_writer_module  # noqa: E402
from results_store import checksums, delta_tables, durable_files  # noqa: E402
from results_store.batch_writer import PreparedBatch  # noqa: E402
from results_store.events import EventLog  # noqa: E402
from results_store.live import LiveDurability  # noqa: E402
from results_store.simulator.reference import ReferenceEngine  # noqa: E402
from results_store.store import ResultsStore  # noqa: E402
from results_store.wal import WriteAheadLog  # noqa: E402
from schemas.modes import load_mode  # noqa: E402

MODE = "usdt_market_neutral"
TARGET_ACK_P99_MS = 5.0
TARGET_COMMIT_P99_MS = {1.0: 100.0, 10.0: 250.0}


class Timers:
    """Durations (seconds) per named piece, from any thread: wall time, and the CPU time of the
    calling thread (work that pyarrow or delta-rs hands to threads of their own is not in it)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = collections.defaultdict(list)
        self.cpu: dict[str, list[float]] = collections.defaultdict(list)
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float, cpu: float | None = None) -> None:
        with self._lock:
            self.calls[name].append(seconds)
            if cpu is not None:
                self.cpu[name].append(cpu)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started, time.thread_time() - started_cpu)
        return timed

    def wrap_async(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)
        return timed


def patch_module(timers: Timers) -> Callable[[], None]:
    """Time the library's pieces by wrapping module and class attributes (those this version of the
    library has); returns the undo."""
    targets: list[tuple[Any, str, str, bool]] = [
        (batch_writer_module, "encode_snapshots", "prepare: encode raw payloads", False),
        (batch_writer_module, "flatten_batch", "prepare: flatten", False),
        (batch_writer_module, "validate_table", "prepare: validate (per table)", False),
        (batch_writer_module.BatchWriter, "_raw_table", "prepare: raw_snapshots table", False),
        (batch_writer_module.BatchWriter, "stream", "commit: write every table's data file (stream)", False),
        (batch_writer_module.BatchWriter, "finish", "commit: close the files, commit every table (finish)", False),
        (delta_tables, "open_run_file", "commit:   open one table's data file", False),
        (delta_tables.RunFile if hasattr(delta_tables, "RunFile") else delta_tables, "write",
         "commit:   write one table's rows", False),
        (delta_tables, "close_run_file", "commit:   close one table's data file (footer, statistics)", False),
        (delta_tables, "commit_run_files", "commit:   one table's Delta commit (all of it)", False),
        (delta_tables, "append_exactly_once", "commit: one table's append (all of it)", False),
        (delta_tables, "_write_partition_file", "commit:   write its Parquet file", False),
        (delta_tables, "_record", "commit:   record the checksum manifest", False),
        (checksums, "find_commit", "commit:     find the commit in the log", False),
        (checksums, "record_commit", "commit:     hash and write the entry", False),
        (durable_files, "sync_file", "commit:     one fsync of a file or directory (any thread)", False),
        (durable_files, "write_synced", "commit:     write + fsync a staged log or checksum entry", False),
        (delta_tables, "checkpoint", "background: one table's checkpoint (CPU: its thread's)", False),
        (delta_tables, "compact_run", "compaction:   one table's merge through delta-rs", False),
        (delta_tables, "merge_appends", "compaction:   one table's merge by version (None: left to delta-rs)", False),
        (LiveDurability, "_append", "ack: WAL append in its thread (lock wait + append)", False),
        (WriteAheadLog, "append", "ack:   WriteAheadLog.append (write + fsync)", False),
        (WriteAheadLog, "_fsync_dir", "ack:     fsync of the WAL directory (new segment)", False),
        (LiveDurability, "_seal", "WAL: seal the segment", False),
        (LiveDurability, "_roll_locked", "WAL: roll the open segment over (if full)", False),
        (LiveDurability, "_release_through", "WAL: release committed segments", False),
        (EventLog, "_append", "event log: one locked append", False),
    ]
    saved = []
    for owner, attribute, name, is_async in targets:
        original = getattr(owner, attribute, None)
        if original is None:  # not in this version of the library
            continue
        saved.append((owner, attribute, original))
        setattr(owner, attribute, (timers.wrap_async if is_async else timers.wrap)(name, original))

    def undo() -> None:
        for owner, attribute, original in saved:
            setattr(owner, attribute, original)
    return undo


def build_snapshots(count: int, seed: int) -> list[tuple[Any, dict[str, Any]]]:
    engine = ReferenceEngine(load_mode(MODE), "2024-01-01", "2024-03-01", "1min", seed=seed)
    return list(engine.iter_snapshots(0, count))


def fsync_floor(directory: Path, count: int = 200, line_bytes: int = 2_700) -> np.ndarray:
    """The disk's own latency for what an acknowledgement does (append a snapshot-sized line, fsync),
    with nothing else of the store running: a floor under the acknowledgement's figures (ms)."""
    path = directory / "fsync-floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = b"x" * (line_bytes - 1) + b"\n"
    took = np.zeros(count)
    try:
        for i in range(count):
            started = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            took[i] = time.perf_counter() - started
            time.sleep(0.01)
    finally:
        os.close(fd)
        path.unlink()
    return took * 1000


def percentiles(values: list[float] | np.ndarray) -> tuple[float, float, float]:
    data = np.asarray(values, dtype=float)
    if not len(data):
        return float("nan"), float("nan"), float("nan")
    p50, p99 = np.percentile(data, [50, 99])
    return float(p50), float(p99), float(data.max())


async def run_rate(rate: float, seconds: float, warmup: int, data_dir: Path, seed: int) -> dict[str, Any]:
    count = warmup + round(rate * seconds)
    snapshots = build_snapshots(count, seed)
    floor = fsync_floor(data_dir)
    gc.collect()
    timers = Timers()
    undo = patch_module(timers)
    store = ResultsStore(load_mode(MODE), "live", data_dir=data_dir, run_id=f"bench-live-{rate:g}hz")
    acked: dict[int, float] = {}
    ack_s: dict[int, float] = {}
    committed: list[tuple[int, int, float]] = []  # (first, last timestep, monotonic when every table had it)
    batch_steps: list[int] = []
    try:
        await store.start()
        writer = store._batch_writer
        assert writer is not None and store._durability is not None and store._live_compaction is not None
        commit = writer.commit

        def observed_commit(batch: PreparedBatch) -> Any:
            started = time.perf_counter()
            outcome = commit(batch)
            done = time.monotonic()
            timers.add("commit: every table (BatchWriter.commit, wall)", time.perf_counter() - started)
            committed.append((batch.first_timestep, batch.last_timestep, done))
            batch_steps.append(batch.timesteps)
            return outcome

        writer.commit = observed_commit  # type: ignore[method-assign]
        writer.prepare = timers.wrap("prepare: all of it (BatchWriter.prepare, wall)",  # type: ignore[method-assign]
                                     writer.prepare)
        compaction = store._live_compaction
        compaction.after_commit = timers.wrap("compaction: LiveCompaction.after_commit",  # type: ignore[method-assign]
                                              compaction.after_commit)
        store._commit = timers.wrap_async("store._commit task (commit + release + compaction + events)",  # type: ignore[method-assign]
                                          store._commit)

        load_before = os.getloadavg()
        cpu_before = time.process_time()
        period = 1.0 / rate
        t0 = time.monotonic()
        for i, (timestamp, results) in enumerate(snapshots):
            delay = t0 + i * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            a = time.perf_counter()
            await store.store_timestep_results(timestamp, results)
            b = time.perf_counter()
            acked[int(results["timestep"])] = time.monotonic()
            ack_s[int(results["timestep"])] = b - a
        fed = time.monotonic() - t0
        stop_started = time.perf_counter()
        await store.stop()
        stop_s = time.perf_counter() - stop_started
        cpu_s = time.process_time() - cpu_before
        load_after = os.getloadavg()
    finally:
        undo()

    # Each timestep is committed by the first commit whose batch covers it.
    committed.sort(key=lambda c: c[1])
    lasts = [c[1] for c in committed]
    to_commit: list[float] = []
    uncovered = 0
    counted = sorted(acked)[warmup:]
    for step in counted:
        index = int(np.searchsorted(lasts, step))
        if index == len(committed):
            uncovered += 1
            continue
        to_commit.append(committed[index][2] - acked[step])
    return {
        "rate": rate, "snapshots": count, "warmup": warmup, "counted": len(counted), "fed_s": fed,
        "ack_s": [ack_s[s] for s in counted], "to_commit_s": to_commit, "uncovered": uncovered,
        "commits": len(committed), "batch_steps": batch_steps, "stop_s": stop_s,
        "load_before": load_before, "load_after": load_after, "timers": timers.calls, "cpu": timers.cpu,
        "cpu_s": cpu_s, "fsync_floor_ms": floor,
    }


def report(result: dict[str, Any]) -> None:
    rate = result["rate"]
    print(f"\n== {rate:g} snapshot/s: {result['snapshots']} snapshots fed in {result['fed_s']:.1f} s "
          f"({result['warmup']} warm-up snapshots not counted: the first commit creates the tables)")
    print(f"load average before {', '.join(f'{x:.2f}' for x in result['load_before'])}; "
          f"after {', '.join(f'{x:.2f}' for x in result['load_after'])} (1, 5, 15 min; {os.cpu_count()} cores)")
    n = len(result["ack_s"])
    p50, p99, top = percentiles(np.array(result["ack_s"]) * 1000)
    print(f"acknowledgement (WAL fsync inside store_timestep_results): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {top:.2f} ms over {n} samples   (target p99 <= {TARGET_ACK_P99_MS:g} ms)")
    p50, p99, top = percentiles(result["fsync_floor_ms"])
    print(f"  the disk alone (append {2_700:,} bytes + fsync, store idle, {len(result['fsync_floor_ms'])} times): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {top:.2f} ms")
    m = len(result["to_commit_s"])
    p50, p99, top = percentiles(np.array(result["to_commit_s"]) * 1000)
    print(f"acknowledgement -> committed in every table: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {top:.1f} ms "
          f"over {m} samples   (target p99 <= {TARGET_COMMIT_P99_MS.get(rate, float('nan')):g} ms)")
    if m:
        print(f"  (a p99 over {m} samples is exceeded by {max(0, int(m * 0.01))} of them)")
    if result["uncovered"]:
        print(f"  {result['uncovered']} acknowledged timesteps were committed only by stop()")
    steps = np.array(result["batch_steps"] or [0])
    print(f"commits: {result['commits']}, timesteps per commit mean {steps.mean():.2f}, max {steps.max()}; "
          f"stop() took {result['stop_s'] * 1000:.0f} ms")
    commits = max(1, result["commits"])
    print(f"process CPU (every thread, feeding and stop): {result['cpu_s']:.1f} s = "
          f"{result['cpu_s'] / result['snapshots'] * 1000:.1f} ms per snapshot, "
          f"{result['cpu_s'] / commits * 1000:.1f} ms per commit (less sensitive to the load than wall time)")
    print("where the time goes (per call: count; wall mean, p50, p99 ms; 'per commit' = wall total / commits; "
          "cpu = the calling thread's CPU per commit):")
    for name in sorted(result["timers"], key=_order):
        values = np.array(result["timers"][name]) * 1000
        cpu = np.array(result["cpu"].get(name) or [np.nan]) * 1000
        p50, p99, _ = percentiles(values)
        print(f"  {name:<62}{len(values):>6}{values.mean():>9.2f}{p50:>9.2f}{p99:>9.2f}   "
              f"per commit {values.sum() / commits:8.2f}   cpu {np.nansum(cpu) / commits:8.2f}")


def _order(name: str) -> tuple[int, str]:
    prefixes = ["ack", "prepare", "commit", "WAL", "compaction", "event", "store"]
    return next((i for i, p in enumerate(prefixes) if name.startswith(p)), len(prefixes)), name


def compare(synced: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Synced figures against the unsynced baseline of the same rate, run right after in this process."""
    print(f"\n== {synced['rate']:g} snapshot/s: synced commits vs the unsynced baseline (same process, run after)")
    for label, key in (("ack", "ack_s"), ("ack -> committed", "to_commit_s")):
        s50, s99, _ = percentiles(np.array(synced[key]) * 1000)
        b50, b99, _ = percentiles(np.array(baseline[key]) * 1000)
        print(f"  {label:<18} p50 {s50:7.2f} vs {b50:7.2f} ms ({s50 / b50:4.2f}x)   "
              f"p99 {s99:7.2f} vs {b99:7.2f} ms ({s99 / b99:4.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds-1hz", type=float, default=180.0, help="seconds fed at 1 snapshot/s")
    parser.add_argument("--seconds-10hz", type=float, default=60.0, help="seconds fed at 10 snapshots/s")
    parser.add_argument("--rates", default="1,10", help="comma-separated rates to run (of 1 and 10)")
    parser.add_argument("--warmup", type=int, default=3, help="first snapshots not counted")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--unsynced-baseline", action="store_true",
                        help="run each rate again without the store's fsyncs of its commits, and compare")
    args = parser.parse_args()
    seconds = {1.0: args.seconds_1hz, 10.0: args.seconds_10hz}
    print(f"live: {MODE} (all 8 result types + raw_snapshots + quarantine), reference engine snapshots, "
          f"pid {os.getpid()}")
    for rate in (float(r) for r in args.rates.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
            result = asyncio.run(run_rate(rate, seconds.get(rate, 60.0), args.warmup, Path(tmp), args.seed))
        report(result)
        if args.unsynced_baseline:
            with unsynced(), tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
                baseline = asyncio.run(run_rate(rate, seconds.get(rate, 60.0), args.warmup, Path(tmp), args.seed))
            print("\n(unsynced baseline)")
            report(baseline)
            compare(result, baseline)


if __name__ == "__main__":
    main()
