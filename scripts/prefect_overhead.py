"""Prefect's overhead on a backtest: the backtest-results flow against calling the store directly.

    .venv/bin/python scripts/prefect_overhead.py [--mode usdt_market_neutral] [--days 1] [--freq 1min] [--repeat 3]

Every measurement stores the same reference-engine run into a fresh data dir, in this process:

- ``direct``: ``store.drive.run_snapshots_async`` (engine -> store), no Prefect at all;
- ``flow, cold``: the first flow call, which also starts Prefect's local ephemeral server;
- ``flow, warm``: later flow calls against the running ephemeral server.

The difference warm - direct is what Prefect adds to each run (flow and task runs, state
changes, logs, two artifacts); cold - warm is the one-off server start-up per process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_store.prefect_env import configure_prefect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="usdt_market_neutral")
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--freq", default="1min")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prefect-home", type=Path, default=Path(tempfile.gettempdir()) / "results-store-overhead",
                        help="kept between invocations: a fresh Prefect database adds its migrations to the cold run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prefect-overhead-"))
    fresh_db = not (args.prefect_home / ".prefect" / "prefect.db").exists()
    configure_prefect(args.prefect_home, quiet_console=True)
    started = time.perf_counter()
    import pandas as pd

    from flows.backtest_results import backtest_results
    from results_store.drive import run_snapshots_async
    from results_store.simulator.reference import ReferenceEngine
    from schemas.modes import load_mode

    imports_s = time.perf_counter() - started
    config = load_mode(args.mode)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    end = start + pd.Timedelta(days=args.days)
    steps = len(ReferenceEngine(config, start, end, args.freq))

    async def direct(n: int) -> float:
        t0 = time.perf_counter()
        engine = ReferenceEngine(config, start, end, args.freq)
        await run_snapshots_async(config, engine.iter_snapshots(), data_dir=work / f"direct-{n}", run_id=f"d{n}")
        return time.perf_counter() - t0

    async def via_flow(n: int) -> float:
        t0 = time.perf_counter()
        await backtest_results(mode=args.mode, run_id=f"f{n}", start=str(start), end=str(end),  # type: ignore[arg-type]
                               freq=args.freq, data_dir=str(work / f"flow-{n}"))
        return time.perf_counter() - t0

    async def measure() -> tuple[float, list[float], list[float]]:
        cold = await via_flow(0)
        warm: list[float] = []
        plain: list[float] = []
        for n in range(1, args.repeat + 1):  # interleaved, so drift hits both alike
            plain.append(await direct(n))
            warm.append(await via_flow(n))
        return cold, warm, plain

    cold, warm, plain = asyncio.run(measure())
    warm_s, plain_s = statistics.median(warm), statistics.median(plain)
    print(f"{args.mode}, {args.days:g} day(s) at {args.freq}: {steps:,} timesteps; repeat {args.repeat} (medians)")
    print(f"  imports (prefect, flows, store)     {imports_s:6.2f} s")
    print(f"  direct store call                   {plain_s:6.2f} s   runs: {', '.join(f'{x:.2f}' for x in plain)}")
    print(f"  flow, warm ephemeral server         {warm_s:6.2f} s   runs: {', '.join(f'{x:.2f}' for x in warm)}")
    print(f"  flow, cold (starts the server)      {cold:6.2f} s"
          + ("   (fresh Prefect database: includes its migrations)" if fresh_db else ""))
    print(f"  Prefect per run (warm - direct)     {warm_s - plain_s:6.2f} s "
          f"({(warm_s - plain_s) / plain_s:+.0%} of the direct call)")
    print(f"  server start-up (cold - warm)       {cold - warm_s:6.2f} s, once per process")
    print(f"data under {work}")


if __name__ == "__main__":
    main()
