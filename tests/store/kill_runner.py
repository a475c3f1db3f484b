"""Run a store in a subprocess that stops at an exact point of its writes, for the test to SIGKILL.

Usage: python -m tests.store.kill_runner DATA_DIR RUN_ID MODE STEPS BATCH [live]

``KILL_RUNNER_PAUSE`` chooses the point; the process then prints ``PAUSED <point>`` and blocks
until it is killed, so the test can check the tables first and kill it exactly there:

- ``commit:N``: right after this process's N-th table commit (N counted from 1).
- ``write:N``: right after its N-th Parquet file is written, before the commit that would add it
  to the table, the crash window exactly-once has to survive.

Without it the run goes to the end and prints ``DONE``. With ``live`` the store runs in live mode:
it acknowledges every snapshot (into the WAL), prints ``ACKED <n>`` and blocks, waiting for the
test's SIGKILL. Live mode commits whenever its queue runs empty, so with ``write:1`` nothing is
committed before that kill.

The store runs unchanged; only two functions of ``results_store.delta_tables``, the layer below
it, are wrapped: ``commit_run_files`` (one table commit) and ``close_run_file`` (a Parquet file
written whole, its footer included, which the batch's commit adds). The wrappers also let one of
them run at a time, so that when one pauses no other file or commit can slip in and the count at
the kill is exact (a batch's commits start only once all its files are written).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

from results_store import delta_tables
from results_store.drive import feed
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from schemas.modes import load_mode
from schemas.settings import load_settings

PAUSE_ENV = "KILL_RUNNER_PAUSE"


class Pauses:
    """Counts commits and file writes; blocks forever at the point ``KILL_RUNNER_PAUSE`` names."""

    def __init__(self, spec: str) -> None:
        self.kind, _, at = spec.partition(":")
        if spec and (self.kind not in ("commit", "write") or not at.isdigit() or int(at) < 1):
            raise SystemExit(f"{PAUSE_ENV}={spec!r}: expected commit:N or write:N with N >= 1")
        self.at = int(at) if spec else 0
        self.counts = {"commit": 0, "write": 0}
        # Held across a whole table write (file and commit) and kept while paused.
        self.one_write_at_a_time = threading.Lock()

    def passed(self, kind: str) -> None:
        self.counts[kind] += 1
        if kind == self.kind and self.counts[kind] == self.at:
            pause(f"{kind}:{self.at}")

    def install(self) -> None:
        """Wrap the two delta_tables functions (an AttributeError if they move: the test fails, loudly)."""
        append = delta_tables.commit_run_files
        write_file = delta_tables.close_run_file

        def append_counted(*args: Any, **kwargs: Any) -> int | None:
            with self.one_write_at_a_time:
                version = append(*args, **kwargs)
                if version is not None:  # None: already committed, nothing written
                    self.passed("commit")
                return version

        def write_file_counted(*args: Any, **kwargs: Any) -> Any:
            with self.one_write_at_a_time:
                add = write_file(*args, **kwargs)
                self.passed("write")
                return add

        delta_tables.commit_run_files = append_counted  # the same call, counted
        delta_tables.close_run_file = write_file_counted  # the same call, counted


def pause(point: str) -> None:
    print(f"PAUSED {point}", flush=True)
    threading.Event().wait()  # until the test's SIGKILL


def main() -> None:
    data_dir, run_id, mode_name, steps, batch = sys.argv[1:6]
    live = sys.argv[6:7] == ["live"]
    Pauses(os.environ.get(PAUSE_ENV, "")).install()
    mode = load_mode(mode_name)
    engine = ReferenceEngine(mode, "2024-01-01", "2024-03-01", "1min", seed=7)
    snapshots = engine.iter_snapshots(0, int(steps))

    if live:
        settings = load_settings(mode, data_dir=Path(data_dir), execution_mode="live", flush_interval=600,
                                 batch_size=10_000)

        async def acknowledge_then_wait() -> None:
            store = ResultsStore(mode, "live", data_dir=Path(data_dir), run_id=run_id, settings=settings)
            await store.start()
            count = await feed(store, snapshots)
            print(f"ACKED {count}", flush=True)
            pause("acked")  # blocks the event loop too: the store cannot commit before the kill

        asyncio.run(acknowledge_then_wait())
        return

    settings = load_settings(mode, data_dir=Path(data_dir), backtest_batch_size=int(batch))

    async def run() -> None:
        async with ResultsStore(mode, "backtest", data_dir=Path(data_dir), run_id=run_id, settings=settings) as store:
            await feed(store, snapshots)
        print("DONE", flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
