"""backtest-inbox: scheduled ingestion of finished engine snapshot files, each exactly once.

``{data_dir}/inbox/*.jsonl`` files are taken oldest first. A file is **finished** when a
``<file>.done`` marker sits beside it, or when it has not been modified for ``settle_seconds``
(an appending writer updates the mtime, so an unchanged mtime means an unchanged size). Anything
else is left alone for a later scan; ``*.jsonl.part`` files are never looked at, so a writer that
renames on completion is always safe.

Names: ``<mode>__<run_id>.jsonl`` gives the mode and the run_id; any other name uses the
``mode`` parameter and the file stem as run_id.

Each finished file is hashed (sha256) and looked up in the ``inbox_ledger`` Delta table
(``{data_dir}/backtest/inbox_ledger``): content ingested before is skipped, under any name. New
content is parsed line by line first, so a corrupt file writes nothing, then stored through the
backtest-results flow as a subflow. Ingested and skipped files move to ``inbox/processed/``; a
file that failed moves to ``inbox/failed/`` with ``<file>.reason.txt`` beside it, and the scan
ends Failed after handling every other file, so the failure shows in the UI.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.backtest_results import backtest_results
from flows.common import markdown_table, publish_markdown, resolve_data_dir
from results_store import delta_tables
from results_store.run_lock import RunLock
from results_store.runs import latest_run
from results_store.simulator.jsonl import read_jsonl
from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES, ModeName

__all__ = [
    "LEDGER_SCHEMA",
    "InboxFilesFailed",
    "InboxOutcome",
    "backtest_inbox",
    "file_sha256",
    "finished_files",
    "ledger_path",
    "mode_and_run",
    "move_aside",
    "read_ledger",
]

LedgerStatus = Literal["started", "processed", "failed"]

LEDGER_SCHEMA = pa.schema([
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("file", pa.string(), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("timesteps", pa.int64()),
    pa.field("detail", pa.string()),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


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
    return delta_tables.table_path(data_dir, "backtest", "inbox_ledger")


def read_ledger(data_dir: Path) -> list[dict[str, Any]]:
    """Every ledger entry, oldest first."""
    path = ledger_path(data_dir)
    if not delta_tables.table_exists(path):
        return []
    return sorted(delta_tables.read(path).to_pylist(), key=lambda e: e["recorded_at"])


def _append_ledger(data_dir: Path, *, sha256: str, file: str, status: LedgerStatus, run_id: str | None = None,
                   mode: str | None = None, timesteps: int | None = None, detail: str = "") -> None:
    entry = {"sha256": sha256, "file": file, "run_id": run_id, "mode": mode, "status": status,
             "timesteps": timesteps, "detail": detail, "recorded_at": datetime.now(UTC)}
    path = ledger_path(data_dir)
    with delta_tables.storage_errors("append inbox ledger entry", path):
        delta_tables.write_plain(path, pa.Table.from_pylist([entry], schema=LEDGER_SCHEMA))


@task(name="record-in-ledger", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 4, 15])
async def record_in_ledger(data_dir: Path, *, sha256: str, file: str, status: LedgerStatus, run_id: str | None = None,
                           mode: str | None = None, timesteps: int | None = None, detail: str = "") -> None:
    """Append one entry (started, processed or failed) to the inbox ledger."""
    await asyncio.to_thread(_append_ledger, data_dir, sha256=sha256, file=file, status=status, run_id=run_id,
                            mode=mode, timesteps=timesteps, detail=detail)


def _count_snapshots(path: Path) -> int:
    count = sum(1 for _ in read_jsonl(path))
    if count == 0:
        raise ComponentError("RST-101", f"{path.name}: no snapshots in the file")
    return count


@task(name="check-snapshot-file", cache_policy=NO_CACHE)
async def check_snapshot_file(path: Path) -> int:
    """Parse every line before anything is written; a corrupt line fails with RST-101 naming the line."""
    return await asyncio.to_thread(_count_snapshots, path)


def _check_run_id_free(data_dir: Path, run_id: str, sha256: str, ledger: list[dict[str, Any]]) -> None:
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


@flow(name="backtest-inbox", log_prints=True)
async def backtest_inbox(
    mode: ModeName | None = None,
    data_dir: str | None = None,
    settle_seconds: float = 30.0,
    strict: bool = False,
) -> dict[str, Any]:
    """Ingest the finished engine snapshot files in {data_dir}/inbox, each content exactly once.

    Args:
        mode: mode of files whose name does not start with one (<mode>__<run_id>.jsonl does).
        data_dir: root of the tables; the inbox is its inbox/ folder. Default: BASIS_DATA_DIR, else ./data.
        settle_seconds: a file without a <file>.done marker counts as finished once unmodified this long.
        strict: fail a file's run on an invalid row instead of quarantining the row.
    """
    logger = get_run_logger()
    root = resolve_data_dir(data_dir)
    inbox = root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    lock = RunLock(inbox / ".scan.lock")
    # A manual scan overlapping the scheduled one waits here, then sees only what is left.
    await asyncio.to_thread(lock.acquire)
    try:
        outcome = await _scan(inbox, root, mode, settle_seconds, strict, logger)
    finally:
        lock.release()
    await publish_markdown(_report(outcome), "inbox-scan", "files processed, skipped, failed and waiting")
    if outcome.failed:
        reasons = {name: (inbox / "failed" / f"{name}.reason.txt").read_text().splitlines()[0]
                   for name in outcome.failed if (inbox / "failed" / f"{name}.reason.txt").exists()}
        raise InboxFilesFailed(outcome.failed, reasons)
    return outcome.as_dict()


async def _scan(inbox: Path, root: Path, mode: str | None, settle_seconds: float, strict: bool,
                logger: Any) -> InboxOutcome:
    outcome = InboxOutcome()
    ready, waiting = await asyncio.to_thread(finished_files, inbox, settle_seconds)
    outcome.waiting = [p.name for p in waiting]
    if waiting:
        logger.info("not finished yet (no .done marker, modified < %s s ago): %s", settle_seconds,
                    ", ".join(outcome.waiting))
    ledger = await asyncio.to_thread(read_ledger, root)
    processed = {e["sha256"]: e for e in ledger if e["status"] == "processed"}
    for path in ready:
        digest = await asyncio.to_thread(file_sha256, path)
        if digest in processed:
            seen = processed[digest]
            logger.info("%s: same content as %s (run %s), skipped", path.name, seen["file"], seen["run_id"])
            await asyncio.to_thread(move_aside, path, inbox / "processed")
            outcome.skipped.append(path.name)
            continue
        file_mode = run_id = None
        try:
            file_mode, run_id = mode_and_run(path, mode)
            await asyncio.to_thread(_check_run_id_free, root, run_id, digest, ledger)
            await check_snapshot_file(path)
            await record_in_ledger(root, sha256=digest, file=path.name, status="started", run_id=run_id,
                                   mode=file_mode)
            summary = await backtest_results(mode=cast(ModeName, file_mode), run_id=run_id,
                                             snapshot_file=str(path), data_dir=str(root), strict=strict)
        except Exception as exc:  # one bad file must not stop the others; the scan fails at the end
            target = await asyncio.to_thread(move_aside, path, inbox / "failed")
            reason = f"{exc}\n\n{traceback.format_exc()}"
            target.with_name(target.name + ".reason.txt").write_text(reason)
            await record_in_ledger(root, sha256=digest, file=path.name, status="failed", run_id=run_id,
                                   mode=file_mode, detail=str(exc)[:2000])
            logger.error("%s failed, moved to failed/: %s", path.name, exc)
            outcome.failed.append(target.name)
            continue
        await record_in_ledger(root, sha256=digest, file=path.name, status="processed", run_id=run_id,
                               mode=file_mode, timesteps=summary["timesteps_received"])
        processed[digest] = {"file": path.name, "run_id": run_id}
        await asyncio.to_thread(move_aside, path, inbox / "processed")
        outcome.processed.append(path.name)
        outcome.runs[path.name] = run_id
    return outcome


def _report(outcome: InboxOutcome) -> str:
    rows = [{"file": name, "outcome": kind, "run_id": outcome.runs.get(name, "")}
            for kind in ("processed", "skipped", "failed", "waiting") for name in getattr(outcome, kind)]
    body = markdown_table(rows) or "The inbox had no snapshot files."
    return f"# Inbox scan\n\n{body}\n"
