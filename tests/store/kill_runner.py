"""Run a store in a subprocess so a test can SIGKILL it at a chosen point.

Usage: python -m tests.store.kill_runner DATA_DIR RUN_ID MODE STEPS BATCH [KILL_AFTER_WRITES] [live]
With KILL_AFTER_WRITES=n the process kills itself right after the n-th table commit returns
(between the tables of one batch: the crash lands mid-batch). With ``live`` it runs in live mode,
acknowledges every snapshot (WAL), prints ``ACKED <n>`` and kills itself before any commit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from results_store.batch_writer import delta_table_writer
from results_store.drive import feed
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings


def main() -> None:
    data_dir, run_id, mode_name, steps, batch = sys.argv[1:6]
    kill_after = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    live = len(sys.argv) > 7 and sys.argv[7] == "live"
    mode = load_mode(mode_name)
    engine = ReferenceEngine(mode, "2024-01-01", "2024-03-01", "1min", seed=7)
    snapshots = engine.iter_snapshots(0, int(steps))
    writes = 0

    def killing_writer(*args: Any, **kwargs: Any) -> int | None:
        nonlocal writes
        version = delta_table_writer(*args, **kwargs)
        writes += 1
        if kill_after and writes >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return version

    if live:
        settings = load_settings(mode, data_dir=Path(data_dir), execution_mode="live", flush_interval=600,
                                 batch_size=10_000)

        async def acknowledge_then_die() -> None:
            store = ResultsStore(mode, "live", data_dir=Path(data_dir), run_id=run_id, settings=settings)
            await store.start()
            count = await feed(store, snapshots)
            print(f"ACKED {count}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(acknowledge_then_die())
        return

    settings = load_settings(mode, data_dir=Path(data_dir), backtest_batch_size=int(batch))

    async def run() -> None:
        async with ResultsStore(mode, "backtest", data_dir=Path(data_dir), run_id=run_id, settings=settings,
                                writer=killing_writer) as store:
            await feed(store, snapshots)
        print("DONE", flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
