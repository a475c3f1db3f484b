"""Data-lifecycle benchmark: file verification, backups of a big run, and a live day on disk.

Prints, in one process run:
- **verify**: ``checksums.verify`` over every file of a W1 run (data, Delta logs, checkpoints) in
  MB/s, against plain ``hashlib.sha256`` over the same bytes read the same way (1 MiB chunks, one
  thread), measured in the same run, both with the files in the page cache; target >= 0.8x;
- **backup**: the run backed up in full, then again with nothing new (incremental); target for the
  incremental <= 1 s;
- **live day**: 1,440 one-minute collections of pure_lending (every table, through the store's own
  batch writer and compaction policy, with a controlled clock), the next day's first collection and
  the nightly retention: bytes written in all, bytes on disk at the end (data, Delta log, manifest),
  against the day's rows written once (one Parquet file per table, the store's settings).

Run: ``.venv/bin/python bench/bench_lifecycle.py`` (the W1 year: 525,600 timesteps of
usdt_market_neutral, all 8 result types); ``--steps 43200`` for a month, ``--skip-live`` to leave out the day,
``--live-only`` for the day alone.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_store import YEAR, build_pool, store_run  # noqa: E402

from results_store import backup, checksums, delta_tables, retention  # noqa: E402
from results_store.batch_writer import BatchWriter, PreparedBatch  # noqa: E402
from results_store.compaction import LiveCompaction, last_timestamp_us  # noqa: E402
from results_store.simulator.reference import ReferenceEngine  # noqa: E402
from schemas.modes import load_mode  # noqa: E402
from schemas.settings import load_settings  # noqa: E402
from schemas.store_tables import QUARANTINE, RAW_SNAPSHOTS  # noqa: E402

OUT = ROOT / "bench" / "out"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "backtest").rglob("*") if p.is_file() and "_locks" not in p.parts
                  and "results" not in p.parts)


def plain_sha256(files: list[Path]) -> tuple[int, float]:
    """hashlib.sha256 over each file, read in 1 MiB chunks, one thread: (bytes, seconds)."""
    started = time.perf_counter()
    total = 0
    buffer = bytearray(checksums.CHUNK_BYTES)
    view = memoryview(buffer)
    for file in files:
        digest = hashlib.sha256()
        with open(file, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
                total += count
        digest.hexdigest()
    return total, time.perf_counter() - started


def bench_verify(root: Path) -> None:
    # The files verify hashes (every version's data files, log entries, checkpoints), and only those.
    files = [root / "backtest" / name / path for name, manifest in checksums.iter_expected(root, "backtest")
             for path in manifest.expected()]
    plain_sha256(files)  # warm the page cache for both
    base_bytes, base_s = min((plain_sha256(files) for _ in range(3)), key=lambda r: r[1])
    reports = [checksums.verify(root, ["backtest"], all_versions=True, in_flight_seconds=0) for _ in range(3)]
    best = min(reports, key=lambda r: r.elapsed_s)
    assert best.ok, [p.line() for p in best.problems]
    base_rate = base_bytes / 1e6 / base_s
    print(f"verify: {best.files:,} files, {best.bytes / 1e6:,.1f} MB in {best.elapsed_s:.2f} s = {best.mb_per_s:,.0f} MB/s "
          f"({os.cpu_count()} cores); plain hashlib.sha256 over the same {base_bytes / 1e6:,.1f} MB: {base_s:.2f} s = "
          f"{base_rate:,.0f} MB/s; ratio {best.mb_per_s / base_rate:.2f}x (target >= 0.8x)")


def bench_backup(root: Path) -> None:
    target = OUT / "lifecycle-backup"
    shutil.rmtree(target, ignore_errors=True)
    full = backup.backup(root, "backtest", str(target), record=False)
    assert full.ok, full.failures
    again = backup.backup(root, "backtest", str(target), record=False)
    assert again.ok and again.copied_files == 0
    print(f"backup, full: {full.copied_files:,} files, {full.copied_bytes / 1e6:,.1f} MB in {full.elapsed_s:.2f} s "
          f"({full.copied_bytes / 1e6 / full.elapsed_s:,.0f} MB/s, each copy hashed on the way and read back)")
    print(f"backup, incremental with nothing new: {again.copied_files} files copied, {again.files:,} files checked "
          f"against the last backup's manifest in {again.elapsed_s:.3f} s (target <= 1 s)")


def _sizes(table_dir: Path) -> dict[str, int]:
    found = {"data": 0, "log": 0, "manifest": 0}
    for file in table_dir.rglob("*"):
        if file.is_file():
            head = file.relative_to(table_dir).parts[0]
            found["log" if head == "_delta_log" else "manifest" if head == "_checksums" else "data"] += file.stat().st_size
    return found


def _written(table_dir: Path) -> int:
    total = 0
    for log in (table_dir / "_delta_log").glob("*.json"):
        total += sum(int(line.split(b'"size":', 1)[1].split(b",", 1)[0]) for line in log.read_bytes().splitlines()
                     if line.startswith(b'{"add"'))
    return total


def bench_live_day(minutes: int = 1_440) -> None:
    root = OUT / "lifecycle-live"
    shutil.rmtree(root, ignore_errors=True)
    config = load_mode("pure_lending")
    settings = load_settings(config, data_dir=root, execution_mode="live", tune_allocators=False)
    names = [t.value for t in config.results_store.result_types] + [RAW_SNAPSHOTS, QUARANTINE]
    paths = {n: root / "live" / n for n in names}
    (root / "live").mkdir(parents=True)
    anchor = pd.Timestamp(datetime.now(UTC)).floor("1D")

    def prepared(run_id: str, start: pd.Timestamp, count: int) -> tuple[BatchWriter, dict[str, object]]:
        writer = BatchWriter(mode=config, settings=settings, run_id=run_id, table_paths=paths)
        engine = ReferenceEngine(config, start, start + pd.Timedelta(minutes=count), "1min")
        entries = [(i, ts.value // 1000, ts, snap, 0.0) for i, (ts, snap) in enumerate(engine.iter_snapshots())]
        return writer, dict(writer.prepare(entries).tables)

    def collect(writer: BatchWriter, policy: LiveCompaction, tables: dict[str, object], minute: int) -> None:
        part = {}
        for name, table in tables.items():
            steps = table.column("timestep").to_numpy()  # type: ignore[attr-defined]
            lo, hi = int(np.searchsorted(steps, minute)), int(np.searchsorted(steps, minute, side="right"))
            part[name] = table.slice(lo, hi - lo)  # type: ignore[attr-defined]
        outcome = writer.commit(PreparedBatch(minute, minute, 1, part, 0))  # type: ignore[arg-type]
        policy.after_commit(outcome.versions, last_timestamp_us(part[RAW_SNAPSHOTS]))  # type: ignore[arg-type]

    writer, tables = prepared("live-day", anchor, minutes)
    policy = LiveCompaction(paths, "live-day")
    policy.start()
    started = time.perf_counter()
    for minute in range(minutes):
        collect(writer, policy, tables, minute)
    day_s = time.perf_counter() - started
    next_writer, next_tables = prepared("live-day-2", anchor + pd.Timedelta(days=1), 1)
    next_policy = LiveCompaction(paths, "live-day-2")
    next_policy.start()
    collect(next_writer, next_policy, next_tables, 0)
    started = time.perf_counter()
    nightly = retention.run_retention(root, "live", now=anchor + pd.Timedelta(days=1, hours=4), data_dir=root)
    nightly_s = time.perf_counter() - started
    assert checksums.verify(root, ["live"], in_flight_seconds=0).ok

    totals = {"live data": 0, "written": 0, "data": 0, "log": 0, "manifest": 0}
    print(f"live day: {minutes:,} one-minute collections of pure_lending ({len(names)} tables) in {day_s:.1f} s, "
          f"{len(policy.done)} merges; next day's roll-over: {len(next_policy.done)} compactions; nightly retention "
          f"{nightly_s:.1f} s, vacuumed {nightly.vacuumed_files:,} files ({nightly.vacuumed_bytes / 1e6:,.2f} MB)")
    print(f"  {'table':<16} {'live data':>10} {'written':>10} {'w/data':>7} {'on disk':>10} {'disk/data':>9} "
          f"{'+log':>10} {'+manifest':>10} {'commits':>7} {'ckpts':>5}")
    for name, path in paths.items():
        rows = delta_tables.read(path, run_id="live-day")
        reference = root / f"{name}.parquet"
        pq.write_table(rows.drop_columns(["run_id"]), reference, compression="zstd", write_page_checksum=True,
                       row_group_size=delta_tables.ROW_GROUP_ROWS)
        data_size = reference.stat().st_size if rows.num_rows else 0
        reference.unlink()
        day_dir = path / "run_id=live-day"
        on_disk = sum(f.stat().st_size for f in day_dir.iterdir()) if day_dir.is_dir() else 0
        sizes = _sizes(path)
        written = _written(path)
        log = os.listdir(path / "_delta_log")
        commits = sum(1 for n in log if n.endswith(".json"))
        checkpoints = sum(1 for n in log if n.endswith(".checkpoint.parquet"))
        ratio = f"{on_disk / data_size:.2f}x" if data_size else "-"
        print(f"  {name:<16} {data_size:>10,} {written:>10,} {written / data_size if data_size else 0:>6.1f}x "
              f"{on_disk:>10,} {ratio:>9} {sizes['log']:>10,} {sizes['manifest']:>10,} {commits:>7} {checkpoints:>5}")
        for key, value in (("live data", data_size), ("written", written), ("data", on_disk), ("log", sizes["log"]),
                           ("manifest", sizes["manifest"])):
            totals[key] += value
    print(f"  all tables: live data {totals['live data']:,} B; written {totals['written']:,} B "
          f"({totals['written'] / totals['live data']:.1f}x); on disk: data {totals['data']:,} B "
          f"({totals['data'] / totals['live data']:.2f}x), Delta log {totals['log']:,} B, manifests {totals['manifest']:,} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=YEAR, help="timesteps of the W1 run (default: a year)")
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--live-only", action="store_true", help="only the live day")
    args = parser.parse_args()
    if args.live_only:
        bench_live_day()
        return
    root = OUT / "lifecycle-w1"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    run = asyncio.run(store_run(build_pool(), args.steps, root, None))
    print(f"W1 run: {args.steps:,} timesteps of usdt_market_neutral in {time.perf_counter() - started:.1f} s "
          f"(finalize, i.e. compaction with checksums and page checksums: {run['finalize_s']:.1f} s); "
          f"{sum(f.stat().st_size for f in _files(root)) / 1e6:,.0f} MB on disk")
    bench_verify(root)
    bench_backup(root)
    if not args.skip_live:
        bench_live_day()


if __name__ == "__main__":
    main()
