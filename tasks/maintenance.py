"""Data-lifecycle tasks: verify file checksums, back up, apply retention, prune old event logs.

Each is one verb over the library (``results_store.checksums``, ``.backup``, ``.retention``) and
runs it in a worker thread. Retries only for transient storage errors (a file briefly locked, a
slow mount, a commit conflict with a writer): a damaged file (RST-005), a full disk or a refused
write fail the same way again, so they are not retried.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from results_store import backup as backups
from results_store import checksums, retention
from results_store.checksums import Problem, TableReport, VerifyReport
from results_store.events import EventLog
from tasks.store import retry_if_transient

__all__ = ["apply_retention", "back_up_tables", "log_corruption", "prune_event_logs", "verify_file_checksums"]


@task(name="verify-file-checksums", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_if_transient)
async def verify_file_checksums(root: Path, execution_mode: str, all_versions: bool = False) -> dict[str, Any]:
    """Hash every data file, Delta log entry and checkpoint of one execution mode against its manifest."""
    report = await asyncio.to_thread(checksums.verify, root, [execution_mode], all_versions=all_versions)
    return report.to_json()


@task(name="log-corruption", cache_policy=NO_CACHE)
async def log_corruption(data_dir: Path, problems: list[dict[str, Any]], execution_mode: str) -> None:
    """Write one RST-005 (CRITICAL) error event naming every damaged file to the event log."""
    found = [Problem(**{**p, "runs": tuple(p["runs"])}) for p in problems]
    report = VerifyReport([TableReport(execution_mode, "*", problems=found)])
    log = EventLog(data_dir, buffered=False, correlation_id=f"checksum-{execution_mode}")
    log.log_error(report.error(), {"execution_mode": execution_mode})
    log.close()


@task(name="back-up-tables", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30,
      retry_condition_fn=retry_if_transient)
async def back_up_tables(root: Path, execution_mode: str, location: str) -> dict[str, Any]:
    """Copy the files the last complete backup lacks to ``location``, verified; its manifest last."""
    result = await asyncio.to_thread(backups.backup, root, execution_mode, location)
    return result.to_json()


@task(name="apply-retention", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=30,
      retry_condition_fn=retry_if_transient)
async def apply_retention(root: Path, execution_mode: str, *, dry_run: bool, retention_days: int | None,
                          backup_location: str | None, data_dir: Path, now: datetime | None = None) -> dict[str, Any]:
    """Expire old runs and rows (never pinned or not backed up), compact finished live days, vacuum."""
    result = await asyncio.to_thread(retention.run_retention, root, execution_mode, dry_run=dry_run, now=now,
                                     retention_days=retention_days, backup_uri=backup_location, data_dir=data_dir)
    return result.to_json()


@task(name="prune-event-logs", cache_policy=NO_CACHE)
async def prune_event_logs(data_dir: Path, now: datetime | None = None) -> list[str]:
    """Remove rotated event-log files older than 30 days."""
    return await asyncio.to_thread(retention.prune_event_logs, data_dir, now)
