"""Tasks that write snapshots through the store: a backtest's whole stream, or a live collection.

Both are async tasks that the flow *awaits* (never ``.submit()``s), so the source loop and the
store's async queue share the flow's event loop: FIFO order holds, and back-pressure slows the
engine down instead of dropping snapshots. A run costs Prefect one task run, not one per timestep.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import flow_run

from results_store.drive import backtest_inputs, backtest_source, collect_pending, current_progress, feed, live_inputs
from results_store.file_ingest import feed_file
from results_store.simulator.live_source import LiveSource
from results_store.store import ResultsStore
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import ModeConfig, ModeName, load_mode, load_mode_file
from schemas.settings import load_settings, resolve_data_dir

__all__ = ["collect_live", "mode_config", "retry_if_transient", "store_snapshots"]


def mode_config(mode: str, config_path: str | None = None) -> ModeConfig:
    """The configuration a run uses: the user's mode file at ``config_path`` (``--config``), else ``mode``'s own.

    A user's file may have any name; its ``mode`` must be ``mode`` (RST-201 otherwise), the mode the run
    is recorded and simulated under.
    """
    if config_path is None:
        return load_mode(mode)
    config = load_mode_file(Path(config_path), user_file=True)
    if config.mode != mode:
        raise ComponentError("RST-201", f"{config_path}: field 'mode' is {config.mode!r}, but the run's mode is {mode!r}")
    return config


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only storage hiccups (RST-001/003); bad input or a run conflict fails the same way again."""
    # The engine hands the raised exception over as the Failed state's data (no result lookup needed).
    exc = state.data
    return isinstance(exc, ComponentError) and exc.transient


def _commit_metadata() -> dict[str, Any]:
    """Every table version this task commits names the flow run that wrote it."""
    return {"flow_run_id": str(flow_run.id) if flow_run.id else None}


# A retry resumes the run: each table skips what it has committed (exactly-once by app transaction).
@task(name="store-snapshots", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_if_transient)
async def store_snapshots(mode: ModeName, run_id: str, data_dir: Path, *, snapshot_file: str | None,
                          start: str, end: str, freq: str, seed: int, strict: bool,
                          batch_size: int | None, strict_file: bool = False,
                          config_path: str | None = None) -> RunSummary:
    """Feed the engine's snapshots through the results store in order; a retry resumes the run.

    A snapshot file's bad lines are quarantined or refused, each reported, and its good lines
    written (``results_store.file_ingest``); ``strict_file`` refuses a file with any bad line whole.
    """
    logger = get_run_logger()
    config = mode_config(mode, config_path)
    settings = load_settings(config, data_dir=data_dir, strict=strict or None, backtest_batch_size=batch_size,
                             execution_mode="backtest")
    hooks = current_progress()
    source, length = backtest_source(config, snapshot_file=snapshot_file, start=start, end=end, freq=freq, seed=seed)
    if snapshot_file:
        logger.info("ingesting %s into run %s", snapshot_file, run_id)
    else:
        logger.info("simulating %s: %s timesteps of %s from %s (seed %s) into run %s",
                    mode, f"{length:,}", freq, start, seed, run_id)
    if hooks is not None and length is not None:
        hooks.total(length)
    # The run's identity: a resume (a retry included) must come from the same engine parameters or file content.
    inputs = await asyncio.to_thread(backtest_inputs, snapshot_file=snapshot_file, start=start, end=end, freq=freq,
                                     seed=seed)
    store = ResultsStore(config, "backtest", data_dir=data_dir, run_id=run_id, settings=settings,
                         commit_metadata=_commit_metadata(), run_inputs=inputs)
    lines = None
    async with store:
        # A restart with this run_id skips what is committed; the progress bar counts those once.
        if snapshot_file:
            lines = await feed_file(store, snapshot_file, strict=strict_file,
                                    progress=hooks.stored if hooks is not None else None)
        else:
            await feed(store, source, hooks.stored if hooks is not None else None)
    assert store.summary is not None  # set by a clean exit of the store's context
    if lines is not None:
        store.summary.file_lines = lines.to_dict()
        for bad in lines.bad[:50]:
            logger.warning("%s", bad.error)
        if len(lines.bad) > 50:
            logger.warning("... and %s more bad lines (every one is in the event log)", len(lines.bad) - 50)
    return store.summary


@task(name="collect-live-snapshots", cache_policy=NO_CACHE)
async def collect_live(source: LiveSource, *, mode: ModeName, run_id: str, data_dir: str | None,
                       now: datetime, config_path: str | None = None) -> RunSummary:
    """Write everything the source has after the run's last stored timestep, in one collection."""
    logger = get_run_logger()
    config = mode_config(mode, config_path)
    root = resolve_data_dir(data_dir)
    settings = load_settings(config, data_dir=root, execution_mode="live")
    store = ResultsStore(config, "live", data_dir=root, run_id=run_id, settings=settings,
                         commit_metadata=_commit_metadata(), run_inputs=live_inputs(source))
    # start() waits for the run's lock, then reads what is committed and replays the WAL.
    async with store:
        committed, replayed_up_to, fed = await collect_pending(store, source, now)
        logger.info("run %s: last committed timestep %s, WAL up to %s, %s pending up to %s",
                    run_id, committed, replayed_up_to, fed, now.isoformat())
    assert store.summary is not None  # set by a clean exit of the store's context
    return store.summary
