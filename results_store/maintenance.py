"""Data-health checks on stored tables: checksums, audit counts, retention candidates, backup plan.

These are the first versions; each returns what it checked and states what it does not check yet.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from results_store import delta_tables
from schemas.result_types import ResultType

__all__ = ["audit_counts", "backup_plan", "retention_candidates", "verify_checksums"]

STORE_TABLES = ("raw_snapshots", "quarantine", "runs")


def _tables(root: Path, execution_mode: str) -> dict[str, Path]:
    names = [t.value for t in ResultType] + list(STORE_TABLES)
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in names}
    return {n: p for n, p in paths.items() if delta_tables.table_exists(p)}


def verify_checksums(root: Path, execution_mode: str) -> dict[str, Any]:
    """Recompute sha256 of every raw snapshot payload and compare it with the stored one."""
    path = delta_tables.table_path(root, execution_mode, "raw_snapshots")
    if not delta_tables.table_exists(path):
        return {"checked": 0, "mismatches": [], "not_checked": ["no raw_snapshots table"]}
    data = delta_tables.read(path, columns=["run_id", "timestep", "payload", "payload_sha256"])
    mismatches = []
    for batch in data.to_batches(max_chunksize=50_000):
        for run_id, step, payload, digest in zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True):
            if hashlib.sha256(payload.encode()).hexdigest() != digest:
                mismatches.append({"run_id": run_id, "timestep": step})
    return {"checked": data.num_rows, "mismatches": mismatches,
            "not_checked": ["Parquet file checksums of the result tables", "backup copies"]}


def audit_counts(root: Path, execution_mode: str) -> dict[str, Any]:
    """Rows per table and run, quarantine counts, and attribution-vs-balance reconciliation."""
    tables = _tables(root, execution_mode)
    counts: dict[str, int] = {n: delta_tables.count_rows(p) for n, p in tables.items()}
    failed_reconciliation = 0
    if "pnl_attribution" in tables:
        pnl = delta_tables.read(tables["pnl_attribution"], columns=["component", "metric", "value"])
        mask = pc.and_(pc.equal(pnl["component"], "reconciliation"), pc.equal(pnl["metric"], "passed"))
        passed = pnl.filter(mask)["value"]
        failed_reconciliation = int(pc.sum(pc.equal(passed, 0.0)).as_py() or 0)
    quarantine_by_rule: dict[str, int] = {}
    if "quarantine" in tables:
        q = delta_tables.read(tables["quarantine"], columns=["result_type", "rule"])
        for row in q.group_by(["result_type", "rule"]).aggregate([("rule", "count")]).to_pylist():
            quarantine_by_rule[f"{row['result_type']}.{row['rule']}"] = row["rule_count"]
    return {"rows": counts, "quarantine_by_rule": quarantine_by_rule,
            "timesteps_failing_reconciliation": failed_reconciliation,
            "not_checked": ["cross-table consistency (balance sheet vs PnL)", "gaps in timestep sequences",
                            "freshness of live runs"]}


def retention_candidates(root: Path, execution_mode: str, retention_days: int) -> dict[str, Any]:
    """Runs finished before the retention window, and files vacuum would remove (dry run only)."""
    from results_store.runs import read_runs

    runs = read_runs(root, execution_mode)
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    old = runs[(runs["status"] != "running") & runs["finished_at"].notna() & (runs["finished_at"] < cutoff)]
    vacuumable = {n: len(delta_tables.vacuum(p, retention_hours=retention_days * 24, dry_run=True))
                  for n, p in _tables(root, execution_mode).items()}
    return {"cutoff": cutoff.isoformat(), "runs_past_retention": old["run_id"].tolist(),
            "files_vacuum_would_remove": vacuumable, "deleted": [],
            "not_done": ["nothing is deleted yet: retention runs as a dry run"]}


def backup_plan(root: Path, execution_mode: str) -> dict[str, Any]:
    """What a backup would copy: every table's current version and its size on disk."""
    plan = {}
    for name, path in _tables(root, execution_mode).items():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        plan[name] = {"version": delta_tables.version(path), "bytes": size}
    return {"tables": plan, "not_done": ["no copy is made yet: backup reports what it would copy"]}
