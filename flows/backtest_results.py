"""backtest-results: one backtest's snapshots through the store, then its summary and report as artifacts.

The store runs in-flow (``tasks.store.store_snapshots``, awaited on the flow's event loop), so
FIFO order holds and back-pressure slows the engine down instead of dropping snapshots.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from results_store.store import ResultsStore
from schemas.identifiers import validate_run_id
from schemas.modes import ModeName
from schemas.settings import load_settings, resolve_data_dir
from tasks.artifacts import publish_run_summary
from tasks.report import publish_report, write_run_report
from tasks.store import mode_config, store_snapshots

__all__ = ["backtest_results"]


def _run_name() -> str:
    params = flow_run.parameters
    return f"backtest-{params['mode']}-{params.get('run_id') or 'new-run'}"


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
    strict_file: bool = False,
    config_path: str | None = None,
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
        strict_file: snapshot_file: refuse a file with any bad line (every one named) before anything is
            written. Default: each unparseable line is quarantined (RST-101), each line out of order
            refused (RST-103), every good line written.
        config_path: a mode file of your own (any name, anywhere; its mode field must be mode). Default:
            the mode's own file.
    """
    logger = get_run_logger()
    # Before any work: "" is refused too (it is not "no run id"), as are ids that are unsafe on disk.
    run_id = validate_run_id(run_id) if run_id is not None else ResultsStore.new_run_id(mode)
    config = mode_config(mode, config_path)
    root = resolve_data_dir(data_dir)
    summary = await store_snapshots(mode, run_id, root, snapshot_file=snapshot_file, start=start, end=end,
                                    freq=freq, seed=seed, strict=strict, batch_size=batch_size,
                                    strict_file=strict_file, config_path=config_path)
    await publish_run_summary(summary)
    # How the strategy did: the run's bundle under {data_dir}/backtest/results/{run_id}/, then its
    # summary and a link to its report.html as artifacts.
    bundle = await write_run_report(load_settings(config, data_dir=root).root, run_id, event_log_dir=root)
    await publish_report(bundle)
    logger.info("run %s: %s timesteps (%s already committed), %s quarantined rows, %.0f timesteps/s",
                run_id, f"{summary.timesteps_received:,}", f"{summary.timesteps_skipped:,}",
                summary.quarantined, summary.throughput)
    return summary.to_dict()
