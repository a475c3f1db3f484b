"""Feeding a stream of snapshots through a store: the loop the CLI, flows and benchmarks share.

Also what identifies a stream (:func:`backtest_inputs`, :func:`live_inputs`): the store records it
with the run, and refuses a resume of the run with other inputs (RST-301), because the resume would
skip every committed timestep and append the rest of another stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from results_store.inbox import file_sha256
from results_store.simulator.jsonl import read_jsonl
from results_store.simulator.live_source import LiveSource, ReferenceLiveSource
from results_store.simulator.reference import ReferenceEngine, parse_freq
from results_store.store import ResultsStore
from results_store.summary import RunSummary
from results_store.utc import to_utc
from schemas.modes import ModeConfig
from schemas.settings import StoreSettings

__all__ = [
    "ProgressHooks",
    "backtest_inputs",
    "backtest_source",
    "collect_pending",
    "current_progress",
    "feed",
    "live_inputs",
    "report_progress",
    "run_snapshots",
    "run_snapshots_async",
    "stored_timesteps",
]

Snapshots = Iterable[tuple[Any, dict[str, Any]]]


@dataclass(frozen=True)
class ProgressHooks:
    """Callbacks for a progress display: ``total(n)`` once the length is known, ``stored(n)`` as it goes.

    ``stored`` is given the run's timesteps in the tables so far (absolute, not an increment), from
    the store's own count: a retried attempt starts a new store, which counts what the failed one
    committed once (skipped as committed), so a display set from it never passes the total.
    """

    stored: Callable[[int], None]
    total: Callable[[int], None]


# A callable cannot be a flow parameter (parameters are JSON), so the CLI's progress bar reaches
# the store through a context variable; asyncio.run and Prefect's engine both copy the context.
_progress: ContextVar[ProgressHooks | None] = ContextVar("backtest_progress", default=None)


@contextmanager
def report_progress(stored: Callable[[int], None], total: Callable[[int], None]) -> Iterator[None]:
    """Within this block, backtests started from this context report their progress to these hooks."""
    token = _progress.set(ProgressHooks(stored, total))
    try:
        yield
    finally:
        _progress.reset(token)


def current_progress() -> ProgressHooks | None:
    """The progress hooks of the enclosing :func:`report_progress` block, if any."""
    return _progress.get()


def backtest_source(config: ModeConfig, *, snapshot_file: str | Path | None, start: str, end: str, freq: str,
                    seed: int) -> tuple[Snapshots, int | None]:
    """A backtest's snapshots, and their number when known: an engine's JSON Lines file, else the reference engine."""
    if snapshot_file:
        return read_jsonl(Path(snapshot_file)), None
    engine = ReferenceEngine(config, start, end, freq, seed=seed)
    return engine.iter_snapshots(), len(engine)


def backtest_inputs(*, snapshot_file: str | Path | None, start: str, end: str, freq: str, seed: int) -> dict[str, Any]:
    """What a backtest's snapshots come from, as the run's identity records it (see ``backtest_source``).

    A snapshot file is its content's sha256, so the same bytes under another path (an inbox file
    moved, a copy) are the same run. The reference engine is its parameters, normalised so that
    equal values spelled differently ("2024-01-01" and "2024-01-01 00:00", "1min" and "60s") agree.
    """
    if snapshot_file:
        return {"source": "snapshot_file", "snapshot_sha256": file_sha256(Path(snapshot_file))}
    return {"source": "reference_engine", "start": to_utc(start).isoformat(), "end": to_utc(end).isoformat(),
            "freq": _seconds(parse_freq(freq)), "seed": int(seed)}


def live_inputs(source: LiveSource) -> dict[str, Any] | None:
    """What a live feed is, for the live run's identity; None for a feed that cannot say (a real engine's)."""
    if isinstance(source, ReferenceLiveSource):
        return {"source": "reference_live", "anchor": source.anchor.isoformat(), "freq": _seconds(source.step),
                "seed": int(source.seed)}
    return None


def _seconds(step: pd.Timedelta) -> str:
    """A timestep as whole seconds ("60s"): one spelling for every way of writing the same frequency."""
    return f"{int(step.total_seconds())}s"


async def collect_pending(store: ResultsStore, source: LiveSource, now: datetime) -> tuple[int | None, int, int]:
    """Feed what ``source`` has after the run's last stored timestep, up to ``now``, into an open live store.

    Returns ``(last committed timestep, last timestep replayed from the WAL, snapshots fed)``.
    """
    committed = store.last_committed_timestep()
    # Snapshots replayed from the WAL are stored already (acknowledged); continue after them.
    replayed_up_to: int = store.get_storage_status()["last_timestep_received"]
    after = max(-1 if committed is None else committed, replayed_up_to)
    pending = source.pending(after if after >= 0 else None, now)
    fed = await feed(store, pending)
    return committed, replayed_up_to, fed


def stored_timesteps(store: ResultsStore) -> int:
    """The run's timesteps in the tables, as far as this store knows: committed before it started
    (and skipped) plus committed by it. Not what was fed: that counts a retried attempt's timesteps twice."""
    stats = store.get_storage_stats()
    return int(stats["timesteps_skipped"]) + int(stats["timesteps_written"])


async def feed(store: ResultsStore, snapshots: Iterable[tuple[Any, dict[str, Any]]],
               progress: Callable[[int], None] | None = None, every: int = 1_000) -> int:
    """Await ``store_timestep_results`` for each snapshot, in order; returns how many were fed.

    Every ``every`` snapshots, ``progress`` is given :func:`stored_timesteps` (the last commit comes
    when the store stops, after this returns: the caller reports the final count from the summary).
    """
    count = 0
    put = store.store_timestep_results
    for timestamp, results in snapshots:
        await put(timestamp, results)
        count += 1
        if progress is not None and count % every == 0:
            await asyncio.sleep(0)  # let the worker run so the progress bar tracks commits
            progress(stored_timesteps(store))
    if progress is not None:
        progress(stored_timesteps(store))
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
