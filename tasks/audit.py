"""Audit tasks: pick the runs, audit one run, and one task per side effect of the result.

Reading tasks (select, audit) and the history append are retried on transient storage errors
only (``retry_if_transient``): bad data is what the audit reports, not something to retry. The
report files and the artifacts are written once each; the event is emitted once per failed run.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from results_store import audit
from results_store.audit import RunAudit
from results_store.markdown import artifact_key
from tasks.store import retry_if_transient

__all__ = [
    "AUDIT_FAILED_EVENT",
    "audit_stored_run",
    "emit_audit_failed",
    "publish_audit_artifacts",
    "record_audit_results",
    "select_runs_to_audit",
    "write_audit_report",
]

AUDIT_FAILED_EVENT = "results-store.audit.failed"


@task(name="select-runs-to-audit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_if_transient)
async def select_runs_to_audit(root: Path, execution_mode: str, run_ids: list[str] | None = None,
                               all_runs: bool = False, since: datetime | None = None,
                               now: datetime | None = None) -> list[str]:
    """The runs due for an audit: named ones, all, those since a date, or the nightly rule."""
    return await asyncio.to_thread(audit.select_runs, root, execution_mode, run_ids=run_ids, all_runs=all_runs,
                                   since=since, now=now)


@task(name="audit-run", task_run_name="audit-{execution_mode}-{run_id}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient)
async def audit_stored_run(root: Path, execution_mode: str, run_id: str, audit_id: str) -> RunAudit:
    """Audit one stored run: schema, completeness, uniqueness, reconciliation, integrity, registry, drift."""
    return await asyncio.to_thread(audit.audit_run, root, execution_mode, run_id, audit_id=audit_id)


@task(name="write-audit-report", cache_policy=NO_CACHE)
async def write_audit_report(root: Path, result: RunAudit) -> dict[str, str]:
    """Write the run's audit.md and audit.json into its results folder."""
    return await asyncio.to_thread(audit.write_report, root, result)


@task(name="record-audit-results", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_if_transient)
async def record_audit_results(root: Path, results: list[RunAudit]) -> int:
    """Append one row per run and check to the audits table (the audit history)."""
    return await asyncio.to_thread(audit.record_audits, root, results)


# Artifact writes are API calls: retried, as a dropped connection to the server is transient.
@task(name="publish-audit-artifacts", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5])
async def publish_audit_artifacts(results: list[RunAudit], execution_modes: list[str]) -> None:
    """Publish the audit summary (markdown) and its findings (table) as artifacts."""
    suffix = "-".join(execution_modes)
    await acreate_markdown_artifact(audit.summary_markdown(results, execution_modes), key=artifact_key("audit", suffix),
                                    description=f"audit of {', '.join(execution_modes)} runs: verdict per run")
    rows: list[dict[str, Any]] = audit.findings_rows(results) or [
        {"run_id": "", "check": "", "status": "pass", "table": "", "timesteps": "", "finding": "no findings"}]
    await acreate_table_artifact(rows, key=artifact_key("audit-findings", suffix),
                                 description="findings of the audit: check, run, table, timesteps and values")


@task(name="emit-audit-failed", cache_policy=NO_CACHE)
async def emit_audit_failed(result: RunAudit) -> None:
    """Emit the results-store.audit.failed event for a failed run (automations turn it into a notification)."""
    emit_event(
        event=AUDIT_FAILED_EVENT,
        resource={
            "prefect.resource.id": f"results-store.run.{result.execution_mode}.{result.run_id}",
            "prefect.resource.name": result.run_id,
            "results-store.mode": result.mode,
            "results-store.execution-mode": result.execution_mode,
        },
        payload=audit.failure_payload(result),
    )
