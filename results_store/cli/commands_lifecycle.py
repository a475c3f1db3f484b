"""CLI commands of the data lifecycle: checksum verify/adopt, backup, restore, retention, pin/unpin, backups.

They call the library directly (no Prefect server to start: an operator restoring a damaged table
wants it now); the nightly flows run the same functions under Prefect. Each command covers both
execution modes unless ``--execution-mode`` names one.

Exit codes: 0 when everything is as it should be; 1 when files are damaged or missing, a backup is
incomplete or a restore could not bring everything back (the storage is at fault); 2 for a request
that cannot be served as asked (RST-2xx/3xx: no such run, no backup, a bad option).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.table import Table

from results_store import backup as backups
from results_store import checksums, lifecycle, retention
from results_store.cli.options import DataDir
from results_store.events import EventLog
from schemas.errors import ComponentError
from schemas.settings import load_settings

__all__ = ["register"]

console = Console()
Modes = Annotated[str | None, typer.Option("--execution-mode", "-e", help="backtest | live [default: both]")]
Json = Annotated[bool, typer.Option("--json", help="print the result as JSON (for scripts)")]


def _modes(value: str | None) -> list[str]:
    if value is None:
        return ["backtest", "live"]
    if value not in ("backtest", "live"):
        _fail(ComponentError("RST-201", f"--execution-mode must be backtest or live, got {value!r}"))
    return [value]


def _fail(error: ComponentError) -> NoReturn:
    """One line on stderr; exit 1 for a storage failure (RST-0xx) or a bug, 2 for a request to change."""
    print(str(error).replace("\n", " "), file=sys.stderr)
    raise typer.Exit(1 if error.error_code.startswith(("RST-0", "RST-9")) else 2)


def _root(data_dir: Path) -> Path:
    return load_settings(data_dir=data_dir).root


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


checksum_app = typer.Typer(help="File checksums of the stored tables (sha256 recorded at write time).",
                           no_args_is_help=True)


@checksum_app.command("verify")
def checksum_verify(
    table: Annotated[str | None, typer.Option("--table", "-t", help="only this table (e.g. raw_snapshots, runs)")] = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="only this run's files and its commits' log entries")] = None,
    all_versions: Annotated[bool, typer.Option("--all-versions", help="also the files older versions refer to")] = False,
    execution_mode: Modes = None,
    json_output: Json = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Hash every data file, Delta log entry and checkpoint against its manifest; exit 1 naming each bad file."""
    modes = _modes(execution_mode)
    report = checksums.verify(_root(data_dir), modes, table=table, run_id=run, all_versions=all_versions)
    if json_output:
        _print_json(report.to_json())
    else:
        console.print(f"{report.files:,} files, {report.bytes / 1e6:,.1f} MB checked in {report.elapsed_s:.2f} s "
                      f"({report.mb_per_s:,.0f} MB/s) across {len(report.tables)} tables of {' and '.join(modes)}")
        if report.problems:
            found = Table(title=f"{len(report.problems)} damaged or missing files")
            for column in ("mode", "table", "problem", "file", "runs", "versions", "detail"):
                found.add_column(column, overflow="fold")
            for p in report.problems:
                found.add_row(p.execution_mode, p.table, p.problem, p.path, ", ".join(p.runs), p.versions, p.detail)
            console.print(found)
        orphans = sum(len(t.orphans) for t in report.tables)
        if orphans:
            console.print(f"{orphans} files no version refers to (writes that never committed): vacuum removes them")
    if report.problems:
        error = report.error()
        for mode in modes:  # one CRITICAL event per execution mode that has damage
            mine = [p for p in report.problems if p.execution_mode == mode]
            if mine:
                log = EventLog(data_dir, buffered=False, correlation_id=f"checksum-{mode}")
                log.log_error(checksums.VerifyReport([checksums.TableReport(mode, "*", problems=mine)]).error(),
                              {"execution_mode": mode})
                log.close()
        print(f"{error.error_code} data corrupted: {len(report.problems)} files; restore them with "
              "`results-store restore`", file=sys.stderr)
        raise typer.Exit(1)


@checksum_app.command("adopt")
def checksum_adopt(
    table: Annotated[str | None, typer.Option("--table", "-t", help="only this table")] = None,
    execution_mode: Modes = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Record checksums for commits that have none (tables written before checksums were kept), after reading each file."""
    root = _root(data_dir)
    for mode in _modes(execution_mode):
        for name in checksums.list_tables(root, mode):
            if table is not None and name != table:
                continue
            try:
                adopted = checksums.adopt(root / mode / name, in_flight_seconds=checksums.IN_FLIGHT_SECONDS)
            except ComponentError as exc:
                _fail(exc)
            if adopted:
                console.print(f"{mode}/{name}: recorded versions {adopted[0]}..{adopted[-1]} ({len(adopted)} commits)")


def backup(
    to: Annotated[str | None, typer.Option("--to", help="a directory or any pyarrow.fs URI (s3://bucket/prefix) "
                                           "[default: $RESULTS_STORE_BACKUP_URI, else {data_dir}-backup]")] = None,
    execution_mode: Modes = None,
    json_output: Json = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Copy what the last complete backup lacks (data, Delta logs, manifests, registries), verified; its manifest last."""
    root = _root(data_dir)
    location = backups.resolve_backup_uri(data_dir, to)
    results = {}
    for mode in _modes(execution_mode):
        if not checksums.list_tables(root, mode):
            continue
        try:
            results[mode] = backups.backup(root, mode, location)
        except ComponentError as exc:
            _fail(exc)
    if json_output:
        _print_json({m: r.to_json() for m, r in results.items()})
    for mode, result in results.items():
        if not json_output:
            console.print(f"{mode}: backup {result.backup_id} → {location}: {result.copied_files:,} files copied "
                          f"({result.copied_bytes / 1e6:,.1f} MB), {result.files:,} files ({result.bytes / 1e6:,.1f} MB) "
                          f"held, {result.elapsed_s:.2f} s" + ("" if result.ok else " — INCOMPLETE"))
        for failure in result.failures:
            print(f"not backed up: {failure}", file=sys.stderr)
    failed = [r for r in results.values() if not r.ok]
    if failed:
        _fail(failed[0].error())


def restore(
    from_: Annotated[str | None, typer.Option("--from", help="the backup's location [default: as for backup]")] = None,
    table: Annotated[str | None, typer.Option("--table", "-t", help="only this table")] = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="only this run's files")] = None,
    backup_id: Annotated[str | None, typer.Option("--backup-id", help="this backup [default: the newest complete one]")] = None,
    execution_mode: Modes = None,
    json_output: Json = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Bring back missing or damaged files from a backup (or everything, into an empty data dir), then verify."""
    root = _root(data_dir)
    location = backups.resolve_backup_uri(data_dir, from_)
    results = {}
    for mode in _modes(execution_mode):
        if execution_mode is None and backups.latest_backup(location, mode) is None:
            continue  # both modes asked for: a mode never backed up has nothing to restore
        try:
            results[mode] = backups.restore(root, mode, location, table=table, run_id=run, backup_id=backup_id)
        except ComponentError as exc:
            _fail(exc)
    if not results:
        _fail(ComponentError("RST-302", f"no complete backup at {location}", details={"location": location}))
    if json_output:
        _print_json({m: r.to_json() for m, r in results.items()})
    for mode, result in results.items():
        if not json_output:
            console.print(f"{mode}: {'full restore' if result.full else 'repair'} from backup {result.backup_id}: "
                          f"{len(result.restored):,} files ({result.bytes / 1e6:,.1f} MB) restored"
                          + (f", removed {', '.join(result.removed)}" if result.removed else "")
                          + f"; verified: {'ok' if result.ok else 'PROBLEMS REMAIN'}")
        for rel in result.unrestorable:
            print(f"not in the backup: {rel}", file=sys.stderr)
        for problem in result.verify.problems if result.verify else []:
            print(f"still wrong: {problem.line()}", file=sys.stderr)
    if any(not r.ok for r in results.values()):
        raise typer.Exit(1)


def retention_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would go (runs, rows, files, bytes); no change")] = False,
    days: Annotated[int | None, typer.Option("--days", help="keep this many days [default: each run's mode file]")] = None,
    backup_location: Annotated[str | None, typer.Option("--backup", help="the backup that must hold a run before it "
                                                        "goes [default: as for backup, when it exists]")] = None,
    execution_mode: Modes = None,
    json_output: Json = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Expire backtest runs and live rows past retention (never pinned or not backed up), compact, vacuum."""
    root = _root(data_dir)
    results = {}
    for mode in _modes(execution_mode):
        try:
            results[mode] = retention.run_retention(root, mode, dry_run=dry_run, retention_days=days,
                                                    backup_uri=backup_location, data_dir=data_dir)
        except ComponentError as exc:
            _fail(exc)
    if not dry_run:
        retention.prune_event_logs(data_dir)
    if json_output:
        _print_json({m: r.to_json() for m, r in results.items()})
        return
    for mode, result in results.items():
        plan = result.plan
        t = plan.totals()
        verb = "would remove" if dry_run else "removed"
        console.print(f"{mode}: {verb} {t['runs']} runs and {t['trimmed_runs']} live runs' old rows: {t['rows']:,} rows, "
                      f"{t['files']} files, {t['bytes'] / 1e6:,.2f} MB; vacuum {'would free' if dry_run else 'freed'} "
                      f"{t['vacuum_files']} files, {t['vacuum_bytes'] / 1e6:,.2f} MB")
        if plan.removals:
            listing = Table(title=f"{mode}: runs {verb}")
            for column in ("run", "whole", "rows", "files", "bytes", "why"):
                listing.add_column(column, overflow="fold")
            for r in plan.removals:
                listing.add_row(r.run_id, "yes" if r.whole else "old rows", f"{sum(r.rows.values()):,}", str(r.files),
                                f"{r.bytes:,}", r.reason)
            console.print(listing)
        for held in plan.held:
            console.print(f"{mode}: kept {held['run_id']}: {held['why']}")


def pin(
    run_id: Annotated[str, typer.Argument(help="the run retention must keep")],
    note: Annotated[str, typer.Option(help="why")] = "",
    execution_mode: Annotated[str, typer.Option("--execution-mode", "-e", help="backtest | live")] = "backtest",
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Keep a run through retention until it is unpinned."""
    try:
        lifecycle.pin(_root(data_dir), _modes(execution_mode)[0], run_id, note)
    except ComponentError as exc:
        _fail(exc)
    console.print(f"pinned {run_id}: retention keeps it")


def unpin(
    run_id: Annotated[str, typer.Argument(help="the run retention may remove again")],
    execution_mode: Annotated[str, typer.Option("--execution-mode", "-e", help="backtest | live")] = "backtest",
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Let retention remove a pinned run again once it is old enough."""
    try:
        lifecycle.unpin(_root(data_dir), _modes(execution_mode)[0], run_id)
    except ComponentError as exc:
        _fail(exc)
    console.print(f"unpinned {run_id}")


def backups_command(
    from_: Annotated[str | None, typer.Option("--from", help="the backup location [default: as for backup]")] = None,
    execution_mode: Modes = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """List the complete backups at a location (newest last)."""
    location = backups.resolve_backup_uri(data_dir, from_)
    listing = Table(title=f"complete backups at {location}")
    for column in ("mode", "backup", "created", "files", "MB", "copied"):
        listing.add_column(column, overflow="fold")
    for mode in _modes(execution_mode):
        for m in backups.list_backups(location, mode):
            listing.add_row(mode, m.backup_id, m.created_at, f"{len(m.files):,}", f"{m.size / 1e6:,.1f}",
                            f"{m.copied_files:,}")
    console.print(listing)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.add_typer(checksum_app, name="checksum")
    app.command()(backup)
    app.command()(restore)
    app.command("retention")(retention_command)
    app.command()(pin)
    app.command()(unpin)
    app.command("backups")(backups_command)
