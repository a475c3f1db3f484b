"""Run a backtest store in a subprocess and keep it open mid-run, so a test can act while it writes.

Usage: python -m tests.store.hold_runner DATA_DIR RUN_ID MODE STEPS HOLD_AT BATCH

Feeds the first HOLD_AT snapshots (of STEPS, seed 7), waits until the store has committed them,
prints ``HOLDING <n>`` and waits for a line on stdin (or its end). Meanwhile the run is what a
backtest in progress is: its lock held, its registry status ``running``, part of its timesteps
committed. Then it feeds the rest, finishes and prints ``DONE <timesteps received>``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from results_store.drive import feed
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings

COMMIT_DEADLINE_S = 120.0
POLL_S = 0.05


async def run(data_dir: Path, run_id: str, mode_name: str, steps: int, hold_at: int, batch: int) -> int:
    mode = load_mode(mode_name)
    snapshots = list(ReferenceEngine(mode, "2024-01-01", "2024-03-01", "1min", seed=7).iter_snapshots(0, steps))
    settings = load_settings(mode, data_dir=data_dir, backtest_batch_size=batch)
    async with ResultsStore(mode, "backtest", data_dir=data_dir, run_id=run_id, settings=settings) as store:
        await feed(store, snapshots[:hold_at])
        deadline = time.monotonic() + COMMIT_DEADLINE_S
        while (store.last_committed_timestep() or -1) < hold_at - 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"the first {hold_at} timesteps were not committed within {COMMIT_DEADLINE_S:g} s")
            await asyncio.sleep(POLL_S)
        print(f"HOLDING {hold_at}", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await feed(store, snapshots[hold_at:])
    assert store.summary is not None
    return store.summary.timesteps_received


def main() -> None:
    data_dir, run_id, mode_name, steps, hold_at, batch = sys.argv[1:7]
    received = asyncio.run(run(Path(data_dir), run_id, mode_name, int(steps), int(hold_at), int(batch)))
    print(f"DONE {received}", flush=True)


if __name__ == "__main__":
    main()
