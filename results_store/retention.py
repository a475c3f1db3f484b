"""Retention: the one place that decides what stored data goes, and removes it.

``ResultsStore.cleanup_old_results``, the nightly ``retention`` flow and ``results-store retention``
all call :func:`run_retention` (a plan, then, unless it is a dry run, its application):

- **Backtest runs** that finished more than ``retention_days`` ago (the run's own mode file, unless
  overridden) are removed whole, unless pinned (``results-store pin RUN``).
- **Live runs** lose their rows older than ``retention_days`` by timestamp; a run with nothing left
  is removed whole.
- A run removed whole gets status ``expired`` in the runs registry: its rows per table, its files
  and bytes, and when, in the record's note.
- **Backups first**: when backups are configured (``$RESULTS_STORE_BACKUP_URI``, or a complete backup
  at the default location beside the data dir), a run whose files the newest complete backup does
  not hold is kept, and the plan says so.
- **Compaction**: live runs whose last UTC day is over are compacted to one file per table
  (``results_store.compaction``).
- **Vacuum** (:func:`vacuum_plan`), driven by the checksum manifests, which know every file each
  version added and removed:

  * files that held data a later version removed (expired runs, trimmed rows, rerun overwrites) are
    kept for the **time-travel window**, ``TIME_TRAVEL_HOURS`` (7 days): every version committed
    within it can be read, e.g. a run as it was before it expired or was rerun;
  * files a compaction replaced (``dataChange=false``: the compacted file holds the same rows) are
    removed once they are ``COMPACTION_GRACE_HOURS`` old (1 hour, for readers still scanning them).
    Versions older than a compaction therefore read only the runs that compaction did not touch: a
    run is readable as of any version after its own compaction (a backtest's finalize, a live day's
    compaction), not in the intermediate states it went through while being written;
  * files no version refers to (a write that crashed before its commit) go once older than the window.

  The Delta log is checkpointed, its retention (``delta.logRetentionDuration``) set to the window
  (Delta's default of 30 days kept 43,000 log files per live table, and delta-rs lists them on every
  commit), delta-rs removes the log files past it, and the manifests are rolled up.
- **Event logs**: rotated files older than 30 days are removed.

``dry_run`` lists exactly what would go (runs, rows, files, bytes) and changes nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from results_store import backup as backups
from results_store import checksums, delta_tables, lifecycle
from results_store.events import KEEP_DAYS, event_log_path
from results_store.runs import append_run_record, read_runs
from results_store.utc import to_utc
from schemas.errors import ComponentError
from schemas.settings import load_settings
from schemas.store_tables import QUARANTINE, RAW_SNAPSHOTS, RUN_TABLES

__all__ = [
    "COMPACTION_GRACE_HOURS",
    "TIME_TRAVEL_HOURS",
    "RetentionPlan",
    "RetentionResult",
    "RunRemoval",
    "VacuumFile",
    "apply_plan",
    "plan_retention",
    "prune_event_logs",
    "retention_markdown",
    "run_retention",
    "vacuum_plan",
]

# Versions committed within this window stay readable (see the module docstring); the Delta log is
# kept as long (checksums.LOG_RETENTION), no longer, since each commit lists it.
TIME_TRAVEL_HOURS = int(checksums.LOG_RETENTION.total_seconds() // 3600)
# Files a compaction replaced are removed once this old: long enough for a reader that listed the
# version before the compaction to finish its scan.
COMPACTION_GRACE_HOURS = 1.0
# A table's manifest is rolled up into one entry once it has this many (a live table gains 1,440 a day).
ROLLUP_ENTRIES = 64
# A checkpoint is written at retention when this many commits came since the last one (delta-rs
# writes one every delta_tables.CHECKPOINT_INTERVAL commits on its own, in tables made since then).
CHECKPOINT_AFTER_COMMITS = 10


@dataclass
class RunRemoval:
    """One run (or a live run's old rows) retention removes."""

    run_id: str
    whole: bool
    reason: str
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    cutoff: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "whole": self.whole, "reason": self.reason, "rows": self.rows,
                "total_rows": sum(self.rows.values()), "files": self.files, "bytes": self.bytes, "cutoff": self.cutoff}


@dataclass(frozen=True)
class VacuumFile:
    """A file vacuum removes, and why."""

    table: str
    path: str
    size: int
    why: str


@dataclass
class RetentionPlan:
    """What a retention pass removes; applying it changes exactly this."""

    execution_mode: str
    now: datetime
    removals: list[RunRemoval] = field(default_factory=list)
    held: list[dict[str, str]] = field(default_factory=list)
    compactions: list[str] = field(default_factory=list)
    vacuum: list[VacuumFile] = field(default_factory=list)
    event_logs: list[str] = field(default_factory=list)
    backup: str | None = None
    time_travel_hours: float = TIME_TRAVEL_HOURS

    def totals(self) -> dict[str, int]:
        return {"runs": sum(1 for r in self.removals if r.whole), "trimmed_runs": sum(1 for r in self.removals if not r.whole),
                "rows": sum(sum(r.rows.values()) for r in self.removals),
                "files": sum(r.files for r in self.removals), "bytes": sum(r.bytes for r in self.removals),
                "vacuum_files": len(self.vacuum), "vacuum_bytes": sum(v.size for v in self.vacuum)}

    def to_json(self) -> dict[str, Any]:
        return {"execution_mode": self.execution_mode, "now": self.now.isoformat(), "totals": self.totals(),
                "removals": [r.to_json() for r in self.removals], "held": self.held, "compactions": self.compactions,
                "vacuum": [{"table": v.table, "path": v.path, "bytes": v.size, "why": v.why} for v in self.vacuum],
                "event_logs": self.event_logs, "backup": self.backup, "time_travel_hours": self.time_travel_hours}


@dataclass
class RetentionResult:
    """A retention pass: its plan, and (unless a dry run) what applying it did."""

    plan: RetentionPlan
    dry_run: bool
    vacuumed_files: int = 0
    vacuumed_bytes: int = 0
    compacted: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def removed_runs(self) -> list[str]:
        return [r.run_id for r in self.plan.removals if r.whole]

    def to_json(self) -> dict[str, Any]:
        return {**self.plan.to_json(), "dry_run": self.dry_run, "vacuumed_files": self.vacuumed_files,
                "vacuumed_bytes": self.vacuumed_bytes, "compacted": self.compacted, "checkpoints": self.checkpoints,
                "elapsed_s": round(self.elapsed_s, 3)}


# ------------------------------------------------------------------------------------------- plan
def _run_days(record: dict[str, Any], override: int | None, default: int) -> int:
    if override is not None:
        return override
    try:
        return int(orjson.loads(record["config_json"])["component_config"]["results_store"]["storage"]["retention_days"])
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return default


def _backup_manifest(data_dir: Path, execution_mode: str, backup_uri: str | None) -> tuple[str | None, Any]:
    """(location, newest complete backup) when backups are configured, else (None, None).

    Configured: an explicit URI (argument or ``$RESULTS_STORE_BACKUP_URI``), or a complete backup at
    the default location. Configured but without a complete backup yet, nothing is removable.
    """
    explicit = backup_uri or os.environ.get(backups.BACKUP_URI_ENV)
    uri = explicit or backups.default_backup_uri(data_dir)
    if not explicit and not Path(uri).exists():
        return None, None
    latest = backups.latest_backup(uri, execution_mode)
    if latest is None and not explicit:
        return None, None
    return uri, latest


def _tables(root: Path, execution_mode: str) -> dict[str, Path]:
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in RUN_TABLES}
    return {n: p for n, p in paths.items() if delta_tables.table_exists(p)}


def plan_retention(root: Path, execution_mode: str, *, now: datetime | None = None, retention_days: int | None = None,
                   backup_uri: str | None = None, data_dir: Path | None = None, keep: tuple[str, ...] = (),
                   time_travel_hours: float = TIME_TRAVEL_HOURS,
                   compaction_grace_hours: float = COMPACTION_GRACE_HOURS) -> RetentionPlan:
    """What a retention pass at ``now`` would remove (see the module docstring); changes nothing.

    ``keep``: runs never removed (the caller's own). ``now``: the clock (default: the wall clock); it
    also decides which replaced files are old enough for vacuum, against their deletion time.
    """
    now = to_utc(now).to_pydatetime() if now is not None else datetime.now(UTC)
    data_dir = Path(data_dir) if data_dir is not None else Path(root)
    plan = RetentionPlan(execution_mode, now, time_travel_hours=time_travel_hours)
    default_days = load_settings(data_dir=data_dir).retention_days
    location, newest = _backup_manifest(data_dir, execution_mode, backup_uri)
    plan.backup = location
    pinned = lifecycle.pinned_runs(root, execution_mode)
    tables = _tables(root, execution_mode)
    listed = {n: delta_tables.table_files(p) for n, p in tables.items()}
    manifests = {n: checksums.load_manifest(p) for n, p in tables.items()}
    runs = read_runs(root, execution_mode)
    for record in runs.to_dict("records"):
        run_id = str(record["run_id"])
        if record["status"] in ("running", "expired") or run_id in keep:
            continue
        days = _run_days(record, retention_days, default_days)
        cutoff = now - timedelta(days=days)
        removal = _removal(execution_mode, record, cutoff, days, listed)
        if removal is None:
            continue
        if run_id in pinned:
            plan.held.append({"run_id": run_id, "why": "pinned"})
            continue
        if location is not None and not _held_by_backup(newest, execution_mode, run_id, manifests):
            why = "no complete backup yet" if newest is None else f"not in the newest complete backup ({newest.backup_id})"
            plan.held.append({"run_id": run_id, "why": why})
            continue
        plan.removals.append(removal)
    plan.compactions = _finished_live_days(root, execution_mode, now, listed) if execution_mode == "live" else []
    removed_now = {r.run_id for r in plan.removals}
    plan.vacuum = [f for name, path in tables.items() | _other_tables(root, execution_mode, tables).items()
                   for f in vacuum_plan(path, name, now=now, time_travel_hours=time_travel_hours,
                                        compaction_grace_hours=compaction_grace_hours, skip_runs=removed_now)]
    plan.event_logs = [str(p) for p in _old_event_logs(data_dir, now)]
    return plan


def _other_tables(root: Path, execution_mode: str, known: dict[str, Path]) -> dict[str, Path]:
    """Tables without run partitions of their own (the runs registry, the lifecycle log, audits, ledgers)."""
    return {n: Path(root) / execution_mode / n for n in checksums.list_tables(root, execution_mode) if n not in known}


def _removal(execution_mode: str, record: dict[str, Any], cutoff: datetime, days: int,
             listed: dict[str, delta_tables.TableFiles]) -> RunRemoval | None:
    run_id = str(record["run_id"])
    files = {n: t.runs([run_id])[0][1] for n, t in listed.items()}
    if execution_mode == "backtest":
        finished = record.get("finished_at")
        if record["status"] != "finished" or finished is None or pd.isna(finished):
            return None
        if pd.Timestamp(finished).to_pydatetime() >= cutoff:
            return None
        return RunRemoval(run_id, True, f"finished {pd.Timestamp(finished).isoformat()}, over {days} days ago",
                          rows={n: sum(f.num_records or 0 for f in fs) for n, fs in files.items() if fs},
                          files=sum(len(fs) for fs in files.values()),
                          bytes=sum(f.size_bytes for fs in files.values() for f in fs), cutoff=cutoff.isoformat())
    # Live: by timestamp. Each file's time span is in its statistics (a file of no rows has none, and no rows).
    cutoff_us = int(cutoff.timestamp() * 1_000_000)
    spans = [(f.min_timestamp_us, f.max_timestamp_us) for fs in files.values() for f in fs if f.num_records != 0]
    if not spans:
        return None
    if all(hi is not None and hi < cutoff_us for _, hi in spans):
        return RunRemoval(run_id, True, f"every row older than {days} days",
                          rows={n: sum(f.num_records or 0 for f in fs) for n, fs in files.items() if fs},
                          files=sum(len(fs) for fs in files.values()),
                          bytes=sum(f.size_bytes for fs in files.values() for f in fs), cutoff=cutoff.isoformat())
    if not any(lo is None or lo < cutoff_us for lo, _ in spans):
        return None
    removal = RunRemoval(run_id, False, f"rows older than {days} days", cutoff=cutoff.isoformat())
    for name, fs in files.items():
        touched = [f for f in fs if f.min_timestamp_us is None or f.min_timestamp_us < cutoff_us]
        if not touched:
            continue
        rows = _rows_before(listed[name].path, run_id, cutoff)
        if rows:
            removal.rows[name] = rows
            # Files wholly before the cutoff are freed; the others are rewritten without the old rows.
            gone = [f for f in touched if f.max_timestamp_us is not None and f.max_timestamp_us < cutoff_us]
            removal.files += len(gone)
            removal.bytes += sum(f.size_bytes for f in gone)
    return removal if removal.rows else None


def _rows_before(path: Path, run_id: str, cutoff: datetime) -> int:
    import pyarrow.compute as pc

    data = delta_tables.read(path, run_id=run_id, columns=["timestamp"])
    return int(pc.sum(pc.less(data.column("timestamp"), pd.Timestamp(cutoff))).as_py() or 0)


def _held_by_backup(newest: Any, execution_mode: str, run_id: str, manifests: dict[str, checksums.Manifest]) -> bool:
    if newest is None:
        return False
    for name, manifest in manifests.items():
        files = [(p, e.sha256) for p, e in manifest.run_files(run_id).items()]
        if files and not backups.holds(newest, execution_mode, name, files):
            return False
    return True


def _finished_live_days(root: Path, execution_mode: str, now: datetime,
                        listed: dict[str, delta_tables.TableFiles]) -> list[str]:
    """Live runs whose last UTC day is over and that still have more than one uncompacted file in a table."""
    today = now.date()
    due = []
    raw = listed.get(RAW_SNAPSHOTS)
    if raw is None:
        return []
    for run_id, files in raw.runs():
        newest = [f.max_timestamp_us for f in files if f.max_timestamp_us is not None]
        if not newest or datetime.fromtimestamp(max(newest) / 1e6, UTC).date() >= today:
            continue
        if any(sum(1 for f in t.runs([run_id])[0][1] if not Path(f.path).name.startswith(delta_tables.COMPACTED_PREFIX)) > 1
               for t in listed.values()):
            due.append(run_id)
    return due


def vacuum_plan(table_dir: Path, table: str, *, now: datetime, time_travel_hours: float = TIME_TRAVEL_HOURS,
                compaction_grace_hours: float = COMPACTION_GRACE_HOURS,
                skip_runs: set[str] | frozenset[str] = frozenset()) -> list[VacuumFile]:
    """The files of one table vacuum removes at ``now`` (see the module docstring).

    Only a table whose every commit is recorded is vacuumed (an untracked commit could refer to a
    file the manifest thinks unused), and a file the latest version refers to is never removed.
    ``skip_runs``: runs this pass removes; their files wait for the window like any data change.
    """
    manifest = checksums.load_manifest(table_dir)
    if manifest.damaged or not manifest.versions:
        return []
    on_disk_versions = checksums.load_latest_version(table_dir)
    if on_disk_versions > manifest.latest_version:
        return []  # a commit in flight (or untracked): come back next time
    now_s = now.timestamp()
    # The latest version's files, from Delta itself: a second opinion before anything is deleted.
    base = Path(table_dir).absolute()
    current = ({os.path.relpath(f.path, base) for f in delta_tables.table_files(table_dir).files}
               if delta_tables.table_exists(table_dir) else set())
    plan = []
    for path, tomb in manifest.removed.items():
        if path in manifest.forgotten or path not in manifest.files:
            continue
        file = table_dir / path
        if path in current or not file.exists():
            continue
        limit = (time_travel_hours if tomb.data_change else compaction_grace_hours) * 3600
        if tomb.deletion_ms / 1000 >= now_s - limit:
            continue
        why = (f"removed by version {tomb.version}, past the {time_travel_hours:g} h time-travel window" if tomb.data_change
               else f"replaced by the compaction in version {tomb.version}")
        plan.append(VacuumFile(table, path, file.stat().st_size, why))
    known = set(manifest.files) | manifest.forgotten
    for rel, stat in _data_files_on_disk(table_dir).items():
        if rel in known or rel in current:
            continue
        if stat.st_mtime >= now_s - time_travel_hours * 3600:
            continue
        plan.append(VacuumFile(table, rel, stat.st_size, "no version refers to it (a write that never committed)"))
    return plan


def _data_files_on_disk(table_dir: Path) -> dict[str, os.stat_result]:
    found = {}
    for directory in table_dir.iterdir() if table_dir.is_dir() else []:
        if directory.name.startswith(("_", ".")):
            continue
        entries = [directory] if directory.is_file() else list(directory.iterdir())
        for entry in entries:
            if entry.is_file() and entry.name.endswith(".parquet"):
                found[os.path.relpath(entry, table_dir)] = entry.stat()
    return found


def _old_event_logs(data_dir: Path, now: datetime) -> list[Path]:
    """Rotated event-log files (``results_store_events.jsonl.YYYY-MM-DD``) older than 30 days."""
    current = event_log_path(data_dir)
    cutoff = now.date() - timedelta(days=KEEP_DAYS)
    old = []
    for rotated in current.parent.glob(f"{current.name}.*") if current.parent.is_dir() else []:
        try:
            day = date.fromisoformat(rotated.name.rsplit(".", 1)[-1])
        except ValueError:
            continue
        if day < cutoff:
            old.append(rotated)
    return sorted(old)


def prune_event_logs(data_dir: Path, now: datetime | None = None) -> list[str]:
    """Remove rotated event-log files older than 30 days (the event log removes them too, when it rotates)."""
    removed = []
    for path in _old_event_logs(Path(data_dir), now or datetime.now(UTC)):
        path.unlink(missing_ok=True)
        removed.append(str(path))
    return removed


# ------------------------------------------------------------------------------------------- apply
def apply_plan(root: Path, plan: RetentionPlan, *, data_dir: Path | None = None) -> RetentionResult:
    """Apply ``plan``: remove its runs and rows, record expired runs, compact finished live days,
    vacuum, checkpoint and clean up logs, roll up manifests, prune event logs."""
    result = RetentionResult(plan, dry_run=False)
    mode = plan.execution_mode
    tables = _tables(root, mode)
    runs = read_runs(root, mode)
    records = {str(r["run_id"]): r for r in runs.to_dict("records")}
    for removal in plan.removals:
        if removal.whole:
            for name, path in tables.items():
                if removal.rows.get(name) or name in (RAW_SNAPSHOTS, QUARANTINE):
                    delta_tables.delete_run(path, removal.run_id)
            _record_expired(root, mode, records[removal.run_id], removal, plan)
        else:
            literal = pd.Timestamp(removal.cutoff).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            for name in removal.rows:
                quoted = removal.run_id.replace("'", "''")
                delta_tables.delete_rows(tables[name], f"run_id = '{quoted}' AND \"timestamp\" < '{literal}'")
            _record_trimmed(root, mode, records[removal.run_id], removal, tables)
    for run_id in plan.compactions:
        for name, path in tables.items():
            done = delta_tables.compact_run(path, run_id, select="uncompacted")
            if done.get("numFilesRemoved"):
                result.compacted.append({"run_id": run_id, "table": name, **done})
    # Vacuum after compaction and removal, with the plan's clock: what this pass removed waits for its window.
    for name, path in tables.items() | _other_tables(root, mode, tables).items():
        doomed = [f for f in plan.vacuum if f.table == name]
        deleted = []
        for item in doomed:
            file = path / item.path
            try:
                size = file.stat().st_size
                file.unlink()
            except FileNotFoundError:
                continue
            deleted.append(item.path)
            result.vacuumed_files += 1
            result.vacuumed_bytes += size
        checksums.forget(path, deleted, reason="vacuum")
        delta_tables.set_log_retention(path, max(plan.time_travel_hours, TIME_TRAVEL_HOURS))
        version = delta_tables.checkpoint(path) if _commits_since_checkpoint(path) >= CHECKPOINT_AFTER_COMMITS else None
        if version is not None:
            result.checkpoints[name] = version
        delta_tables.cleanup_log(path)
        _forget_expired_log(path)
        if len(checksums.load_manifest(path).entry_names) >= ROLLUP_ENTRIES:
            checksums.rollup(path)
    prune_event_logs(data_dir or root, plan.now)
    return result


def _commits_since_checkpoint(path: Path) -> int:
    manifest = checksums.load_manifest(path)
    last = max(manifest.checkpoints(), default=-1)
    return manifest.latest_version - last


def _forget_expired_log(path: Path) -> None:
    """Log files delta-rs removed past its retention: forgotten, so they are no longer expected."""
    checksums.forget(path, checksums.expired_log_files(path), reason="log retention")


def _record_expired(root: Path, mode: str, record: dict[str, Any], removal: RunRemoval, plan: RetentionPlan) -> None:
    rows = sum(removal.rows.values())
    note = (f"expired by retention at {plan.now.isoformat()} ({removal.reason}): {rows:,} rows, {removal.files} files, "
            f"{removal.bytes:,} bytes removed; readable by time travel for {plan.time_travel_hours:g} h")
    append_run_record(
        root, mode, run_id=removal.run_id, mode=str(record["mode"]), status="expired",
        config_json=orjson.loads(record["config_json"]), config_hash=str(record["config_hash"]),
        started_at=pd.Timestamp(record["started_at"]).to_pydatetime(),
        finished_at=None if pd.isna(record["finished_at"]) else pd.Timestamp(record["finished_at"]).to_pydatetime(),
        parent_run_id=None if pd.isna(record.get("parent_run_id")) else record.get("parent_run_id"),
        row_counts=removal.rows, note=note,
    )


def _record_trimmed(root: Path, mode: str, record: dict[str, Any], removal: RunRemoval, tables: dict[str, Path]) -> None:
    """A live run that lost its old rows: a record with its status unchanged and the rows it keeps."""
    rows = sum(removal.rows.values())
    remaining = {n: delta_tables.count_rows(p, run_id=removal.run_id) for n, p in tables.items()}
    append_run_record(
        root, mode, run_id=removal.run_id, mode=str(record["mode"]), status=str(record["status"]),
        config_json=orjson.loads(record["config_json"]), config_hash=str(record["config_hash"]),
        started_at=pd.Timestamp(record["started_at"]).to_pydatetime(),
        finished_at=None if pd.isna(record["finished_at"]) else pd.Timestamp(record["finished_at"]).to_pydatetime(),
        parent_run_id=None if pd.isna(record.get("parent_run_id")) else record.get("parent_run_id"),
        row_counts=remaining,
        note=f"retention removed {rows:,} rows older than {removal.cutoff} ({removal.files} files, {removal.bytes:,} bytes)",
    )


def run_retention(root: Path, execution_mode: str, *, dry_run: bool = False, now: datetime | None = None,
                  retention_days: int | None = None, backup_uri: str | None = None, data_dir: Path | None = None,
                  keep: tuple[str, ...] = (), time_travel_hours: float = TIME_TRAVEL_HOURS,
                  compaction_grace_hours: float = COMPACTION_GRACE_HOURS, record: bool = True) -> RetentionResult:
    """Plan retention for one execution mode and, unless ``dry_run``, apply it; recorded in the lifecycle log."""
    if execution_mode not in ("backtest", "live"):
        raise ComponentError("RST-201", f"execution_mode must be 'backtest' or 'live', got {execution_mode!r}")
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    plan = plan_retention(root, execution_mode, now=now, retention_days=retention_days, backup_uri=backup_uri,
                          data_dir=data_dir, keep=keep, time_travel_hours=time_travel_hours,
                          compaction_grace_hours=compaction_grace_hours)
    result = RetentionResult(plan, dry_run=True) if dry_run else apply_plan(root, plan, data_dir=data_dir)
    result.elapsed_s = time.perf_counter() - started
    if record and not dry_run:
        totals = plan.totals()
        lifecycle.append(root, lifecycle.LifecycleEntry(
            "retention", execution_mode, files=result.vacuumed_files, bytes=result.vacuumed_bytes, started_at=started_at,
            detail={"totals": totals, "removed": [r.to_json() for r in plan.removals], "held": plan.held,
                    "compacted": result.compacted, "checkpoints": result.checkpoints, "backup": plan.backup,
                    "now": plan.now.isoformat(), "time_travel_hours": time_travel_hours}))
    return result



def retention_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Markdown of retention passes (``RetentionResult.to_json()`` per execution mode)."""
    from results_store.markdown import markdown_table

    dry = any(r["dry_run"] for r in results.values())
    lines = [f"# Retention{' (dry run: nothing changed)' if dry else ''}", ""]
    for mode, r in results.items():
        t = r["totals"]
        lines.append(f"- {mode}: {t['runs']} runs expired, {t['trimmed_runs']} live runs trimmed, {t['rows']:,} rows, "
                     f"{t['files']} files, {t['bytes'] / 1e6:,.2f} MB; vacuum: {t['vacuum_files']} files, "
                     f"{t['vacuum_bytes'] / 1e6:,.2f} MB; {len(r['compactions'])} finished live days to compact; "
                     f"{len(r['event_logs'])} old event logs (time-travel window {r['time_travel_hours']:g} h)")
    removals = [{"mode": m, **{k: v for k, v in x.items() if k != "rows"}} for m, r in results.items() for x in r["removals"]]
    if removals:
        lines += ["", "## Removed" if not dry else "## Would remove", "", markdown_table(removals)]
    held = [{"mode": m, **h} for m, r in results.items() for h in r["held"]]
    if held:
        lines += ["", "## Kept although past retention", "", markdown_table(held)]
    vacuum = [{"mode": m, **v} for m, r in results.items() for v in r["vacuum"]]
    if vacuum:
        lines += ["", "## Vacuum", "", markdown_table(vacuum[:200])]
    return "\n".join(lines)
