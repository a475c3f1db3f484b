"""backtest-results: one backtest's snapshots through the store, then its summary as artifacts.

The store runs in-flow. ``store-snapshots`` is an async task that the flow *awaits* (never
``.submit()``s), so the engine loop and the store's async queue share the flow's event loop:
FIFO order holds, and back-pressure slows the engine down instead of dropping snapshots.
A run costs Prefect two task runs, not one per timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import flow_run
from prefect.states import State

from flows.common import publish_run_summary, resolve_data_dir
from results_store.drive import feed
from results_store.simulator.jsonl import read_jsonl
from results_store.simulator.reference import ReferenceEngine
from results_store.store import ResultsStore
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import ModeName, load_mode
from schemas.settings import load_settings

__all__ = ["ProgressHooks", "backtest_results", "report_progress", "store_snapshots"]


@dataclass(frozen=True)
class ProgressHooks:
    """Callbacks for a progress display: ``total(n)`` once the length is known, ``advance(n)`` as it goes."""

    advance: Callable[[int], None]
    total: Callable[[int], None]


# A callable cannot be a flow parameter (parameters are JSON), so the CLI's progress bar reaches
# the flow through a context variable; asyncio.run and Prefect's engine both copy the context.
_progress: ContextVar[ProgressHooks | None] = ContextVar("backtest_progress", default=None)


@contextmanager
def report_progress(advance: Callable[[int], None], total: Callable[[int], None]) -> Iterator[None]:
    """Within this block, backtest-results flows called from this context report their progress."""
    token = _progress.set(ProgressHooks(advance, total))
    try:
        yield
    finally:
        _progress.reset(token)


def _retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only storage hiccups (RST-001/003); bad input or a run conflict fails the same way again."""
    # The engine hands the raised exception over as the Failed state's data (no result lookup needed).
    exc = state.data
    return isinstance(exc, ComponentError) and exc.transient


def _run_name() -> str:
    params = flow_run.parameters
    return f"backtest-{params['mode']}-{params.get('run_id') or 'new-run'}"


@task(name="store-snapshots", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=_retry_if_transient)
async def store_snapshots(mode: ModeName, run_id: str, data_dir: Path, *, snapshot_file: str | None,
                          start: str, end: str, freq: str, seed: int, strict: bool,
                          batch_size: int | None) -> RunSummary:
    """Feed the engine's snapshots through the results store in order; a retry resumes the run."""
    logger = get_run_logger()
    config = load_mode(mode)
    settings = load_settings(config, data_dir=data_dir, strict=strict or None, backtest_batch_size=batch_size,
                             execution_mode="backtest")
    hooks = _progress.get()
    source: Iterable[tuple[Any, dict[str, Any]]]
    if snapshot_file:
        source = read_jsonl(Path(snapshot_file))
        logger.info("ingesting %s into run %s", snapshot_file, run_id)
    else:
        engine = ReferenceEngine(config, start, end, freq, seed=seed)
        if hooks is not None:
            hooks.total(len(engine))
        source = engine.iter_snapshots()
        logger.info("simulating %s: %s timesteps of %s from %s (seed %s) into run %s",
                    mode, f"{len(engine):,}", freq, start, seed, run_id)
    store = ResultsStore(config, "backtest", data_dir=data_dir, run_id=run_id, settings=settings,
                         commit_metadata={"flow_run_id": str(flow_run.id) if flow_run.id else None})
    async with store:
        # A restart with this run_id skips what is committed; the progress bar counts those too.
        await feed(store, source, hooks.advance if hooks is not None else None)
    assert store.summary is not None  # set by a clean exit of the store's context
    return store.summary


@flow(name="backtest-results", flow_run_name=_run_name, log_prints=True)
async def backtest_results(
    mode: ModeName,
    run_id: str | None = None,
    start: str = "2024-01-01",
    end: str = "2024-01-02",
    freq: str = "1min",
    seed: int = 0,
    snapshot_file: str | None = None,
    data_dir: str | None = None,
    strict: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Store a backtest's snapshots (reference engine, or an engine's JSON Lines file) and publish its summary.

    Args:
        mode: strategy mode; it decides which result tables are written.
        run_id: run identifier; the same id resumes an interrupted run. Default: a fresh id.
        start: reference engine: first timestamp, UTC (e.g. 2024-01-01).
        end: reference engine: end, exclusive, UTC.
        freq: reference engine: timestep, a pandas frequency from 1min to 1D.
        seed: reference engine: random seed; the same seed gives the same snapshots.
        snapshot_file: an engine's JSON Lines snapshot file; when set, start, end, freq and seed are ignored.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
        strict: fail the run on an invalid row instead of quarantining it.
        batch_size: timesteps per commit. Default: RESULTS_STORE_BACKTEST_BATCH_SIZE (20,000).
    """
    logger = get_run_logger()
    root = resolve_data_dir(data_dir)
    run_id = run_id or ResultsStore.new_run_id(mode)
    summary = await store_snapshots(mode, run_id, root, snapshot_file=snapshot_file, start=start, end=end,
                                    freq=freq, seed=seed, strict=strict, batch_size=batch_size)
    await publish_run_summary(summary)
    logger.info("run %s: %s timesteps (%s already committed), %s quarantined rows, %.0f timesteps/s",
                run_id, f"{summary.timesteps_received:,}", f"{summary.timesteps_skipped:,}",
                summary.quarantined, summary.throughput)
    return summary.to_dict()
