"""The lifecycle log beside the runs registry: backups, restores, retention passes, verifications, pins.

One append-only Delta table per execution mode (``{root}/{execution_mode}/lifecycle``, model
``schemas.store_tables.LifecycleRecord``). It answers "when was this last backed up, to where,
how much, did it work", and holds the pins retention honours: a run is pinned while its newest
pin/unpin record is a pin.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from results_store import delta_tables
from results_store.error_map import storage_errors
from results_store.runs import code_version, latest_run
from schemas.errors import ComponentError
from schemas.store_tables import LIFECYCLE, LIFECYCLE_SCHEMA

__all__ = ["LifecycleEntry", "append", "lifecycle_path", "new_record_id", "pin", "pinned_runs", "read_lifecycle", "unpin"]


def lifecycle_path(root: Path, execution_mode: str) -> Path:
    return delta_tables.table_path(root, execution_mode, LIFECYCLE)


def new_record_id(kind: str) -> str:
    """``<kind>-<UTC time>-<random>``: sortable, and unique across processes."""
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}"


@dataclass
class LifecycleEntry:
    """One record before it is written; ``detail`` becomes ``detail_json``."""

    kind: str
    execution_mode: str
    status: str = "ok"
    files: int = 0
    bytes: int = 0
    run_id: str | None = None
    location: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    record_id: str = ""


def append(root: Path, entry: LifecycleEntry) -> str:
    """Append ``entry`` to its execution mode's lifecycle log; returns its record id."""
    record_id = entry.record_id or new_record_id(entry.kind)
    row = {
        "record_id": record_id, "kind": entry.kind, "execution_mode": entry.execution_mode, "run_id": entry.run_id,
        "location": entry.location, "status": entry.status, "files": int(entry.files), "bytes": int(entry.bytes),
        "detail_json": orjson.dumps(entry.detail, default=str, option=orjson.OPT_SORT_KEYS).decode(),
        "started_at": entry.started_at, "finished_at": datetime.now(UTC), "code_version": code_version(),
    }
    path = lifecycle_path(root, entry.execution_mode)
    with storage_errors("append to the lifecycle log", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        delta_tables.write_plain(path, pa.Table.from_pylist([row], schema=LIFECYCLE_SCHEMA))
    return record_id


def read_lifecycle(root: Path, execution_mode: str, *, kind: str | None = None) -> pd.DataFrame:
    """Every record (of ``kind``), newest first."""
    path = lifecycle_path(root, execution_mode)
    if not delta_tables.table_exists(path):
        return LIFECYCLE_SCHEMA.empty_table().to_pandas()
    frame = delta_tables.read(path).to_pandas()
    if kind is not None:
        frame = frame[frame["kind"] == kind]
    return frame.sort_values("finished_at", ascending=False, kind="stable").reset_index(drop=True)


def pinned_runs(root: Path, execution_mode: str) -> set[str]:
    """Runs whose newest pin or unpin record is a pin: retention keeps them whatever their age."""
    frame = read_lifecycle(root, execution_mode)
    frame = frame[frame["kind"].isin(["pin", "unpin"])]
    newest = frame.drop_duplicates("run_id", keep="first")
    return set(newest.loc[newest["kind"] == "pin", "run_id"].astype(str))


def _pin(root: Path, execution_mode: str, run_id: str, kind: str, note: str) -> str:
    if latest_run(root, execution_mode, run_id) is None:
        raise ComponentError("RST-302", f"no {execution_mode} run {run_id!r} in the runs registry",
                             details={"run_id": run_id})
    return append(root, LifecycleEntry(kind, execution_mode, run_id=run_id, detail={"note": note} if note else {}))


def pin(root: Path, execution_mode: str, run_id: str, note: str = "") -> str:
    """Keep ``run_id`` through retention until it is unpinned."""
    return _pin(root, execution_mode, run_id, "pin", note)


def unpin(root: Path, execution_mode: str, run_id: str, note: str = "") -> str:
    """Let retention remove ``run_id`` again once it is old enough."""
    return _pin(root, execution_mode, run_id, "unpin", note)
