"""backup: copy what the last complete backup lacks, verified, its manifest last; Failed if incomplete.

Nightly for both execution modes (``backup/nightly``), after ``checksum``: a file that no longer
matches its recorded sha256 is not copied (the backup is then incomplete and the run Failed,
its artifact naming the file), so a damaged file never replaces a good copy.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from results_store.backup import backup_markdown, resolve_backup_uri
from schemas.errors import ComponentError
from schemas.modes import ExecutionMode
from schemas.settings import resolve_data_dir
from tasks.artifacts import publish_markdown
from tasks.maintenance import back_up_tables

__all__ = ["backup"]


@flow(name="backup", log_prints=True)
async def backup(execution_modes: list[ExecutionMode] | None = None, to: str | None = None,
                 data_dir: str | None = None) -> dict[str, Any]:
    """Back up the tables incrementally (data files, Delta logs, checksum manifests, registries), verified.

    Args:
        execution_modes: which tables to back up. Default: both backtest and live.
        to: where, as a pyarrow.fs URI (a path, s3://bucket/prefix, ...). Default: RESULTS_STORE_BACKUP_URI,
            else a directory beside the data dir ({data_dir}-backup).
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    root = resolve_data_dir(data_dir)
    location = resolve_backup_uri(root, to)
    modes: list[str] = list(execution_modes or ["backtest", "live"])
    results = {mode: await back_up_tables(root, mode, location) for mode in modes}
    await publish_markdown(backup_markdown(results), "backup", f"backup to {location}")
    failures = [f"{mode}: {f}" for mode, r in results.items() for f in r["failures"]]
    for mode, r in results.items():
        logger.info("%s: %s files copied (%.1f MB), %s files in backup %s", mode, f"{r['copied_files']:,}",
                    r["copied_bytes"] / 1e6, f"{r['files']:,}", r["backup_id"])
    if failures:
        raise ComponentError("RST-005" if any("sha256" in f or "manifest" in f for f in failures) else "RST-001",
                             f"backup to {location} is incomplete: {'; '.join(failures[:20])}",
                             details={"failures": failures})
    return results
