"""The export task: a run's result tables to files or a database (its one side effect)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from results_store.export import ExportFormat, export_run
from tasks.store import retry_if_transient

__all__ = ["export_results"]


# Retried only on transient errors (a database connection that dropped): a re-export replaces the
# run's rows in one transaction and rewrites files whole, so a retry never doubles anything.
@task(name="export-results", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_if_transient)
async def export_results(root: Path, run_id: str, format: ExportFormat, out: Path, *, execution_mode: str = "backtest",
                         db_url: str | None = None, tables: list[str] | None = None) -> dict[str, Any]:
    """Export the run's result tables (csv, jsonl, json, parquet or db) and return the manifest."""
    return await asyncio.to_thread(export_run, root, run_id, format, out, execution_mode=execution_mode,
                                   db_url=db_url, tables=tables)
