"""Scheduled data-health flows: audit-results, retention, checksum and backup.

They are deployed now and do what the store offers today; later issues deepen them. Each one
publishes a report artifact and says plainly, in its log and in the artifact, what it does not
check or do yet. Retention and backup change nothing: retention is a dry run, backup a plan.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import ExecutionModeName, markdown_table, publish_markdown, resolve_data_dir
from results_store import delta_tables
from results_store.maintenance import audit_counts, backup_plan, verify_checksums
from results_store.runs import read_runs
from schemas.result_types import ResultType

__all__ = [
    "AUDIT_NOT_CHECKED",
    "BACKUP_NOT_DONE",
    "RETENTION_NOT_DONE",
    "ChecksumMismatch",
    "audit_results",
    "backup",
    "checksum",
    "retention",
    "retention_plan",
    "run_row_audit",
]

RUN_TABLES = (*(t.value for t in ResultType), "raw_snapshots", "quarantine")

AUDIT_NOT_CHECKED = [
    "values across tables (balance sheet against PnL, exposures against positions)",
    "gaps in timestep sequences and the freshness of live runs",
    "the Parquet files' own checksums",
]
RETENTION_NOT_DONE = [
    "nothing is deleted: retention runs as a dry run and only lists what it would remove",
    "no check against backups before removing anything",
]
BACKUP_NOT_DONE = [
    "no copy is made: backup reports what it would copy",
    "no restore test",
]
CHECKSUM_NOT_CHECKED = [
    "the Parquet files of the result tables (only raw snapshot payloads are hashed)",
    "backup copies",
]


class ChecksumMismatch(Exception):
    """Raw snapshot payloads whose sha256 differs from the one stored when they were written."""

    def __init__(self, execution_mode: str, mismatches: list[dict[str, Any]]) -> None:
        self.execution_mode = execution_mode
        self.mismatches = mismatches
        super().__init__(execution_mode, mismatches)

    def __str__(self) -> str:
        shown = ", ".join(f"{m['run_id']}@{m['timestep']}" for m in self.mismatches[:10])
        return f"{len(self.mismatches)} {self.execution_mode} raw snapshots do not match their sha256: {shown}"


def _report(title: str, summary: list[str], tables: dict[str, list[dict[str, Any]]], caveats: list[str]) -> str:
    lines = [f"# {title}", "", *[f"- {s}" for s in summary], ""]
    for heading, rows in tables.items():
        lines += [f"## {heading}", "", markdown_table(rows) or "none", ""]
    lines += ["## Not covered yet", "", *[f"- {c}" for c in caveats]]
    return "\n".join(lines)


def _say_what_is_missing(logger: Any, caveats: list[str]) -> None:
    for caveat in caveats:
        logger.warning("not covered yet: %s", caveat)


def run_row_audit(root: Path, execution_mode: str) -> list[dict[str, Any]]:
    """Per run and table: rows the runs registry recorded against rows present, and quarantined rows."""
    runs = read_runs(root, execution_mode)
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in RUN_TABLES}
    paths = {n: p for n, p in paths.items() if delta_tables.table_exists(p)}
    quarantined: Counter[tuple[str, str]] = Counter()
    if "quarantine" in paths:
        q = delta_tables.read(paths["quarantine"], columns=["run_id", "result_type"])
        quarantined.update(zip(q.column("run_id").to_pylist(), q.column("result_type").to_pylist(), strict=True))
    rows = []
    for record in runs.to_dict("records"):
        recorded: dict[str, int] = orjson.loads(record["row_counts_json"] or "{}")
        for name in sorted(recorded):
            present = delta_tables.count_rows(paths[name], run_id=record["run_id"]) if name in paths else 0
            rows.append({
                "run_id": record["run_id"], "status": record["status"], "table": name,
                "recorded": recorded[name], "present": present,
                "quarantined": quarantined.get((record["run_id"], name), 0),
                # A running run is still writing: its counts are not expected to agree yet.
                "agrees": record["status"] == "running" or recorded[name] == present,
            })
    return rows


@task(name="audit-tables", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def audit_tables(root: Path, execution_mode: str) -> dict[str, Any]:
    """Rows per table, quarantine by rule, reconciliation failures, and per-run row counts."""
    totals = await asyncio.to_thread(audit_counts, root, execution_mode)
    totals["by_run"] = await asyncio.to_thread(run_row_audit, root, execution_mode)
    return totals


@flow(name="audit-results", log_prints=True)
async def audit_results(execution_mode: ExecutionModeName = "backtest", data_dir: str | None = None) -> dict[str, Any]:
    """Audit the stored tables: rows per table and run against the runs registry, quarantine, reconciliation.

    Args:
        execution_mode: audit the backtest or the live tables.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    result = await audit_tables(resolve_data_dir(data_dir), execution_mode)
    disagreeing = [r for r in result["by_run"] if not r["agrees"]]
    result["not_checked"] = AUDIT_NOT_CHECKED
    summary = [
        f"rows per table: {', '.join(f'{k} {v:,}' for k, v in sorted(result['rows'].items())) or 'no tables'}",
        f"runs audited: {len({r['run_id'] for r in result['by_run']})}; "
        f"tables whose rows disagree with the runs registry: {len(disagreeing)}",
        f"timesteps failing PnL reconciliation: {result['timesteps_failing_reconciliation']}",
    ]
    quarantine = [{"table.rule": k, "rows": v} for k, v in sorted(result["quarantine_by_rule"].items())]
    report = _report(f"Audit of the {execution_mode} tables", summary,
                     {"Rows per run and table": result["by_run"], "Quarantine by rule": quarantine},
                     AUDIT_NOT_CHECKED)
    await publish_markdown(report, f"audit-{execution_mode}", "rows, quarantine and registry agreement")
    for row in disagreeing:
        logger.error("run %s, %s: the registry recorded %s rows, the table has %s", row["run_id"], row["table"],
                     row["recorded"], row["present"])
    _say_what_is_missing(logger, AUDIT_NOT_CHECKED)
    return result


def retention_plan(root: Path, execution_mode: str, retention_days: int | None,
                   now: datetime | None = None) -> dict[str, Any]:
    """Finished runs past retention and the partitions a retention run would delete (nothing is deleted)."""
    now = now or datetime.now(UTC)
    runs = read_runs(root, execution_mode)
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in RUN_TABLES}
    paths = {n: p for n, p in paths.items() if delta_tables.table_exists(p)}
    candidates = []
    for record in runs.to_dict("records"):
        if record["status"] == "running" or record["finished_at"] is None or pd.isna(record["finished_at"]):
            continue
        config = orjson.loads(record["config_json"])
        days = retention_days or config["component_config"]["results_store"]["storage"]["retention_days"]
        finished = pd.Timestamp(record["finished_at"]).to_pydatetime()
        if finished >= now - timedelta(days=days):
            continue
        partitions = {n: rows for n, p in paths.items() if (rows := delta_tables.count_rows(p, run_id=record["run_id"]))}
        candidates.append({"run_id": record["run_id"], "mode": record["mode"], "finished_at": finished.isoformat(),
                           "retention_days": days, "partitions": partitions})
    return {"now": now.isoformat(), "runs_past_retention": candidates, "deleted": [], "dry_run": True}


@task(name="plan-retention", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def plan_retention(root: Path, execution_mode: str, retention_days: int | None) -> dict[str, Any]:
    """List run partitions older than their retention window (dry run)."""
    return await asyncio.to_thread(retention_plan, root, execution_mode, retention_days)


@flow(name="retention", log_prints=True)
async def retention(execution_mode: ExecutionModeName = "backtest", retention_days: int | None = None,
                    data_dir: str | None = None) -> dict[str, Any]:
    """List the run partitions past retention: a dry run, nothing is deleted yet.

    Args:
        execution_mode: the backtest or the live tables.
        retention_days: keep finished runs this many days. Default: each run's mode file (retention_days).
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    result = await plan_retention(resolve_data_dir(data_dir), execution_mode, retention_days)
    result["not_done"] = RETENTION_NOT_DONE
    rows = [{"run_id": c["run_id"], "mode": c["mode"], "finished_at": c["finished_at"],
             "retention_days": c["retention_days"],
             "partitions (rows)": ", ".join(f"{k} {v:,}" for k, v in sorted(c["partitions"].items()))}
            for c in result["runs_past_retention"]]
    report = _report(f"Retention dry run of the {execution_mode} tables",
                     [f"runs past retention: {len(rows)} (dry run: none deleted)"],
                     {"Would delete": rows}, RETENTION_NOT_DONE)
    await publish_markdown(report, f"retention-{execution_mode}", "run partitions past retention (dry run)")
    logger.info("%s runs past retention; dry run, nothing deleted", len(rows))
    _say_what_is_missing(logger, RETENTION_NOT_DONE)
    return result


@task(name="verify-checksums", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def verify_payload_checksums(root: Path, execution_mode: str) -> dict[str, Any]:
    """Recompute the sha256 of every raw snapshot payload and compare it with the stored one."""
    return await asyncio.to_thread(verify_checksums, root, execution_mode)


@flow(name="checksum", log_prints=True)
async def checksum(execution_mode: ExecutionModeName = "backtest", data_dir: str | None = None) -> dict[str, Any]:
    """Verify every raw snapshot payload against the sha256 stored with it; fails on any mismatch.

    Args:
        execution_mode: the backtest or the live tables.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    result = await verify_payload_checksums(resolve_data_dir(data_dir), execution_mode)
    result["not_checked"] = sorted({*CHECKSUM_NOT_CHECKED, *result.get("not_checked", [])})
    report = _report(f"Checksums of the {execution_mode} raw snapshots",
                     [f"payloads checked: {result['checked']:,}", f"mismatches: {len(result['mismatches'])}"],
                     {"Mismatches": result["mismatches"][:100]}, result["not_checked"])
    await publish_markdown(report, f"checksum-{execution_mode}", "raw snapshot payloads against their sha256")
    _say_what_is_missing(logger, result["not_checked"])
    if result["mismatches"]:
        raise ChecksumMismatch(execution_mode, result["mismatches"])
    logger.info("%s raw snapshot payloads match their sha256", f"{result['checked']:,}")
    return result


@task(name="plan-backup", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
async def plan_backup(root: Path, execution_mode: str) -> dict[str, Any]:
    """Every table's current version and size: what a backup would copy."""
    return await asyncio.to_thread(backup_plan, root, execution_mode)


@flow(name="backup", log_prints=True)
async def backup(execution_mode: ExecutionModeName = "backtest", data_dir: str | None = None) -> dict[str, Any]:
    """Report what a backup would copy (tables, versions, sizes); no copy is made yet.

    Args:
        execution_mode: the backtest or the live tables.
        data_dir: root of the tables. Default: BASIS_DATA_DIR, else ./data (relative to the worker).
    """
    logger = get_run_logger()
    result = await plan_backup(resolve_data_dir(data_dir), execution_mode)
    result["not_done"] = BACKUP_NOT_DONE
    rows = [{"table": name, "version": info["version"], "bytes": f"{info['bytes']:,}"}
            for name, info in sorted(result["tables"].items())]
    total = sum(info["bytes"] for info in result["tables"].values())
    report = _report(f"Backup plan for the {execution_mode} tables",
                     [f"would copy {len(rows)} tables, {total:,} bytes (no copy made)"],
                     {"Tables": rows}, BACKUP_NOT_DONE)
    await publish_markdown(report, f"backup-{execution_mode}", "what a backup would copy")
    logger.info("a backup would copy %s tables, %s bytes", len(rows), f"{total:,}")
    _say_what_is_missing(logger, BACKUP_NOT_DONE)
    return result
