"""audit-results: audit stored runs, write each run's report, record the history, and fail on a failed audit.

Nightly (``audit-results/nightly``) it audits both execution modes: the backtest runs finished
since their last audit, and the live runs of the previous UTC day. A run that fails a check
emits ``results-store.audit.failed`` (the automation in ``automations/`` turns it into a
notification) and the flow run ends Failed, after the reports, the history and the artifacts
are written.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from results_store.audit import AuditFailed, RunAudit
from schemas.errors import ComponentError
from schemas.modes import ExecutionMode
from schemas.settings import resolve_data_dir
from tasks.audit import (
    audit_stored_run,
    emit_audit_failed,
    publish_audit_artifacts,
    record_audit_results,
    select_runs_to_audit,
    write_audit_report,
)

__all__ = ["audit_results"]


@flow(name="audit-results", log_prints=True)
async def audit_results(
    execution_modes: list[ExecutionMode] | None = None,
    run_ids: list[str] | None = None,
    all_runs: bool = False,
    since: datetime | None = None,
    data_dir: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Audit stored runs (completeness, consistency, reconciliation, integrity); Failed if any run fails a check.

    Args:
        execution_modes: which tables to audit. Default: both backtest and live.
        run_ids: audit these runs. Default: the backtest runs finished since their last audit and
            the live runs of the previous UTC day.
        all_runs: audit every run in the registry instead.
        since: audit the runs finished (or, live, last collected) at or after this time instead.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
        now: the time "the previous day" is counted from (replays and tests). Default: the wall clock.
    """
    logger = get_run_logger()
    root = resolve_data_dir(data_dir)
    modes: list[str] = list(execution_modes or ["backtest", "live"])
    audit_id = uuid.uuid4().hex[:12]
    results: list[RunAudit] = []
    found: set[str] = set()
    for execution_mode in modes:
        selected = await select_runs_to_audit(root, execution_mode, run_ids, all_runs, since, now)
        found.update(selected)
        logger.info("%s: %d run(s) to audit%s", execution_mode, len(selected), f": {', '.join(selected)}" if selected else "")
        for run_id in selected:
            result = await audit_stored_run(root, execution_mode, run_id, audit_id)
            await write_audit_report(root, result)
            results.append(result)
            log = logger.error if result.status == "fail" else logger.info
            log("%s run %s: %s%s (report: %s)", execution_mode, run_id, result.status,
                f", failed {', '.join(result.failed_checks)}" if result.failed_checks else "", result.report.get("markdown"))
    missing = [r for r in run_ids or [] if r not in found]
    if results:
        await record_audit_results(root, results)
    await publish_audit_artifacts(results, modes)
    failed = [r for r in results if r.status == "fail"]
    for result in failed:
        await emit_audit_failed(result)
    if missing:
        raise ComponentError("RST-302", f"no {' or '.join(modes)} run named {', '.join(missing)}",
                             details={"run_ids": missing})
    if failed:
        raise AuditFailed({r.run_id: r.failed_checks for r in failed})
    return {"audit_id": audit_id, "runs": {r.run_id: r.status for r in results},
            "reports": {r.run_id: r.report for r in results}}
