"""backup: report what a backup would copy (tables, versions, sizes); no copy is made yet."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from results_store.maintenance import BACKUP_NOT_DONE, backup_report
from schemas.modes import ExecutionMode
from schemas.settings import resolve_data_dir
from tasks.artifacts import publish_markdown
from tasks.maintenance import plan_backup

__all__ = ["backup"]


@flow(name="backup", log_prints=True)
async def backup(execution_mode: ExecutionMode = "backtest", data_dir: str | None = None) -> dict[str, Any]:
    """Report what a backup would copy (tables, versions, sizes); no copy is made yet.

    Args:
        execution_mode: the backtest or the live tables.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    result = await plan_backup(resolve_data_dir(data_dir), execution_mode)
    result["not_done"] = BACKUP_NOT_DONE
    await publish_markdown(backup_report(execution_mode, result), f"backup-{execution_mode}", "what a backup would copy")
    total = sum(info["bytes"] for info in result["tables"].values())
    logger.info("a backup would copy %s tables, %s bytes", len(result["tables"]), f"{total:,}")
    for caveat in BACKUP_NOT_DONE:
        logger.warning("not covered yet: %s", caveat)
    return result
