"""The backtest inbox: which engine snapshot files are finished, their ledger, and where they go after.

A file in ``{data_dir}/inbox/`` is **finished** when a ``<file>.done`` marker sits beside it, or
when it has not been modified for ``settle_seconds`` (an appending writer updates the mtime, so an
unchanged mtime means an unchanged size). ``*.jsonl.part`` files are never looked at.

Names: ``<mode>__<run_id>.jsonl`` gives the mode and the run_id; any other name uses a default
mode and the file stem as run_id.

The ledger (``{data_dir}/backtest/inbox_ledger``, a Delta table whose schema is
:class:`schemas.store_tables.InboxLedgerEntry`) records each file's content hash as started,
processed or failed, so the same content is ingested once, under any name. The
``backtest-inbox`` flow drives these functions.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from results_store import delta_tables
from results_store.error_map import storage_errors
from results_store.markdown import markdown_table
from results_store.runs import latest_run
from results_store.simulator.jsonl import check_jsonl
from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES
from schemas.store_tables import INBOX_LEDGER, INBOX_LEDGER_SCHEMA

__all__ = [
    "InboxFilesFailed",
    "InboxOutcome",
    "LedgerStatus",
    "append_ledger",
    "check_run_id_free",
    "count_snapshots",
    "file_sha256",
    "finished_files",
    "inbox_report",
    "ledger_path",
    "mode_and_run",
    "move_aside",
    "read_ledger",
]

LedgerStatus = Literal["started", "processed", "failed"]


class InboxFilesFailed(Exception):
    """Some inbox files could not be ingested; they are in ``inbox/failed/`` with their reasons."""

    def __init__(self, failed: list[str], reasons: dict[str, str]) -> None:
        self.failed = failed
        self.reasons = reasons
        super().__init__(failed, reasons)

    def __str__(self) -> str:
        listed = "; ".join(f"{name}: {self.reasons.get(name, '?')}" for name in self.failed)
        return f"{len(self.failed)} inbox file(s) failed and were moved to inbox/failed/: {listed}"


@dataclass
class InboxOutcome:
    """What one scan did with each file it saw."""

    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)  # file -> run_id it was stored as

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "skipped": self.skipped, "failed": self.failed,
                "waiting": self.waiting, "runs": self.runs}


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finished_files(inbox: Path, settle_seconds: float, now: float | None = None) -> tuple[list[Path], list[Path]]:
    """``(finished, waiting)`` snapshot files, oldest first: finished = a .done marker, or settled."""
    now = time.time() if now is None else now
    finished: list[Path] = []
    waiting: list[Path] = []
    candidates = [(p.stat().st_mtime, p) for p in inbox.glob("*.jsonl") if p.is_file()]
    for mtime, path in sorted(candidates):
        marker = path.with_name(path.name + ".done")
        (finished if marker.exists() or now - mtime >= settle_seconds else waiting).append(path)
    return finished, waiting


def mode_and_run(path: Path, default_mode: str | None) -> tuple[str, str]:
    """``(mode, run_id)`` from ``<mode>__<run_id>.jsonl``, else ``(default_mode, stem)``."""
    stem = path.stem
    prefix, sep, rest = stem.partition("__")
    if sep and prefix in MODE_NAMES and rest:
        return prefix, rest
    if default_mode is None:
        raise ComponentError("RST-201", f"{path.name}: the name does not start with a mode "
                             "(<mode>__<run_id>.jsonl) and the flow has no mode parameter")
    return default_mode, stem


def move_aside(path: Path, folder: Path) -> Path:
    """Move a file (dropping its .done marker) into folder, never overwriting a file already there."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    counter = 1
    while target.exists():
        target = folder / f"{path.stem}~{counter}{path.suffix}"
        counter += 1
    shutil.move(str(path), target)
    path.with_name(path.name + ".done").unlink(missing_ok=True)
    return target


def ledger_path(data_dir: Path) -> Path:
    """The inbox ledger's Delta table."""
    return delta_tables.table_path(data_dir, "backtest", INBOX_LEDGER)


def read_ledger(data_dir: Path) -> list[dict[str, Any]]:
    """Every ledger entry, oldest first."""
    path = ledger_path(data_dir)
    if not delta_tables.table_exists(path):
        return []
    return sorted(delta_tables.read(path).to_pylist(), key=lambda e: e["recorded_at"])


def append_ledger(data_dir: Path, *, sha256: str, file: str, status: LedgerStatus, run_id: str | None = None,
                 mode: str | None = None, timesteps: int | None = None, detail: str = "") -> None:
    """Append one entry to the ledger (one small commit)."""
    entry = {"sha256": sha256, "file": file, "run_id": run_id, "mode": mode, "status": status,
             "timesteps": timesteps, "detail": detail, "recorded_at": datetime.now(UTC)}
    path = ledger_path(data_dir)
    with storage_errors("append inbox ledger entry", path):
        delta_tables.write_plain(path, pa.Table.from_pylist([entry], schema=INBOX_LEDGER_SCHEMA))


def count_snapshots(path: Path) -> int:
    """Check the whole file before anything is written; one error listing EVERY bad line, or the count.

    The inbox's rule is all or nothing: a file with any line that cannot be parsed, holds a value
    the tables cannot (a timestep past 2^63-1, a year past 2262), or breaks the order the store
    requires (a duplicate or backward timestep, an earlier timestamp in UTC) writes nothing and goes
    to ``failed/`` with all its bad lines in the reason, so one round of fixes is enough. The fixed
    file dropped again (any name) is a new content and is ingested. Snapshots that parse but break
    the components' contract are quarantined like in any run; they do not fail the file.
    """
    check = check_jsonl(path)
    if check.bad:
        codes = sorted({b.error.error_code for b in check.bad})
        code = "RST-103" if codes == ["RST-103"] else "RST-101"
        raise ComponentError(code, f"{path.name}: {len(check.bad)} of {check.lines} lines are bad, nothing was "
                             f"written; fix them and drop the file again:\n{check.report()}",
                             details={"file": str(path), "bad_lines": [b.line for b in check.bad]})
    if check.snapshots == 0:
        raise ComponentError("RST-101", f"{path.name}: no snapshots in the file")
    return check.snapshots


def check_run_id_free(data_dir: Path, run_id: str, sha256: str, ledger: list[dict[str, Any]]) -> None:
    """A run_id already in the registry may only be resumed by the same content (an interrupted ingest)."""
    existing = latest_run(data_dir, "backtest", run_id)
    if existing is None:
        return
    started = [e for e in ledger if e["run_id"] == run_id and e["status"] == "started"]
    if started and started[-1]["sha256"] == sha256:
        return
    raise ComponentError(
        "RST-301",
        f"run {run_id!r} already exists ({existing['status']}) with other snapshots; the store would skip "
        f"every timestep it has committed. Rename the file to <mode>__<new run id>.jsonl and drop it again.",
    )


def inbox_report(outcome: InboxOutcome) -> str:
    """Markdown: each file the scan saw and what became of it."""
    rows = [{"file": name, "outcome": kind, "run_id": outcome.runs.get(name, "")}
            for kind in ("processed", "skipped", "failed", "waiting") for name in getattr(outcome, kind)]
    body = markdown_table(rows) or "The inbox had no snapshot files."
    return f"# Inbox scan\n\n{body}\n"
