"""Reading what the store wrote: a table (or one run of it), at a version, and its history."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from results_store import delta_tables
from results_store.summary import RunSummary
from schemas.store_tables import QUARANTINE

__all__ = ["quarantined_by_table", "read_table", "table_history", "table_version"]


def read_table(data_dir: Path, execution_mode: str, table: str, *, run_id: str | None = None,
               version: int | None = None) -> pa.Table:
    """One table of an execution mode, optionally one run's rows, optionally at a past version."""
    path = delta_tables.table_path(data_dir, execution_mode, table)
    result = delta_tables.read(path, run_id=run_id, version=version)
    if "timestep" in result.column_names:
        sort = [("timestep", "ascending")]
        if "event_order" in result.column_names:
            sort.append(("event_order", "ascending"))
        result = result.sort_by(sort)
    return result


def table_version(data_dir: Path, execution_mode: str, table: str) -> int | None:
    return delta_tables.version(delta_tables.table_path(data_dir, execution_mode, table))


def table_history(data_dir: Path, execution_mode: str, table: str, limit: int | None = None) -> list[dict[str, Any]]:
    return delta_tables.history(delta_tables.table_path(data_dir, execution_mode, table), limit)


def quarantined_by_table(summary: RunSummary) -> dict[str, int]:
    """Quarantined rows of the summary's run per result table (``snapshot`` for whole snapshots)."""
    path = summary.table_paths.get(QUARANTINE)
    if not path or not delta_tables.table_exists(Path(path)):
        return {}
    # Only the one column: a badly broken run can quarantine millions of rows with their payloads.
    column = delta_tables.read(Path(path), run_id=summary.run_id, columns=["result_type"]).column("result_type")
    return dict(Counter(column.to_pylist()))
