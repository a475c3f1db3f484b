"""checksum: hash every stored file against its checksum manifest; Failed, naming each damaged file.

Nightly for both execution modes (``checksum/nightly``). Covers every table: the result tables,
raw_snapshots, quarantine, the runs registry and the lifecycle log, their Delta logs and
checkpoints. A missing, truncated, corrupt or untracked file is logged as one RST-005 (CRITICAL)
event and makes the run end Failed after its markdown artifact names the files.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from results_store.checksums import Problem, TableReport, VerifyReport, verify_markdown
from schemas.modes import ExecutionMode
from schemas.settings import resolve_data_dir
from tasks.artifacts import publish_markdown
from tasks.maintenance import log_corruption, verify_file_checksums

__all__ = ["checksum"]


@flow(name="checksum", log_prints=True)
async def checksum(execution_modes: list[ExecutionMode] | None = None, all_versions: bool = False,
                   data_dir: str | None = None) -> dict[str, Any]:
    """Verify every data file, Delta log entry and checkpoint against the sha256 recorded when it was written.

    Args:
        execution_modes: which tables to verify. Default: both backtest and live.
        all_versions: also the data files older versions still refer to (until vacuum removes them).
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    root = resolve_data_dir(data_dir)
    modes: list[str] = list(execution_modes or ["backtest", "live"])
    reports = {mode: await verify_file_checksums(root, mode, all_versions) for mode in modes}
    await publish_markdown(verify_markdown(reports), "checksum", "every stored file against its recorded sha256")
    problems = []
    for mode, report in reports.items():
        logger.info("%s: %s files, %.1f MB, %s problems", mode, f"{report['files']:,}", report["bytes"] / 1e6,
                    len(report["problems"]))
        if report["problems"]:
            await log_corruption(root, report["problems"], mode)
            problems += report["problems"]
    if problems:
        found = [Problem(**{**p, "runs": tuple(p["runs"])}) for p in problems]
        raise VerifyReport([TableReport("*", "*", problems=found)]).error()
    return reports
