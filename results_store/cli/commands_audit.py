"""CLI commands of the audit: ``audit`` (audit runs, exit 1 on a failure) and ``audits`` (the audit history).

``audit`` runs the library directly, without Prefect, so it answers in seconds; it writes the same
reports and history rows as the ``audit-results`` flow (which adds the artifacts, the failure event
and the Failed state for the scheduled runs).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from results_store.audit import RunAudit, audit_run, read_audits, record_audits, select_runs, write_report
from results_store.audit_checks import DEFAULT_WINDOW
from results_store.cli.options import DataDir, ExecutionMode, check_run_id, check_run_ids, data_dir_problem
from results_store.cli.output import fail, make_console
from results_store.utc import to_utc
from schemas.errors import ComponentError

__all__ = ["audit", "audits", "register"]

console = make_console()
_MODES = ("backtest", "live")
_STYLE = {"fail": "bold red", "warn": "yellow", "pass": "green", "skip": "dim"}


def audit(
    runs: Annotated[list[str] | None, typer.Argument(help="runs to audit [default: the backtest runs finished since "
                                                          "their last audit and the live runs of yesterday]",
                                                     callback=check_run_ids)] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="audit every run in the registry")] = False,
    since: Annotated[str | None, typer.Option("--since", help="audit the runs finished at or after this date "
                                                              "(ISO 8601, UTC)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the audits as JSON instead of tables")] = False,
    execution_mode: Annotated[str | None, typer.Option("--execution-mode", "-e",
                                                       help="backtest | live [default: both]")] = None,
    window: Annotated[int, typer.Option(help="timesteps read and checked at a time (memory, not results)")] = DEFAULT_WINDOW,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Audit stored runs: completeness, consistency, reconciliation, integrity. Exit code 1 if a run fails a check."""
    if execution_mode is not None and execution_mode not in _MODES:
        raise typer.BadParameter(f"--execution-mode must be one of {', '.join(_MODES)}")
    if sum(bool(x) for x in (runs, all_runs, since)) > 1:
        raise typer.BadParameter("give runs, --all or --since, not more than one")
    modes = [execution_mode] if execution_mode else list(_MODES)
    started: datetime | None = to_utc(since).to_pydatetime() if since else None
    audit_id = uuid.uuid4().hex[:12]
    results: list[RunAudit] = []
    # A read-only data dir (a mounted backup, a read-only mount) is audited all the same; only the
    # reports and the audit history, which would be written into it, are left out.
    writable = data_dir.is_dir() and data_dir_problem(data_dir, write=True) is None
    try:
        found: set[str] = set()
        for mode in modes:
            for run_id in select_runs(data_dir, mode, run_ids=runs, all_runs=all_runs, since=started):
                found.add(run_id)
                if not json_output:
                    console.print(f"auditing {mode} run [bold]{run_id}[/bold] ...")
                result = audit_run(data_dir, mode, run_id, window=window, audit_id=audit_id)
                if writable:
                    write_report(data_dir, result)
                results.append(result)
        unknown = [r for r in runs or [] if r not in found]
        if unknown:
            raise ComponentError("RST-302", f"no {' or '.join(modes)} run named {', '.join(unknown)}")
        if writable:
            record_audits(data_dir, results)
        elif results:
            make_console(stderr=True).print(f"data dir {data_dir} is read-only: audit reports and history not written",
                                            markup=False, highlight=False)
    except ComponentError as exc:
        fail(exc)
    if json_output:
        typer.echo(orjson.dumps([r.to_dict() for r in results], option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        _print(results)
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


def _print(results: list[RunAudit]) -> None:
    if not results:
        console.print("nothing to audit: every backtest run is audited since it finished, and no live run was "
                      "active yesterday (name runs, or use --all or --since)")
        return
    table = Table(title="audit")
    for column in ("run", "execution mode", "status", "failed checks", "warnings", "report"):
        table.add_column(column)
    for r in results:
        warnings = ", ".join(n for n, c in r.checks.items() if c.status == "warn")
        table.add_row(r.run_id, r.execution_mode, f"[{_STYLE[r.status]}]{r.status}[/]", ", ".join(r.failed_checks),
                      warnings, r.report.get("markdown", ""))
    console.print(table)
    for r in results:
        shown = [f for f in r.findings() if f.status == "fail"][:10]
        for finding in shown:
            console.print(f"[red]{r.run_id}[/red] {finding.check}: {finding.message}", soft_wrap=True)


def audits(
    run_id: Annotated[str | None, typer.Argument(help="one run's audits [default: every run's]",
                                                 callback=check_run_id)] = None,
    execution_mode: ExecutionMode = "backtest",
    limit: Annotated[int, typer.Option("--limit", "-n", help="rows to print")] = 40,
    json_output: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """The audit history: one row per run and check of every audit, newest first."""
    rows: list[dict[str, Any]] = read_audits(data_dir, execution_mode, run_id=run_id).head(limit).to_dict("records")
    if json_output:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
        return
    table = Table(title=f"audits ({execution_mode})")
    for column in ("audited_at", "run_id", "check", "status", "findings", "rows_checked", "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(f"{row['audited_at']:%Y-%m-%d %H:%M:%S}", row["run_id"], row["check"],
                      f"[{_STYLE[row['status']]}]{row['status']}[/]", str(row["findings"]), f"{row['rows_checked']:,}",
                      str(row["detail"])[:120])
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(audit)
    app.command()(audits)
