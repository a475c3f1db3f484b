"""retention: expire old runs and rows, compact finished live days, vacuum, prune old event logs.

Nightly for both execution modes (``retention/nightly``), last of the nightly flows: it never
removes a run that no complete backup holds (when backups are configured), nor a pinned one.
What it removes is listed in its markdown artifact; ``dry_run`` changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from results_store.retention import retention_markdown
from schemas.modes import ExecutionMode
from schemas.settings import resolve_data_dir
from tasks.artifacts import publish_markdown
from tasks.maintenance import apply_retention, prune_event_logs

__all__ = ["retention"]


@flow(name="retention", log_prints=True)
async def retention(execution_modes: list[ExecutionMode] | None = None, retention_days: int | None = None,
                    dry_run: bool = False, backup_location: str | None = None, data_dir: str | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """Remove backtest runs past retention and live rows past it (never pinned or not backed up), then vacuum.

    Args:
        execution_modes: which tables. Default: both backtest and live.
        retention_days: keep this many days. Default: each run's mode file (retention_days).
        dry_run: list what would be removed (runs, rows, files, bytes) and change nothing.
        backup_location: the backup whose completeness retention checks. Default: RESULTS_STORE_BACKUP_URI,
            else the directory beside the data dir when it holds a backup.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
        now: the clock (replays and tests). Default: the wall clock.
    """
    logger = get_run_logger()
    root = resolve_data_dir(data_dir)
    modes: list[str] = list(execution_modes or ["backtest", "live"])
    results = {mode: await apply_retention(root, mode, dry_run=dry_run, retention_days=retention_days,
                                           backup_location=backup_location, data_dir=root, now=now) for mode in modes}
    if not dry_run:
        pruned = await prune_event_logs(root, now)
        logger.info("removed %d event-log files older than 30 days", len(pruned))
    await publish_markdown(retention_markdown(results), "retention", "runs and rows removed, vacuum")
    for mode, r in results.items():
        t = r["totals"]
        logger.info("%s: %s runs expired, %s rows, %.2f MB; vacuum %s files, %.2f MB%s", mode, t["runs"], f"{t['rows']:,}",
                    t["bytes"] / 1e6, t["vacuum_files"], t["vacuum_bytes"] / 1e6, " (dry run)" if dry_run else "")
        for held in r["held"]:
            logger.warning("kept %s although past retention: %s", held["run_id"], held["why"])
    return results
