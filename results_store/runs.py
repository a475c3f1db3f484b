"""The runs registry: an append-only Delta table; a run's latest record is its current state.

Append-only keeps concurrent runs conflict-free (Delta appends never conflict) and keeps each
run's history: started, resumed, finished, rerun with the table versions before and after.

A run id names one run: its mode, its config and its **inputs** (what its snapshots come from: the
reference engine's start, end, freq and seed, or a snapshot file's content sha256). The inputs are
recorded in ``inputs_json`` by each start that states them; records that do not restate them (a
finish, a rerun) leave the column null, so a run's inputs are those of its newest record that has
any. :func:`input_differences` says what a resume would change. A run recorded without inputs
(before they were kept, or by an engine that states none) adopts those of the first start that
gives them. Registries created before the column existed are read with it as null and gain it on
their next append (Delta schema merge).
"""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from results_store import delta_tables
from results_store.error_map import storage_errors
from schemas.store_tables import RUNS, RUNS_SCHEMA

__all__ = [
    "append_run_record",
    "code_version",
    "input_differences",
    "latest_run",
    "read_runs",
    "run_lock_path",
    "runs_path",
]

REGISTRY_FILES_BEFORE_COMPACTION = 32


def runs_path(root: Path, execution_mode: str) -> Path:
    return delta_tables.table_path(root, execution_mode, RUNS)


def run_lock_path(root: Path, execution_mode: str, run_id: str) -> Path:
    """The OS lock every writer of the run holds while it writes (``ResultsStore`` and reruns alike)."""
    return Path(root) / execution_mode / "_locks" / f"{run_id}.lock"


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        version = importlib.metadata.version("results-store")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


def append_run_record(
    root: Path,
    execution_mode: str,
    *,
    run_id: str,
    mode: str,
    status: str,
    config_json: dict[str, Any],
    config_hash: str,
    started_at: datetime,
    finished_at: datetime | None = None,
    parent_run_id: str | None = None,
    row_counts: dict[str, int] | None = None,
    table_versions: dict[str, Any] | None = None,
    note: str = "",
    inputs: dict[str, Any] | None = None,
) -> None:
    """Append one state of a run to the registry; ``inputs`` when this state states them (see the module docstring)."""
    record = {
        "run_id": run_id,
        "mode": mode,
        "execution_mode": execution_mode,
        "status": status,
        "config_json": orjson.dumps(config_json, option=orjson.OPT_SORT_KEYS).decode(),
        "config_hash": config_hash,
        "code_version": code_version(),
        "parent_run_id": parent_run_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "row_counts_json": orjson.dumps(row_counts or {}, option=orjson.OPT_SORT_KEYS).decode(),
        "table_versions_json": orjson.dumps(table_versions or {}, option=orjson.OPT_SORT_KEYS).decode(),
        "note": note,
        "recorded_at": datetime.now(UTC),
        "inputs_json": None if inputs is None else orjson.dumps(inputs, option=orjson.OPT_SORT_KEYS).decode(),
    }
    table = pa.Table.from_pylist([record], schema=RUNS_SCHEMA)
    path = runs_path(root, execution_mode)
    with storage_errors("append run record", path):
        # Partitioned by run: a run's current state is read from its own files only, however many
        # runs (or minutes of a live run) the registry has seen.
        # merge_schema: a registry created before a column existed gains it here instead of refusing the record.
        delta_tables.write_plain(path, table, partitioned=True, merge_schema=True)
    # Every record is a file; a live run gains one per collection, so merge them now and then.
    delta_tables.compact_run(path, run_id, min_files=REGISTRY_FILES_BEFORE_COMPACTION)


def read_runs(root: Path, execution_mode: str, *, history: bool = False) -> pd.DataFrame:
    """The latest record per run (or every record with ``history=True``), newest first."""
    path = runs_path(root, execution_mode)
    if not delta_tables.table_exists(path):
        return RUNS_SCHEMA.empty_table().to_pandas()
    frame = delta_tables.read(path).to_pandas().sort_values("recorded_at", ascending=False, kind="stable")
    if not history:
        frame = frame.drop_duplicates("run_id", keep="first")
    return frame.reset_index(drop=True)


def latest_run(root: Path, execution_mode: str, run_id: str) -> dict[str, Any] | None:
    """The current state of one run, or None if the registry has never seen it."""
    path = runs_path(root, execution_mode)
    if not delta_tables.table_exists(path):
        return None
    rows = delta_tables.read(path, run_id=run_id).to_pandas()
    if rows.empty:
        return None
    rows = rows.sort_values("recorded_at", ascending=False, kind="stable")
    record = {k: (None if _missing(v) else v) for k, v in rows.iloc[0].to_dict().items()}
    record["row_counts"] = orjson.loads(record["row_counts_json"] or "{}")
    record["table_versions"] = orjson.loads(record["table_versions_json"] or "{}")
    # The newest record that states inputs; a registry from before the column has none.
    stated = [v for v in rows.get("inputs_json", pd.Series(dtype=object)) if not _missing(v)]
    record["inputs"] = orjson.loads(stated[0]) if stated else None
    return record


def input_differences(recorded: dict[str, Any] | None, given: dict[str, Any] | None) -> list[str]:
    """What ``given`` changes in a run's ``recorded`` inputs, one ``"<key> <given> != <recorded>"`` each.

    Empty when they agree, or when either side is None: a run without recorded inputs has nothing to
    compare against, and an engine that states none keeps the store's earlier behaviour.
    """
    if recorded is None or given is None:
        return []
    given = orjson.loads(orjson.dumps(given))  # compare in the recorded (JSON) form: a tuple is a list there
    missing = "(none)"
    return [f"{key} {given.get(key, missing)} != {recorded.get(key, missing)}"
            for key in sorted(set(recorded) | set(given)) if given.get(key, missing) != recorded.get(key, missing)]


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
