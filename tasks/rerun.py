"""The rerun task: re-derive a run's result tables from its raw snapshots.

No retries: what a rerun refuses (a run being written or not finished, a live day not over, a
damaged raw snapshot) is refused the same way a second later, and the rerun writes nothing before it
has checked all of it.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from results_store.rerun import rederive_run_async
from results_store.summary import RunSummary
from schemas.settings import resolve_data_dir

__all__ = ["rederive"]


@task(name="rederive-run", cache_policy=NO_CACHE)
async def rederive(run_id: str, *, execution_mode: str, data_dir: str | None, overrides: dict[str, Any],
                   new_run_id: str | None, strict: bool, empty_dropped_tables: bool = False) -> RunSummary:
    """Re-derive the run's result tables from raw_snapshots (a new run, or new versions in place)."""
    return await rederive_run_async(data_dir=resolve_data_dir(data_dir), execution_mode=execution_mode,
                                    run_id=run_id, overrides=overrides, new_run_id=new_run_id, strict=strict,
                                    empty_dropped_tables=empty_dropped_tables)
