"""live-snapshots: every minute, collect the pending live snapshots and write them at once.

No state lives in this process. Each run opens the live run's store, which reads the last
committed timestep from the tables and replays acknowledged-but-uncommitted snapshots from its
write-ahead log; the live source then yields only what came after. A run that dies is therefore
picked up by the next one.

Overlaps: the deployment has a concurrency limit of 1 with collision strategy CANCEL_NEW (a
cancelled run loses nothing: the next one collects everything pending). Independently of
Prefect, the store holds an OS lock per run while it writes, so two collections started
together (two CLI calls, a manual run beside the schedule) run one after the other, and the
second finds the timesteps committed and writes nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.common import publish_run_summary, resolve_data_dir
from results_store.drive import feed
from results_store.simulator.live_source import LiveSource, ReferenceLiveSource
from results_store.store import ResultsStore
from results_store.summary import RunSummary
from schemas.modes import ModeName, load_mode
from schemas.settings import load_settings

__all__ = ["collect_live", "live_snapshots"]


def _utc(value: datetime | str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@task(name="collect-live-snapshots", cache_policy=NO_CACHE)
async def collect_live(source: LiveSource, *, mode: ModeName, run_id: str, data_dir: str | None,
                       now: datetime) -> RunSummary:
    """Write everything the source has after the run's last stored timestep, in one collection."""
    logger = get_run_logger()
    config = load_mode(mode)
    root = resolve_data_dir(data_dir)
    settings = load_settings(config, data_dir=root, execution_mode="live")
    store = ResultsStore(config, "live", data_dir=root, run_id=run_id, settings=settings,
                         commit_metadata={"flow_run_id": str(flow_run.id) if flow_run.id else None})
    # start() waits for the run's lock, then reads what is committed and replays the WAL.
    async with store:
        committed = store.last_committed_timestep()
        # Snapshots replayed from the WAL are stored already (acknowledged); continue after them.
        replayed_up_to = store.get_storage_status()["last_timestep_received"]
        after = max(-1 if committed is None else committed, replayed_up_to)
        pending = source.pending(after if after >= 0 else None, now)
        logger.info("run %s: last committed timestep %s, WAL up to %s, %s pending up to %s",
                    run_id, committed, replayed_up_to, len(pending), now.isoformat())
        await feed(store, pending)
    assert store.summary is not None  # set by a clean exit of the store's context
    return store.summary


def _run_name() -> str:
    params = flow_run.parameters
    return f"live-{params.get('mode', 'usdt_market_neutral')}"


@flow(name="live-snapshots", flow_run_name=_run_name, log_prints=True)
async def live_snapshots(
    mode: ModeName = "usdt_market_neutral",
    run_id: str | None = None,
    anchor: datetime | None = None,
    freq: str = "1min",
    seed: int = 0,
    data_dir: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Collect the pending snapshots of the live feed and store them (execution mode "live").

    Args:
        mode: strategy mode of the live feed.
        run_id: live run to append to. Default: live-<mode>-<anchor date>, so each UTC day is one run.
        anchor: time of the feed's timestep 0, UTC. Default: today 00:00 UTC.
        freq: timestep of the feed (pandas frequency).
        seed: reference engine seed of the feed.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
        now: collect up to this time instead of the wall clock (replays and tests).
    """
    logger = get_run_logger()
    now_ts = _utc(now) if now is not None else pd.Timestamp(datetime.now(UTC))
    anchor_ts = _utc(anchor) if anchor is not None else now_ts.floor("1D")
    run_id = run_id or f"live-{mode}-{anchor_ts:%Y%m%d}"
    source = ReferenceLiveSource(load_mode(mode), anchor_ts, freq, seed=seed)
    summary = await collect_live(source, mode=mode, run_id=run_id, data_dir=data_dir, now=now_ts.to_pydatetime())
    written = summary.timesteps_received - summary.timesteps_skipped
    logger.info("run %s: %s new timesteps stored, %s quarantined rows", run_id, written, summary.quarantined)
    if written:
        # An empty collection changes nothing; keep the artifact history to collections that wrote.
        await publish_run_summary(summary)
    return summary.to_dict()
