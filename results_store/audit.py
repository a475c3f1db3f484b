"""Data-quality audits of stored runs: is a run complete, consistent, and does it add up?

:func:`audit_run` audits one run (a backtest, or one day of a live feed: a live run is one UTC day
by default) with the checks of :mod:`results_store.audit_checks`, streamed window by window, plus
two that need the runs registry: the row counts it recorded, and the drift of the run's key
metrics against the newest run of the same mode in the other execution mode. The result is a
:class:`RunAudit`: a status per check and findings that name the check, run, table, timesteps and
values.

Around it: which runs to audit (:func:`select_runs`: the backtest runs finished since their last
audit, the live runs of the previous day, or what the caller names), the report (markdown and
JSON in ``{data_dir}/{execution_mode}/results/{run_id}/``), and the audit history (the ``audits``
Delta table, one row per run and check). Prefect-free: ``tasks/audit.py`` wraps these as tasks,
``flows/audit_results.py`` orders them, ``results-store audit`` calls them directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from results_store import delta_tables
from results_store.audit_checks import (
    CHECKS,
    DEFAULT_WINDOW,
    CheckResult,
    Finding,
    Findings,
    RunContext,
    Status,
    run_pass,
    worst,
)
from results_store.audit_integrity import integrity_checks, register_integrity_check
from results_store.markdown import markdown_table
from results_store.runs import code_version, latest_run, read_runs
from results_store.utc import to_utc
from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES, AuditConfig, ModeConfig, load_mode
from schemas.result_types import ResultType
from schemas.store_tables import AUDITS, AUDITS_SCHEMA, RAW_SNAPSHOTS

__all__ = [
    "CHECKS",
    "AuditFailed",
    "CheckResult",
    "Finding",
    "RunAudit",
    "audit_run",
    "failure_payload",
    "findings_rows",
    "read_audits",
    "record_audits",
    "register_integrity_check",
    "report_dir",
    "select_runs",
    "summary_markdown",
    "write_report",
]

_FINDINGS_IN_REPORT = 200
_DRIFT_METRICS = {
    "funding_rate_paid": "funding rate of the intervals a payment was made for",
    "ltv": "current LTV",
    "net_delta": "portfolio net delta",
}


class AuditFailed(Exception):
    """At least one audited run failed a check: the flow run ends Failed, the CLI exits 1."""

    def __init__(self, failures: dict[str, list[str]]) -> None:
        self.failures = failures
        super().__init__(failures)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.failures,))

    def __str__(self) -> str:
        runs = "; ".join(f"{run}: {', '.join(checks)}" for run, checks in sorted(self.failures.items()))
        return f"audit failed for {len(self.failures)} run(s): {runs}"


@dataclass
class RunAudit:
    """The audit of one run: a result per check, rows per table, and where its report went."""

    audit_id: str
    run_id: str
    mode: str
    execution_mode: str
    run_status: str
    audited_at: datetime
    elapsed_s: float
    checks: dict[str, CheckResult]
    rows: dict[str, int] = field(default_factory=dict)
    report: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return worst(c.status for c in self.checks.values())

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, c in self.checks.items() if c.status == "fail"]

    def findings(self) -> list[Finding]:
        return [f for c in self.checks.values() for f in c.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "audit_id": self.audit_id, "run_id": self.run_id, "mode": self.mode, "execution_mode": self.execution_mode,
            "run_status": self.run_status, "status": self.status, "failed_checks": self.failed_checks,
            "audited_at": self.audited_at.isoformat(), "elapsed_s": round(self.elapsed_s, 3), "rows": self.rows,
            "checks": {name: c.to_dict() for name, c in self.checks.items()}, "report": self.report,
        }

    def to_markdown(self) -> str:
        """The report a person reads: verdict, one line per check, the findings, the rows read."""
        verdict = {"fail": "FAILED", "warn": "passed with warnings", "pass": "passed", "skip": "nothing to check"}
        lines = [
            f"# Audit of run `{self.run_id}`: {verdict[self.status]}",
            "",
            f"- mode `{self.mode}`, {self.execution_mode} run, registry status `{self.run_status}`",
            f"- audited {self.audited_at:%Y-%m-%d %H:%M:%S} UTC in {self.elapsed_s:.1f} s (audit `{self.audit_id}`)",
            f"- rows read: {sum(self.rows.values()):,} in {len(self.rows)} tables",
        ]
        if self.failed_checks:
            lines.append(f"- **failed checks: {', '.join(self.failed_checks)}**")
        lines += ["", "## Checks", "", markdown_table([
            {"check": name, "status": _badge(c.status), "findings": c.failing, "rows checked": f"{c.rows_checked:,}",
             "what it establishes": CHECKS[name], "note": c.note}
            for name, c in self.checks.items()]), ""]
        shown = [f for f in self.findings() if f.status in ("fail", "warn")][:_FINDINGS_IN_REPORT]
        lines += ["## Findings", ""]
        lines.append(markdown_table([{"check": f.check, "status": f.status, "table": f.table, "timesteps": f.timesteps,
                                      "finding": f.message.replace("|", "\\|")} for f in shown]) or "none")
        rest = sum(1 for f in self.findings() if f.status in ("fail", "warn")) - len(shown)
        if rest > 0:
            lines.append(f"\n... {rest} more findings in the JSON report.")
        lines += ["", "## Rows read", "", markdown_table([{"table": t, "rows": f"{n:,}"} for t, n in sorted(self.rows.items())])
                  or "none"]
        return "\n".join(lines) + "\n"


def _badge(status: str) -> str:
    return {"fail": "**FAIL**", "warn": "warn", "pass": "pass", "skip": "skip"}[status]


# -- one run ------------------------------------------------------------------------------------------
def audit_run(root: Path, execution_mode: str, run_id: str, *, window: int = DEFAULT_WINDOW,
              audit_id: str | None = None) -> RunAudit:
    """Audit one stored run with every check; RST-302 if neither the registry nor the tables know it."""
    started = datetime.now(UTC)
    clock = pd.Timestamp.now().value
    record = latest_run(root, execution_mode, run_id)
    raw_path = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
    if record is None and (not delta_tables.table_exists(raw_path) or not delta_tables.count_rows(raw_path, run_id=run_id)):
        raise ComponentError("RST-302", f"no {execution_mode} run {run_id!r}: neither the runs registry nor raw_snapshots "
                             "know it", details={"run_id": run_id})
    mode, audit_config, notes = _configs(record)
    ctx = RunContext(root=Path(root), execution_mode=execution_mode, run_id=run_id, mode=mode, audit=audit_config,
                     record=record, freq_us=_frequency(root, execution_mode, run_id, record), window=window)
    out = Findings()
    rows, samples = run_pass(ctx, out)
    # After the pass, not beside it: on two cores running them together saved no time (the pass
    # already reads on a second thread) and grew the heap (year/quarter peak RSS 1.19 against 1.05).
    integrity = integrity_checks()
    for check in integrity.values():
        for finding in check(ctx):
            out.add(finding)
    out.notes["integrity"] = "checks: " + ", ".join(integrity)
    out.checked("integrity", rows.get(RAW_SNAPSHOTS, 0))
    checks = out.results()
    checks["registry"] = _registry_check(record, rows)
    checks["drift"] = _drift_check(ctx, samples)
    if notes:
        checks["schema"].note = "; ".join(filter(None, [checks["schema"].note, *notes]))
    return RunAudit(audit_id=audit_id or uuid.uuid4().hex[:12], run_id=run_id, mode=mode.mode,
                    execution_mode=execution_mode, run_status=str(record["status"]) if record else "unregistered",
                    audited_at=started, elapsed_s=(pd.Timestamp.now().value - clock) / 1e9, checks=checks, rows=rows)


def _configs(record: dict[str, Any] | None) -> tuple[ModeConfig, AuditConfig, list[str]]:
    """The run's own mode config (as the registry recorded it) and today's audit rules for its mode."""
    notes: list[str] = []
    recorded: ModeConfig | None = None
    if record is not None:
        try:
            recorded = ModeConfig.model_validate(orjson.loads(record["config_json"]))
        except (ValidationError, orjson.JSONDecodeError, TypeError):
            notes.append("the run's recorded config no longer validates; judged against today's mode file")
    name = recorded.mode if recorded is not None else (record or {}).get("mode")
    current = load_mode(str(name)) if name in MODE_NAMES else None
    mode = recorded or current
    if mode is None:
        raise ComponentError("RST-201", f"cannot audit: no config for mode {name!r}")
    # Tolerances are policy: today's mode file decides them, not the file the run was made with.
    audit_config = (current or mode).results_store.audit
    return mode, audit_config, notes


def _frequency(root: Path, execution_mode: str, run_id: str, record: dict[str, Any] | None) -> int | None:
    """The run's timestep in microseconds: as its inputs recorded it, else the most common spacing of its first timesteps."""
    inputs = (record or {}).get("inputs") or {}
    freq = inputs.get("freq")
    if isinstance(freq, str) and freq.endswith("s") and freq[:-1].isdigit():
        return int(freq[:-1]) * 1_000_000
    path = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
    if not delta_tables.table_exists(path):
        return None
    dataset = delta_tables.run_dataset(path, run_id)
    head = dataset.head(1_000, columns=["timestep", "timestamp"]).sort_by("timestep")
    steps = head.column("timestep").to_numpy()
    stamps = head.column("timestamp").cast(pa.int64()).to_numpy()
    spacing = np.diff(stamps)[np.diff(steps) == 1]
    spacing = spacing[spacing > 0]
    if not len(spacing):
        return None
    values, counts = np.unique(spacing, return_counts=True)
    return int(values[np.argmax(counts)])


def _registry_check(record: dict[str, Any] | None, rows: dict[str, int]) -> CheckResult:
    result = CheckResult("registry")
    if record is None:
        result.status, result.note = "warn", "the run is not in the runs registry"
        result.findings.append(Finding("registry", "warn", "runs", None, None, "runs: the run is not in the runs registry"))
        result.failing = 1
        return result
    if record["status"] != "finished":
        result.status, result.note = "skip", f"the run is {record['status']}: its counts are not final"
        return result
    recorded: dict[str, int] = record.get("row_counts") or {}
    for table, count in sorted(recorded.items()):
        if table not in rows:
            continue
        result.rows_checked += 1
        if rows[table] != count:
            result.findings.append(Finding("registry", "fail", table, None, None,
                                           f"{table}: the runs registry recorded {count:,} rows, the table has {rows[table]:,}",
                                           {"recorded": count, "present": rows[table]}))
    result.failing = len(result.findings)
    result.status = "fail" if result.findings else "pass"
    return result


# -- drift ----------------------------------------------------------------------------------------
def _drift_check(ctx: RunContext, samples: dict[str, np.ndarray]) -> CheckResult:
    """Kolmogorov-Smirnov distance of each key metric between this run and the other execution mode's newest run."""
    result = CheckResult("drift")
    other = "live" if ctx.execution_mode == "backtest" else "backtest"
    counterpart = _counterpart(ctx.root, other, ctx.mode.mode, ctx.run_id)
    if counterpart is None:
        result.status, result.note = "skip", f"no {other} run of mode {ctx.mode.mode} to compare with"
        return result
    theirs = _metric_samples(ctx.root, other, counterpart, ctx.audit.drift.max_samples)
    config = ctx.audit.drift
    compared = []
    for metric, label in _DRIFT_METRICS.items():
        ours, them = samples.get(metric, np.zeros(0)), theirs.get(metric, np.zeros(0))
        if min(len(ours), len(them)) < config.min_samples:
            continue
        statistic = _ks(ours, them)
        compared.append(f"{metric} KS {statistic:.2f}")
        result.rows_checked += len(ours)
        if statistic > config.ks_threshold:
            result.findings.append(Finding(
                "drift", "warn", metric, None, None,
                f"{metric}: the {label} of this {ctx.execution_mode} run differs from {other} run {counterpart} "
                f"(KS {statistic:.2f} > {config.ks_threshold:g}; median {np.median(ours):.6g} vs {np.median(them):.6g}, "
                f"n {len(ours):,} vs {len(them):,})",
                {"ks": round(statistic, 4), "counterpart": counterpart, "median": float(np.median(ours)),
                 "counterpart_median": float(np.median(them))}))
    result.failing = len(result.findings)
    result.status = "warn" if result.findings else ("pass" if compared else "skip")
    result.note = f"against {other} run {counterpart}: " + (", ".join(compared) or "too few values to compare")
    return result


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, points, side="right") / len(a) - np.searchsorted(b, points, side="right") / len(b))
    return float(gap.max())


def _counterpart(root: Path, execution_mode: str, mode: str, run_id: str) -> str | None:
    runs = read_runs(root, execution_mode)
    if runs.empty:
        return None
    same = runs[(runs["mode"] == mode) & (runs["run_id"] != run_id)]
    if execution_mode == "backtest":
        same = same[same["status"] == "finished"]
    return None if same.empty else str(same.iloc[0]["run_id"])  # read_runs lists the newest first


def _metric_samples(root: Path, execution_mode: str, run_id: str, limit: int) -> dict[str, np.ndarray]:
    """Up to ``limit`` values per drift metric of another run, streamed batch by batch, evenly spaced."""
    specs: dict[str, tuple[str, list[str], Any, str]] = {
        "ltv": (ResultType.RISK_METRICS.value, ["value"],
                (pc.field("risk_group") == "ltv_risk") & (pc.field("metric") == "current_ltv"), "value"),
        "net_delta": (ResultType.DELTA_TRACKING.value, ["net_delta"], None, "net_delta"),
        "funding_rate_paid": (ResultType.FUNDING_TRACKING.value, ["funding_rate"], pc.field("payment") != 0,
                              "funding_rate"),
    }
    out: dict[str, np.ndarray] = {}
    for metric, (table, columns, flt, column) in specs.items():
        path = delta_tables.table_path(root, execution_mode, table)
        if not delta_tables.table_exists(path):
            continue
        dataset = delta_tables.run_dataset(path, run_id)
        total = dataset.count_rows(filter=flt)
        if not total:
            continue
        stride = max(1, -(-total // limit))
        parts, seen = [], 0
        for batch in dataset.to_batches(columns=columns, filter=flt, batch_size=131_072, batch_readahead=1,
                                        fragment_readahead=1):
            values = batch.column(column).to_numpy()
            start = (-seen) % stride
            parts.append(values[start::stride])
            seen += len(values)
        out[metric] = np.concatenate(parts) if parts else np.zeros(0)
    if "ltv" in out and not (out["ltv"] > 0).any():
        del out["ltv"]  # a mode that does not borrow: LTV is always 0, nothing to compare
    return out


# -- which runs ---------------------------------------------------------------------------------
def select_runs(root: Path, execution_mode: str, *, run_ids: Sequence[str] | None = None, all_runs: bool = False,
                since: datetime | str | None = None, now: datetime | None = None) -> list[str]:
    """The runs to audit, oldest first.

    - ``run_ids``: those of them this execution mode has (in its registry or its raw snapshots).
    - ``all_runs``: every run in the registry.
    - ``since``: runs whose latest state (finished, or the last collection of a live run) is at or after it.
    - otherwise the nightly rule: backtest runs that finished after their last audit (or were never
      audited; a rerun finishes again and is audited again); live runs active during the UTC day
      before ``now`` (a live run is one UTC day unless a run id says otherwise).
    """
    if run_ids:
        return [r for r in dict.fromkeys(run_ids) if _known(root, execution_mode, r)]
    history = read_runs(root, execution_mode, history=True)
    if history.empty:
        return []
    latest = history.drop_duplicates("run_id", keep="first")
    if all_runs:
        return _oldest_first(latest)
    if since is not None:
        cutoff = to_utc(since)
        stamp = latest["finished_at"].fillna(latest["recorded_at"])
        return _oldest_first(latest[stamp >= cutoff])
    if execution_mode == "live":
        day_end = to_utc(now or datetime.now(UTC)).floor("1D")
        day_start = day_end - timedelta(days=1)
        first = history.groupby("run_id")["started_at"].min()
        last = history.groupby("run_id")["recorded_at"].max()
        active = [run for run in first.index if first[run] < day_end and last[run] >= day_start]
        return _oldest_first(latest[latest["run_id"].isin(active)])
    finished = latest[latest["status"] == "finished"]
    audited = _last_audited(root, execution_mode)
    due = [r["run_id"] for r in finished.to_dict("records")
           if r["run_id"] not in audited or audited[r["run_id"]] < pd.Timestamp(r["finished_at"])]
    return _oldest_first(finished[finished["run_id"].isin(due)])


def _known(root: Path, execution_mode: str, run_id: str) -> bool:
    if latest_run(root, execution_mode, run_id) is not None:
        return True
    raw = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
    return delta_tables.table_exists(raw) and delta_tables.count_rows(raw, run_id=run_id) > 0


def _oldest_first(frame: pd.DataFrame) -> list[str]:
    return [str(r) for r in frame.sort_values("recorded_at", kind="stable")["run_id"]]


def _last_audited(root: Path, execution_mode: str) -> dict[str, pd.Timestamp]:
    path = delta_tables.table_path(root, execution_mode, AUDITS)
    if not delta_tables.table_exists(path):
        return {}
    table = delta_tables.read(path, columns=["run_id", "audited_at"])
    grouped = table.group_by("run_id").aggregate([("audited_at", "max")])
    return {str(run): pd.Timestamp(at) for run, at in zip(grouped.column("run_id").to_pylist(),
                                                          grouped.column("audited_at_max").to_pylist(), strict=True)}


# -- reports and history -------------------------------------------------------------------------
def report_dir(root: Path, execution_mode: str, run_id: str) -> Path:
    """``{data_dir}/{execution_mode}/results/{run_id}/``: the run's reports."""
    return Path(root) / execution_mode / "results" / run_id


def write_report(root: Path, audit: RunAudit) -> dict[str, str]:
    """Write ``audit.md`` and ``audit.json`` into the run's results folder; their paths."""
    directory = report_dir(root, audit.execution_mode, audit.run_id)
    directory.mkdir(parents=True, exist_ok=True)
    markdown, json_path = directory / "audit.md", directory / "audit.json"
    audit.report = {"markdown": str(markdown), "json": str(json_path)}
    # Written to a temporary name and renamed, so a reader never sees half a report.
    for path, data in ((markdown, audit.to_markdown().encode()),
                       (json_path, orjson.dumps(audit.to_dict(), option=orjson.OPT_INDENT_2, default=str))):
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return audit.report


def record_audits(root: Path, audits: Sequence[RunAudit]) -> int:
    """Append one row per (run, check) to each execution mode's ``audits`` table; rows written."""
    written = 0
    for execution_mode in sorted({a.execution_mode for a in audits}):
        rows = []
        for audit in (a for a in audits if a.execution_mode == execution_mode):
            for name, check in audit.checks.items():
                steps = [f.first_timestep for f in check.findings if f.first_timestep is not None]
                ends = [f.last_timestep if f.last_timestep is not None else f.first_timestep for f in check.findings
                        if f.first_timestep is not None]
                first = check.findings[0].message if check.findings else check.note
                rows.append({
                    "audit_id": audit.audit_id, "run_id": audit.run_id, "execution_mode": execution_mode,
                    "mode": audit.mode, "check": name, "status": check.status, "findings": check.failing,
                    "rows_checked": check.rows_checked, "first_timestep": min(steps) if steps else None,
                    "last_timestep": max(e for e in ends if e is not None) if ends else None,
                    "detail": first[:1_000], "audited_at": audit.audited_at, "code_version": code_version(),
                })
        if rows:
            delta_tables.write_plain(delta_tables.table_path(root, execution_mode, AUDITS),
                                     pa.Table.from_pylist(rows, schema=AUDITS_SCHEMA))
            written += len(rows)
    return written


def read_audits(root: Path, execution_mode: str, *, run_id: str | None = None) -> pd.DataFrame:
    """The audit history (one row per run and check), newest first; optionally of one run."""
    path = delta_tables.table_path(root, execution_mode, AUDITS)
    if not delta_tables.table_exists(path):
        return AUDITS_SCHEMA.empty_table().to_pandas()
    table = delta_tables.read(path, filter=(pc.field("run_id") == run_id) if run_id else None)
    return table.to_pandas().sort_values(["audited_at", "run_id"], ascending=[False, True], kind="stable") \
        .reset_index(drop=True)


def summary_markdown(audits: Sequence[RunAudit], execution_modes: Sequence[str]) -> str:
    """The flow's summary artifact: one line per audited run, the failed checks and where each report is."""
    failed = [a for a in audits if a.status == "fail"]
    lines = [f"# Audit of {', '.join(execution_modes)} runs: "
             + (f"{len(failed)} of {len(audits)} failed" if failed else f"{len(audits)} passed" if audits
                else "nothing to audit"), ""]
    lines.append(markdown_table([
        {"run": a.run_id, "mode": a.mode, "execution mode": a.execution_mode, "status": _badge(a.status),
         "failed checks": ", ".join(a.failed_checks), "warnings": ", ".join(n for n, c in a.checks.items() if c.status == "warn"),
         "findings": sum(c.failing for c in a.checks.values()), "report": a.report.get("markdown", "")}
        for a in audits]) or "No run was due: every backtest run is audited since it finished, and no live run was "
                             "active the previous day.")
    for audit in failed:
        lines += ["", f"## {audit.run_id}", ""]
        lines += [f"- {f.message}" for f in audit.findings() if f.status == "fail"][:20]
    return "\n".join(lines) + "\n"


def findings_rows(audits: Sequence[RunAudit], limit: int = 500) -> list[dict[str, Any]]:
    """The findings of every audited run as table rows (the flow's table artifact), failures first."""
    rows = [{"run_id": a.run_id, "check": f.check, "status": f.status, "table": f.table, "timesteps": f.timesteps,
             "finding": f.message} for a in audits for f in a.findings() if f.status in ("fail", "warn")]
    rows.sort(key=lambda r: r["status"] != "fail")
    return rows[:limit]


def failure_payload(audit: RunAudit) -> dict[str, Any]:
    """What the ``results-store.audit.failed`` event carries: the run, its failed checks and their first findings."""
    return {
        "run_id": audit.run_id, "mode": audit.mode, "execution_mode": audit.execution_mode, "audit_id": audit.audit_id,
        "failed_checks": audit.failed_checks,
        "checks": {name: {"status": c.status, "findings": c.failing,
                          "first": c.findings[0].message if c.findings else ""}
                   for name, c in audit.checks.items() if c.status == "fail"},
        "report": audit.report.get("markdown", ""),
    }
