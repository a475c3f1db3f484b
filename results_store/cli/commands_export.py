"""CLI commands that hand a run's results to people and other tools: ``export`` and ``report``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from results_store.cli.options import DataDir, ExecutionMode, check_run_id
from results_store.cli.output import fail, make_console
from results_store.export import FORMATS, ExportFormat, export_run
from results_store.report import write_bundle
from schemas.errors import ComponentError
from schemas.settings import load_settings

__all__ = ["export", "register", "report"]

console = make_console()


def export(
    run_id: Annotated[str, typer.Argument(help="the run to export", callback=check_run_id)],
    format: Annotated[str, typer.Option("--format", "-f", help=f"one of {', '.join(FORMATS)}")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="directory for the files and manifest.json "
                                             "[default: {data_dir}/{execution_mode}/exports/{run_id}-{format}]",
                                             show_default=False)] = None,
    db_url: Annotated[str | None, typer.Option("--db-url", help="db: postgresql://user@host:port/db "
                                               "[default: SQLite at OUT/results.sqlite]")] = None,
    db_schema: Annotated[str | None, typer.Option("--db-schema", help="db: PostgreSQL schema for the tables")] = None,
    tables: Annotated[str | None, typer.Option("--tables", help="comma-separated result types "
                                               "[default: all of the run's]")] = None,
    start: Annotated[str | None, typer.Option("--start", help="first timestamp, inclusive (ISO 8601, UTC)")] = None,
    end: Annotated[str | None, typer.Option("--end", help="last timestamp, exclusive (ISO 8601, UTC)")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="the tables as they were at this time")] = None,
    execution_mode: ExecutionMode = "backtest",
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Export a run's result tables to CSV, JSON Lines, JSON, Parquet or a database, with a manifest."""
    root = load_settings(data_dir=data_dir).root
    if format not in FORMATS:
        raise typer.BadParameter(f"allowed: {', '.join(FORMATS)}", param_hint="--format")
    target = out or root / execution_mode / "exports" / f"{run_id}-{format}"
    t0 = time.perf_counter()
    try:
        chosen: ExportFormat = format  # type: ignore[assignment]  # checked against FORMATS above
        manifest = export_run(root, run_id, chosen, target, execution_mode=execution_mode,
                              tables=tables.split(",") if tables else None, start=start, end=end, as_of=as_of,
                              db_url=db_url, db_schema=db_schema)
    except ComponentError as exc:
        fail(exc)
    listing = Table(title=f"{run_id} → {manifest.get('database', {}).get('url') or target} ({format}) "
                          f"in {time.perf_counter() - t0:.2f} s")
    for column in ("table", "version", "rows", "file", "sha256"):
        listing.add_column(column)
    for name, entry in manifest["tables"].items():
        listing.add_row(name, str(entry["version"]), f"{entry['rows']:,}", entry.get("file") or "",
                        (entry.get("sha256") or "")[:16])
    console.print(listing)
    console.print(f"manifest: {target / 'manifest.json'}")


def report(
    run_id: Annotated[str, typer.Argument(help="the run to report on", callback=check_run_id)],
    execution_mode: ExecutionMode = "backtest",
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Write the run's bundle: performance, trades and events CSVs, summary.json and report.html with plots."""
    settings = load_settings(data_dir=data_dir)
    t0 = time.perf_counter()
    try:
        bundle = write_bundle(settings.root, run_id, execution_mode=execution_mode, event_log_dir=settings.data_dir)
    except ComponentError as exc:
        fail(exc)
    console.print(bundle.summary.to_markdown())
    console.print(f"\nbundle written in {time.perf_counter() - t0:.1f} s: {bundle.directory}")
    console.print(f"report: {bundle.report.as_uri()}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(export)
    app.command()(report)
