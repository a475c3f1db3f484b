"""Feeding a stream of snapshots through a store: the loop the CLI, flows and benchmarks share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from results_store.store import ResultsStore
from results_store.summary import RunSummary
from schemas.modes import ModeConfig
from schemas.settings import StoreSettings

__all__ = ["feed", "run_snapshots", "run_snapshots_async"]


async def feed(store: ResultsStore, snapshots: Iterable[tuple[Any, dict[str, Any]]],
               progress: Callable[[int], None] | None = None, every: int = 1_000) -> int:
    """Await ``store_timestep_results`` for each snapshot, in order; returns how many were fed."""
    count = 0
    put = store.store_timestep_results
    for timestamp, results in snapshots:
        await put(timestamp, results)
        count += 1
        if progress is not None and count % every == 0:
            progress(every)
            await asyncio.sleep(0)  # let the worker run so the progress bar tracks commits
    if progress is not None:
        progress(count % every)
    return count


async def run_snapshots_async(mode: ModeConfig, snapshots: Iterable[tuple[Any, dict[str, Any]]], *,
                              data_dir: Path, run_id: str, execution_mode: str = "backtest",
                              settings: StoreSettings | None = None,
                              progress: Callable[[int], None] | None = None,
                              **store_kwargs: Any) -> RunSummary:
    store = ResultsStore(mode, execution_mode, data_dir=data_dir, run_id=run_id, settings=settings, **store_kwargs)
    async with store:
        await feed(store, snapshots, progress)
    assert store.summary is not None
    return store.summary


def run_snapshots(mode: ModeConfig, snapshots: Iterable[tuple[Any, dict[str, Any]]], **kwargs: Any) -> RunSummary:
    """Run a whole stream through a new store in its own event loop and return the summary."""
    return asyncio.run(run_snapshots_async(mode, snapshots, **kwargs))
