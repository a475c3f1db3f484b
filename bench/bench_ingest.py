"""File ingest and rerun against the in-process store: W1 (one year of 1-minute usdt_market_neutral).

Prints, in one process run:
- the W1 JSON Lines file, written once with the reference engine (what ``results-store simulate``
  writes: ``write_jsonl`` of the engine) and cached under ``--work-dir``; its size and lines;
- for the year (525,600 timesteps) and a month (its first 43,200 lines), each figure in a fresh
  child process with the allocator environment of the CLI and the deployments (ALLOCATOR_ENV):
  - **in-process** (the baseline): the reference engine's snapshots fed to ``ResultsStore``, as
    ``results-store backtest`` does (``drive.feed``); the time the engine took to yield them is shown
    too, its set-up (the simulated market and book) is not counted;
  - **ingest**: the file through the library code ``results-store ingest`` runs. The CLI always goes
    through the ``backtest-results`` Prefect flow, whose task (``tasks.store.store_snapshots``) does
    ``drive.backtest_inputs`` (the file's sha256, the run's identity) + ``ResultsStore`` +
    ``file_ingest.feed_file``; that is what is timed here, without Prefect (its server start-up and
    the flow's report afterwards are not the ingest);
  - **rerun, new run** and **rerun, in place**: ``rerun.rederive_run`` of the ingested run (as
    ``results-store rerun`` runs it through the rerun-results flow);
  for each: timesteps/s, ratio to the in-process baseline (target >= 0.8x), wall and CPU seconds
  (all threads: the machine is shared, so CPU is the steadier figure), peak RSS (VmHWM) and the RSS
  before the store (or rerun) started; then year/month peak RSS ratios (target: as flat as the
  in-process store, whose targets are <= 400 MB and <= 1.3);
- the load average before and after.

Run: ``.venv/bin/python bench/bench_ingest.py`` (~10-15 min on 2 shared cores, plus ~1 min the
first time to write the 1 GB file). ``--steps 100000`` for a quicker look, ``--skip-month``,
``--only ingest,rerun-new`` to run some of the children, ``--repeat 3`` for rounds of them (the
best wall of each shown, as the machine is shared), ``--profile ingest`` to run one child
under cProfile, timed in the main thread's CPU time (stats printed and saved under the work dir).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# glibc reads MALLOC_ARENA_MAX at process start: the children get ALLOCATOR_ENV in their environment.
from results_store.allocators import ALLOCATOR_ENV  # noqa: E402

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ALLOCATOR_ENV["ARROW_DEFAULT_MEMORY_POOL"])

import pandas as pd  # noqa: E402
from bench_store import _status_mb  # noqa: E402  (this directory is on sys.path: the benches run as scripts)

from results_store.drive import backtest_inputs, feed  # noqa: E402
from results_store.file_ingest import feed_file  # noqa: E402
from results_store.rerun import rederive_run  # noqa: E402
from results_store.simulator.jsonl import write_jsonl  # noqa: E402
from results_store.simulator.reference import ReferenceEngine  # noqa: E402
from results_store.store import ResultsStore  # noqa: E402
from schemas.modes import load_mode  # noqa: E402
from schemas.settings import load_settings  # noqa: E402

MODE = "usdt_market_neutral"
YEAR = 525_600
MONTH = 43_200
START = "2024-01-01"
SEED = 0
RUN_ID = "w1"
KINDS = ("inprocess", "ingest", "rerun-new", "rerun-inplace")
LABELS = {"inprocess": "in-process (baseline)", "ingest": "ingest (file)", "rerun-new": "rerun, new run",
          "rerun-inplace": "rerun, in place"}


# ----------------------------------------------------------------------------- the file
def _end(steps: int) -> str:
    return (pd.Timestamp(START) + pd.Timedelta(minutes=steps)).isoformat()


def _engine(steps: int) -> ReferenceEngine:
    return ReferenceEngine(load_mode(MODE), START, _end(steps), "1min", seed=SEED)


def w1_file(work: Path, steps: int) -> tuple[Path, float]:
    """The file of ``steps`` timesteps (written by the reference engine once, then reused); seconds spent writing it."""
    path = work / f"w1-{MODE}-{steps}.jsonl"
    if path.exists():
        return path, 0.0
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = write_jsonl(_engine(steps), path)  # what `results-store simulate` calls
    assert written == steps, (written, steps)
    return path, time.perf_counter() - t0


def head_file(source: Path, lines: int) -> Path:
    """The first ``lines`` lines of ``source`` (the month of the year's file), written once."""
    path = source.with_name(f"{source.stem}-head{lines}.jsonl")
    if path.exists():
        return path
    partial = path.with_name(path.name + ".part")
    with source.open("rb") as src, partial.open("wb") as out:
        for n, line in enumerate(src):
            if n == lines:
                break
            out.write(line)
    os.replace(partial, path)
    return path


# ----------------------------------------------------------------------------- children
def _before() -> float:
    gc.collect()
    return _status_mb("VmRSS") or 0.0


def _child_inprocess(steps: int, data_dir: Path) -> dict[str, Any]:
    """The engine's snapshots fed to ResultsStore, as tasks.store.store_snapshots does for `backtest`."""
    mode = load_mode(MODE)
    settings = load_settings(mode, data_dir=data_dir, execution_mode="backtest")
    engine = _engine(steps)
    engine_s = 0.0

    def timed() -> Iterator[Any]:
        nonlocal engine_s
        it = engine.iter_snapshots()
        clock = time.perf_counter
        while True:
            a = clock()
            try:
                item = next(it)
            except StopIteration:
                engine_s += clock() - a
                return
            engine_s += clock() - a
            yield item

    async def go() -> int:
        inputs = backtest_inputs(snapshot_file=None, start=START, end=_end(steps), freq="1min", seed=SEED)
        store = ResultsStore(mode, "backtest", data_dir=data_dir, run_id=RUN_ID, settings=settings, run_inputs=inputs)
        async with store:
            return await feed(store, timed(), lambda n: None)

    # The engine's arrays (~170 MB for a year) are the producer's, like bench_store's pool: generated before
    # the RSS figure "before" and outside the timing (the baseline is the store fed by the engine, not
    # the engine's set-up, which only makes the baseline slower).
    t0 = time.perf_counter()
    engine.prepare()
    prepare_s = time.perf_counter() - t0
    before = _before()
    t0, c0 = time.perf_counter(), time.process_time()
    fed = asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert fed == steps, (fed, steps)
    return {"timesteps": fed, "wall_s": wall, "cpu_s": cpu, "before_mb": before, "engine_s": engine_s,
            "engine_prepare_s": prepare_s}


def _child_ingest(path: Path, data_dir: Path) -> dict[str, Any]:
    """What the backtest-results flow's store task does with a snapshot file, without Prefect."""
    mode = load_mode(MODE)
    settings = load_settings(mode, data_dir=data_dir, execution_mode="backtest")

    async def go() -> Any:
        inputs = await asyncio.to_thread(backtest_inputs, snapshot_file=path, start=START, end=START, freq="1min",
                                         seed=SEED)
        store = ResultsStore(mode, "backtest", data_dir=data_dir, run_id=RUN_ID, settings=settings, run_inputs=inputs)
        async with store:
            return await feed_file(store, path, progress=lambda n: None)

    before = _before()
    t0, c0 = time.perf_counter(), time.process_time()
    lines = asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert lines.read == lines.written, lines.to_dict()
    return {"timesteps": lines.written, "wall_s": wall, "cpu_s": cpu, "before_mb": before, "lines": lines.to_dict()}


def _child_rerun(data_dir: Path, new_run_id: str | None) -> dict[str, Any]:
    before = _before()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = rederive_run(data_dir=data_dir, execution_mode="backtest", run_id=RUN_ID, new_run_id=new_run_id)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"timesteps": summary.timesteps_received, "wall_s": wall, "cpu_s": cpu, "before_mb": before,
            "quarantined": summary.quarantined}


def _child_main(kind: str, steps: int, path: Path, data_dir: Path, profile: Path | None) -> None:
    def run() -> dict[str, Any]:
        if kind == "inprocess":
            return _child_inprocess(steps, data_dir)
        if kind == "ingest":
            return _child_ingest(path, data_dir)
        if kind == "rerun-new":
            return _child_rerun(data_dir, f"{RUN_ID}-rerun-{int(time.time())}")
        if kind == "rerun-inplace":
            return _child_rerun(data_dir, None)
        raise SystemExit(f"unknown child {kind}")

    if profile is not None:
        # The main thread's CPU time, not the wall: on a shared machine the wall charges other jobs' turns
        # to whatever frame was running (the writer threads are not profiled either way).
        profiler = cProfile.Profile(time.thread_time)
        result = profiler.runcall(run)
        profiler.dump_stats(profile)
    else:
        result = run()
    hwm = _status_mb("VmHWM")
    result["peak_mb"] = hwm if hwm is not None else 0.0
    print(json.dumps(result))


def child(kind: str, steps: int, path: Path, data_dir: Path, profile: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--file", str(path),
           "--data-dir", str(data_dir)]
    if profile is not None:
        cmd += ["--profile-out", str(profile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **ALLOCATOR_ENV})
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} ({steps:,}) failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- main
def measure(kinds: list[str], steps: int, path: Path, work: Path, profile: str | None,
            repeat: int = 1) -> dict[str, dict[str, Any]]:
    """Each kind in its own fresh child, ``repeat`` rounds of all kinds in turn (the shared machine's load
    then weighs on each alike); per kind the round with the best wall, and the highest peak RSS of all.
    The reruns re-derive the run the round's ingest child stored."""
    results: dict[str, dict[str, Any]] = {}
    engine_dir, file_dir = work / f"data-inprocess-{steps}", work / f"data-ingest-{steps}"
    for round_ in range(repeat):
        for kind in kinds:
            if kind == "inprocess":
                shutil.rmtree(engine_dir, ignore_errors=True)
            if kind == "ingest":
                shutil.rmtree(file_dir, ignore_errors=True)
            if kind.startswith("rerun") and not (file_dir / "backtest" / "runs").exists():
                raise SystemExit(f"{kind}: no ingested run under {file_dir}; run the ingest child first")
            out = work / f"{kind}-{steps}.prof" if profile == kind and round_ == 0 else None
            got = child(kind, steps, path, engine_dir if kind == "inprocess" else file_dir, out)
            best = results.get(kind)
            if best is None or got["wall_s"] < best["wall_s"]:
                got["peak_mb"] = max(got["peak_mb"], best["peak_mb"] if best else 0.0)
                results[kind] = got
            else:
                best["peak_mb"] = max(best["peak_mb"], got["peak_mb"])
            if out is not None:
                print(f"\ncProfile of {kind} ({steps:,}), main thread CPU, saved to {out}:")
                pstats.Stats(str(out)).sort_stats("cumulative").print_stats(35)
                pstats.Stats(str(out)).sort_stats("tottime").print_stats(35)
    if "inprocess" in kinds:
        shutil.rmtree(engine_dir, ignore_errors=True)
    return results


def report(title: str, results: dict[str, dict[str, Any]]) -> None:
    base = results.get("inprocess")
    base_tps = base["timesteps"] / base["wall_s"] if base else None
    base_cpu = base["timesteps"] / base["cpu_s"] if base else None
    print(f"\n{title}")
    print(f"  {'':<22}{'timesteps/s':>12}{'ratio':>8}{'wall s':>9}{'CPU s':>8}{'per CPU s':>11}{'CPU ratio':>10}"
          f"{'peak RSS':>10}{'before':>8}")
    for kind, r in results.items():
        tps, cps = r["timesteps"] / r["wall_s"], r["timesteps"] / r["cpu_s"]
        ratio = f"{tps / base_tps:.2f}x" if base_tps else "-"
        cratio = f"{cps / base_cpu:.2f}x" if base_cpu else "-"
        print(f"  {LABELS[kind]:<22}{tps:>12,.0f}{ratio:>8}{r['wall_s']:>9.1f}{r['cpu_s']:>8.1f}{cps:>11,.0f}"
              f"{cratio:>10}{r['peak_mb']:>7.0f} MB{r['before_mb']:>5.0f} MB")
    if base:
        engine_s = base["engine_s"]
        print(f"  the baseline's engine yielded its snapshots in {engine_s:.1f} s of the {base['wall_s']:.1f} s "
              f"(the store without them: {base['timesteps'] / (base['wall_s'] - engine_s):,.0f} timesteps/s); its "
              f"set-up, {base['engine_prepare_s']:.1f} s, is not counted")
    print("  targets: ingest and reruns >= 0.80x the in-process throughput; peak RSS <= 400 MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=YEAR, help="timesteps of the 'year' (default: W1's 525,600)")
    parser.add_argument("--month-steps", type=int, default=MONTH)
    parser.add_argument("--skip-month", action="store_true")
    parser.add_argument("--only", default=",".join(KINDS), help=f"children to run, of {','.join(KINDS)}")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the children; the best wall of each is shown")
    parser.add_argument("--profile", choices=KINDS, help="run this child under cProfile (the year's)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/results-store-bench-ingest"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_main(args.child, args.steps, args.file, args.data_dir, args.profile_out)
        return

    kinds = [k for k in KINDS if k in args.only.split(",")]
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} ({os.cpu_count()} CPUs)")
    year_path, wrote_s = w1_file(args.work_dir, args.steps)
    with year_path.open("rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    how = f"written by the reference engine in {wrote_s:.1f} s" if wrote_s else "reused"
    print(f"W1 file: {year_path} ({how}): {lines:,} lines, {year_path.stat().st_size / 1e6:,.0f} MB "
          f"({year_path.stat().st_size / lines:,.0f} B a line)")

    year = measure(kinds, args.steps, year_path, args.work_dir, args.profile, args.repeat)
    rounds = f", best wall of {args.repeat} rounds" if args.repeat > 1 else ""
    report(f"year: {args.steps:,} timesteps of {MODE} (each in a fresh child{rounds})", year)
    if not args.skip_month:
        month_path = head_file(year_path, args.month_steps)
        month = measure(kinds, args.month_steps, month_path, args.work_dir, None, args.repeat)
        report(f"month: {args.month_steps:,} timesteps (the file's first lines{rounds})", month)
        print("\npeak RSS year / month (target: as flat as the in-process store, <= 1.3):")
        for kind in kinds:
            y, m = year[kind]["peak_mb"], month[kind]["peak_mb"]
            print(f"  {LABELS[kind]:<22}{y:>6.0f} / {m:.0f} MB = {y / m:.2f}  (the store's own: "
                  f"{y - year[kind]['before_mb']:.0f} / {m - month[kind]['before_mb']:.0f} MB)")
    load1 = os.getloadavg()
    print(f"\nload average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
