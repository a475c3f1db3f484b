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
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from results_store.live_sources import REFERENCE_SOURCE, load_live_source
from results_store.simulator.live_source import LiveSource, ReferenceLiveSource
from results_store.utc import to_utc
from schemas.identifiers import validate_run_id
from schemas.modes import ModeName
from tasks.artifacts import publish_run_summary
from tasks.store import collect_live, mode_config

__all__ = ["live_snapshots"]


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
    source: str = REFERENCE_SOURCE,
    source_kwargs: dict[str, Any] | None = None,
    config_path: str | None = None,
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
        source: where snapshots come from, as package.module:Class implementing LiveSource. Default: the
            reference simulator; results_store.live_sources:JsonlLiveSource reads an engine's JSON Lines file(s).
        source_kwargs: the source's keyword arguments as JSON, e.g. {"path": "/feeds/live.jsonl"}. For the
            reference source, anchor, freq and seed are used when this is empty.
        config_path: a mode file of your own (any name, anywhere; its mode field must be mode). Default:
            the mode's own file.
    """
    logger = get_run_logger()
    if run_id is not None:  # before any work: "" is refused too (it is not "no run id")
        validate_run_id(run_id)
    config = mode_config(mode, config_path)
    now_ts = to_utc(now) if now is not None else pd.Timestamp(datetime.now(UTC))
    anchor_ts = to_utc(anchor) if anchor is not None else now_ts.floor("1D")
    run_id = run_id or f"live-{mode}-{anchor_ts:%Y%m%d}"
    if source == REFERENCE_SOURCE and not source_kwargs:
        feed: LiveSource = ReferenceLiveSource(config, anchor_ts, freq, seed=seed)
    else:
        feed = load_live_source(source, source_kwargs, config)
    summary = await collect_live(feed, mode=mode, run_id=run_id, data_dir=data_dir, now=now_ts.to_pydatetime(),
                                 config_path=config_path)
    written = summary.timesteps_received - summary.timesteps_skipped
    logger.info("run %s: %s new timesteps stored, %s quarantined rows", run_id, written, summary.quarantined)
    if written:
        # An empty collection changes nothing; keep the artifact history to collections that wrote.
        await publish_run_summary(summary)
    return summary.to_dict()
