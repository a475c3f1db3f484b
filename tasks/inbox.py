"""Inbox tasks: check a snapshot file, record it in the ledger, move it aside."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from results_store import inbox

__all__ = ["check_snapshot_file", "record_in_ledger", "set_file_aside"]


# One small Delta commit; a commit conflict or a briefly unavailable disk is worth another try.
@task(name="record-in-ledger", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 4, 15])
async def record_in_ledger(data_dir: Path, *, sha256: str, file: str, status: inbox.LedgerStatus,
                           run_id: str | None = None, mode: str | None = None, timesteps: int | None = None,
                           detail: str = "") -> None:
    """Append one entry (started, processed or failed) to the inbox ledger."""
    await asyncio.to_thread(inbox.append_ledger, data_dir, sha256=sha256, file=file, status=status, run_id=run_id,
                            mode=mode, timesteps=timesteps, detail=detail)


@task(name="check-snapshot-file", cache_policy=NO_CACHE)
async def check_snapshot_file(path: Path) -> int:
    """Parse every line before anything is written; a corrupt line fails with RST-101 naming the line."""
    return await asyncio.to_thread(inbox.count_snapshots, path)


@task(name="set-file-aside", cache_policy=NO_CACHE)
async def set_file_aside(path: Path, folder: Path, reason: str | None = None) -> Path:
    """Move a file into ``folder`` (processed/ or failed/); a failed one gets ``<file>.reason.txt`` beside it."""
    target = await asyncio.to_thread(inbox.move_aside, path, folder)
    if reason is not None:
        await asyncio.to_thread(target.with_name(target.name + ".reason.txt").write_text, reason)
    return target
