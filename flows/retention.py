"""retention: list the run partitions past their retention window (a dry run for now)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from results_store.maintenance import RETENTION_NOT_DONE, retention_report
from schemas.modes import ExecutionMode
from schemas.settings import resolve_data_dir
from tasks.artifacts import publish_markdown
from tasks.maintenance import plan_retention

__all__ = ["retention"]


@flow(name="retention", log_prints=True)
async def retention(execution_mode: ExecutionMode = "backtest", retention_days: int | None = None,
                    data_dir: str | None = None) -> dict[str, Any]:
    """List the run partitions past retention: a dry run, nothing is deleted yet.

    Args:
        execution_mode: the backtest or the live tables.
        retention_days: keep finished runs this many days. Default: each run's mode file (retention_days).
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    result = await plan_retention(resolve_data_dir(data_dir), execution_mode, retention_days)
    result["not_done"] = RETENTION_NOT_DONE
    await publish_markdown(retention_report(execution_mode, result), f"retention-{execution_mode}",
                           "run partitions past retention (dry run)")
    logger.info("%s runs past retention; dry run, nothing deleted", len(result["runs_past_retention"]))
    for caveat in RETENTION_NOT_DONE:
        logger.warning("not covered yet: %s", caveat)
    return result
