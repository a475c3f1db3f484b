"""CLI commands that read what the store wrote: runs, tables, versions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import orjson
import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from results_store.cli.options import DataDir, ExecutionMode, JsonOutput, check_run_id
from results_store.cli.output import echo_json, fail, make_console
from results_store.query import ResultQuery, retrieve_results, scan_results
from results_store.reading import table_history
from results_store.runs import latest_run, read_runs
from schemas.errors import ComponentError
from schemas.settings import load_settings

console = make_console()


def show(
    run_id: Annotated[str | None, typer.Argument(help="a run to show; omit to list runs", callback=check_run_id)] = None,
    table: Annotated[str | None, typer.Option("--table", "-t", help="print this table's rows for the run")] = None,
    version: Annotated[int | None, typer.Option("--version", help="read the table as of this Delta version")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="read the table as it was at this time (ISO 8601, UTC)")] = None,
    start: Annotated[str | None, typer.Option("--start", help="first timestamp, inclusive (ISO 8601, UTC)")] = None,
    end: Annotated[str | None, typer.Option("--end", help="last timestamp, exclusive (ISO 8601, UTC)")] = None,
    columns: Annotated[str | None, typer.Option("--columns", "-c", help="comma-separated columns to print")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", "-w", help="COLUMN=V1,V2: keep rows whose column is one of the values (repeatable)")] = None,  # noqa: E501
    points: Annotated[int | None, typer.Option("--points", help="downsample each series to at most N points")] = None,
    every: Annotated[str | None, typer.Option("--every", help="downsample to one row per bucket of this length (15min, 1h, 1D)")] = None,  # noqa: E501
    how: Annotated[str, typer.Option("--how", help="downsampling: last row of a bucket, or mean of its floats")] = "last",
    limit: Annotated[int, typer.Option("--limit", "-n", help="rows to print")] = 20,
    execution_mode: ExecutionMode = "backtest",
    json_output: JsonOutput = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """List runs, show one run's tables and lineage, or print a table's rows (filtered, downsampled, time-travelled)."""
    root = load_settings(data_dir=data_dir).root
    try:
        if run_id is None:
            _list_runs(root, execution_mode, json_output)
        elif table is None:
            _show_run(root, execution_mode, run_id, json_output)
        else:
            query = ResultQuery.parse({
                "result_type": table, "run_id": run_id, "version": version, "as_of": as_of, "start": start,
                "end": end, "columns": columns.split(",") if columns else None, "where": _where(where),
                "points": points, "every": every, "how": how, "output": "arrow"})
            _print_query(root, execution_mode, query, limit, json_output)
    except ComponentError as exc:
        fail(exc)


def _where(terms: list[str] | None) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for term in terms or []:
        column, sep, values = term.partition("=")
        if not sep or not column:
            raise ComponentError("RST-201", f"--where takes COLUMN=V1,V2, got {term!r}")
        parsed.setdefault(column.strip(), []).extend(v.strip() for v in values.split(","))
    return parsed


def _print_query(root: Path, execution_mode: str, query: ResultQuery, limit: int, as_json: bool = False) -> None:
    """The query's first ``limit`` rows, titled with how many rows it matches in all and the version read."""
    scan = scan_results(root, query, execution_mode=execution_mode)
    bounded = query.downsampled or query.start is not None or query.end is not None or query.where
    if bounded:
        data = retrieve_results(root, query, execution_mode=execution_mode)
        total = data.num_rows
        data = data.slice(0, limit)
    else:
        # A whole run is not read to print 20 rows: its row count is in the Delta log.
        files = scan.table.runs(query.run_ids)[0][1] if query.run_ids else list(scan.table.files)
        total = sum(f.num_records or 0 for f in files)
        data = retrieve_results(root, replace(query, limit=limit), execution_mode=execution_mode)
    run = ",".join(query.run_ids or ())
    travelled = f" · version {scan.version}" if query.version is not None or query.as_of is not None else ""
    sampled = f" · {query.points} points" if query.points else (f" · every {query.every}" if query.every else "")
    if as_json:
        echo_json(data.to_pylist())
        return
    _print_rows(data.to_pylist(), f"{query.result_type.value} · {run} · {total:,} rows{travelled}{sampled}")


_LISTED = ("run_id", "mode", "status", "started_at", "finished_at", "parent_run_id", "note")


def _list_runs(root: Path, execution_mode: str, as_json: bool = False) -> None:
    runs = read_runs(root, execution_mode)
    if as_json:
        echo_json([{k: None if _cell(r[k]) == "" else r[k] for k in _LISTED} for r in runs.to_dict("records")])
        return
    table = Table(title=f"{execution_mode} runs under {root}")
    for col in ("run_id", "mode", "status", "started", "finished", "parent", "note"):
        # Ids and names fold on a narrow terminal rather than end in an ellipsis.
        table.add_column(col, overflow="fold")
    for r in runs.to_dict("records"):
        table.add_row(_cell(r["run_id"]), _cell(r["mode"]), _cell(r["status"]), _cell(r["started_at"])[:19],
                      _cell(r["finished_at"])[:19], _cell(r["parent_run_id"]), _cell(r["note"]))
    console.print(table)


def _cell(value: object) -> str:
    """A registry value as table text: missing values (None, NaN, NaT from pandas) are blank; brackets
    are text, not rich markup (a note's "[errno 28]" was swallowed)."""
    return "" if value is None or pd.isna(value) else escape(str(value))


def _show_run(root: Path, execution_mode: str, run_id: str, as_json: bool = False) -> None:
    record = latest_run(root, execution_mode, run_id)
    if record is None:
        raise ComponentError("RST-302", f"no run {run_id!r} in {root}/{execution_mode}")
    if as_json:
        echo_json(record)
        return
    console.print(f"[bold]{run_id}[/bold] · {record['mode']} · {record['status']} · "
                  f"config {record['config_hash'][:12]} · code {record['code_version']}")
    if record.get("parent_run_id"):
        console.print(f"parent run: {record['parent_run_id']}")
    table = Table(title="tables")
    for col in ("table", "rows", "version after run", "latest commits"):
        table.add_column(col)
    versions = record["table_versions"]
    flat_versions = versions.get("after", versions) if isinstance(versions, dict) else {}
    for name, rows in sorted(record["row_counts"].items()):
        history = table_history(root, execution_mode, name, limit=3)
        ops = ", ".join(f"v{h.get('version')} {h.get('operation')}" for h in history)
        table.add_row(name, f"{rows:,}", str(flat_versions.get(name, "")), ops)
    console.print(table)


def _print_rows(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    if not rows:
        console.print(f"{title}: no rows")
        return
    for col in rows[0]:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[escape(orjson.dumps(v, default=str).decode().strip('"') if not isinstance(v, str) else v)
                        for v in row.values()])
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(show)
