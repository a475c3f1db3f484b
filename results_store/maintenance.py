"""Data-health logic on stored tables: checksums, retention plan, backup plan, and their reports.

These are the first versions; each result says what it does not check or do yet (the ``*_NOT_*``
lists), and the flows publish that with the report. Prefect-free: ``tasks/maintenance.py`` wraps
these as tasks, the flows publish the reports. The audit of stored runs is ``results_store.audit``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from results_store import delta_tables
from results_store.markdown import markdown_table
from results_store.runs import read_runs
from schemas.result_types import ResultType
from schemas.store_tables import AUDITS, RAW_SNAPSHOTS, RUN_TABLES, STORE_TABLES

__all__ = [
    "BACKUP_NOT_DONE",
    "CHECKSUM_NOT_CHECKED",
    "RETENTION_NOT_DONE",
    "ChecksumMismatch",
    "backup_plan",
    "backup_report",
    "checksum_report",
    "retention_plan",
    "retention_report",
    "verify_checksums",
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


def _tables(root: Path, execution_mode: str) -> dict[str, Path]:
    names = [t.value for t in ResultType] + list(STORE_TABLES) + [AUDITS]
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in names}
    return {n: p for n, p in paths.items() if delta_tables.table_exists(p)}


def verify_checksums(root: Path, execution_mode: str) -> dict[str, Any]:
    """Recompute sha256 of every raw snapshot payload and compare it with the stored one."""
    path = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
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



def backup_plan(root: Path, execution_mode: str) -> dict[str, Any]:
    """What a backup would copy: every table's current version and its size on disk."""
    plan = {}
    for name, path in _tables(root, execution_mode).items():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        plan[name] = {"version": delta_tables.version(path), "bytes": size}
    return {"tables": plan, "not_done": ["no copy is made yet: backup reports what it would copy"]}


def retention_report(execution_mode: str, result: dict[str, Any]) -> str:
    """Markdown of a retention dry run: the runs past retention and their partitions."""
    rows = [{"run_id": c["run_id"], "mode": c["mode"], "finished_at": c["finished_at"],
             "retention_days": c["retention_days"],
             "partitions (rows)": ", ".join(f"{k} {v:,}" for k, v in sorted(c["partitions"].items()))}
            for c in result["runs_past_retention"]]
    return _report(f"Retention dry run of the {execution_mode} tables",
                   [f"runs past retention: {len(rows)} (dry run: none deleted)"],
                   {"Would delete": rows}, RETENTION_NOT_DONE)


def checksum_report(execution_mode: str, result: dict[str, Any]) -> str:
    """Markdown of a payload checksum verification: counts and the first 100 mismatches."""
    return _report(f"Checksums of the {execution_mode} raw snapshots",
                   [f"payloads checked: {result['checked']:,}", f"mismatches: {len(result['mismatches'])}"],
                   {"Mismatches": result["mismatches"][:100]}, result["not_checked"])


def backup_report(execution_mode: str, result: dict[str, Any]) -> str:
    """Markdown of a backup plan: each table's version and size."""
    rows = [{"table": name, "version": info["version"], "bytes": f"{info['bytes']:,}"}
            for name, info in sorted(result["tables"].items())]
    total = sum(info["bytes"] for info in result["tables"].values())
    return _report(f"Backup plan for the {execution_mode} tables",
                   [f"would copy {len(rows)} tables, {total:,} bytes (no copy made)"],
                   {"Tables": rows}, BACKUP_NOT_DONE)
