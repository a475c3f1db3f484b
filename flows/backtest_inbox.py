"""backtest-inbox: scheduled ingestion of finished engine snapshot files, each exactly once.

``{data_dir}/inbox/*.jsonl`` files are taken oldest first, when finished (a ``.done`` marker, or
unmodified for ``settle_seconds``: see :mod:`results_store.inbox`). Each is hashed and looked up in
the inbox ledger: content ingested before is skipped, under any name. New content is parsed line
by line first, then stored through the backtest-results flow as a subflow. Ingested and skipped
files move to ``inbox/processed/``; a file that failed moves to ``inbox/failed/`` with
``<file>.reason.txt`` beside it, and the scan ends Failed after handling every other file, so the
failure shows in the UI.
"""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger

from flows.backtest_results import backtest_results
from results_store.inbox import (
    InboxFilesFailed,
    InboxOutcome,
    check_run_id_free,
    file_sha256,
    finished_files,
    inbox_report,
    mode_and_run,
    read_ledger,
)
from results_store.run_lock import RunLock
from schemas.modes import ModeName
from schemas.settings import resolve_data_dir
from tasks.artifacts import publish_markdown
from tasks.inbox import check_snapshot_file, record_in_ledger, set_file_aside

__all__ = ["backtest_inbox"]


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
    await publish_markdown(inbox_report(outcome), "inbox-scan", "files processed, skipped, failed and waiting")
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
            await set_file_aside(path, inbox / "processed")
            outcome.skipped.append(path.name)
            continue
        file_mode = run_id = None
        try:
            file_mode, run_id = mode_and_run(path, mode)
            await asyncio.to_thread(check_run_id_free, root, run_id, digest, ledger)
            await check_snapshot_file(path)
            await record_in_ledger(root, sha256=digest, file=path.name, status="started", run_id=run_id,
                                   mode=file_mode)
            summary = await backtest_results(mode=cast(ModeName, file_mode), run_id=run_id,
                                             snapshot_file=str(path), data_dir=str(root), strict=strict)
        except Exception as exc:  # one bad file must not stop the others; the scan fails at the end
            target = await set_file_aside(path, inbox / "failed", f"{exc}\n\n{traceback.format_exc()}")
            await record_in_ledger(root, sha256=digest, file=path.name, status="failed", run_id=run_id,
                                   mode=file_mode, detail=str(exc)[:2000])
            logger.error("%s failed, moved to failed/: %s", path.name, exc)
            outcome.failed.append(target.name)
            continue
        await record_in_ledger(root, sha256=digest, file=path.name, status="processed", run_id=run_id,
                               mode=file_mode, timesteps=summary["timesteps_received"])
        processed[digest] = {"file": path.name, "run_id": run_id}
        await set_file_aside(path, inbox / "processed")
        outcome.processed.append(path.name)
        outcome.runs[path.name] = run_id
    return outcome
