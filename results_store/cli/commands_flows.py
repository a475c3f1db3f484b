"""CLI commands that run the Prefect flows.

Without PREFECT_API_URL the flows run against Prefect's local server, which the command starts
as its own child so that it dies with the command, even one killed with SIGKILL (see
``results_store.prefect_env``; its database is in ``{data_dir}/.prefect``); with it, against that
server, so the runs show in its UI. Prefect is imported only after ``_prepare_prefect`` has set
its environment, which is why the flow modules are imported inside the functions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from results_store.cli.options import DataDir, Mode, RunId
from results_store.prefect_env import configure_prefect, start_local_api_server
from schemas.errors import ComponentError

console = Console()
ExecutionMode = Annotated[str, typer.Option("--execution-mode", "-e", help="backtest | live")]
Strict = Annotated[bool, typer.Option(help="fail on the first invalid row instead of quarantining it")]


def _print_summary(summary: dict[str, Any], wall_s: float) -> None:
    table = Table(title=f"run {summary['run_id']}", caption=f"{summary['mode']} · {summary['execution_mode']} · "
                  f"{summary['status']}")
    for col in ("table", "rows", "commits", "version"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for name in sorted(summary["table_paths"]):
        version = summary["table_versions"].get(name)
        table.add_row(name, f"{summary['rows'].get(name, 0):,}", str(summary["commits"].get(name, 0)),
                      "" if version is None else str(version))
    console.print(table)
    parents = {str(Path(p).parent) for p in summary["table_paths"].values()}
    if len(parents) == 1:
        console.print(f"tables: {parents.pop()}/<table>/ (Delta, partitioned by run_id)")
    else:
        for name, path in sorted(summary["table_paths"].items()):
            console.print(f"{name}: {path}")
    console.print(f"timesteps: {summary['timesteps_received']:,} received, "
                  f"{summary['timesteps_skipped']:,} skipped (already committed)")
    console.print(f"quarantined rows: {summary['quarantined']:,}")
    console.print(f"throughput: {summary['throughput']:,.0f} timesteps/s in the store; "
                  f"wall time with Prefect: {wall_s:.1f} s")
    if summary.get("parent_run_id"):
        console.print(f"parent run: {summary['parent_run_id']}")


def _prepare_prefect(data_dir: Path) -> None:
    """Prefect's settings, and its local API server unless PREFECT_API_URL names one; before Prefect loads."""
    configure_prefect(data_dir, quiet_console=True)
    with console.status("starting Prefect's local API server"):  # about 6-10 s here (20 s on a fresh database)
        start_local_api_server()


def _run(call: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run a flow call to completion; project errors print as one red line and exit 2."""
    try:
        return asyncio.run(call())
    except ComponentError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
    return count


def _run_backtest_flow(data_dir: Path, total: int | None = None, **params: Any) -> None:
    started = time.perf_counter()  # the server's start-up counts, as it did inside Prefect's ephemeral mode
    _prepare_prefect(data_dir)
    from flows.backtest_results import backtest_results
    from results_store.drive import report_progress

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        # Until the first timesteps arrive, Prefect creates the flow and task runs (its server is up).
        bar = progress.add_task("starting Prefect", total=total)

        def advance(n: int) -> None:
            progress.update(bar, advance=n, description="storing timesteps")

        with report_progress(advance, lambda length: progress.update(bar, total=length)):
            summary = _run(lambda: backtest_results(data_dir=str(data_dir), **params))
    _print_summary(summary, time.perf_counter() - started)


def backtest(
    mode: Mode,
    start: Annotated[str, typer.Option(help="first timestamp (UTC)")] = "2024-01-01",
    end: Annotated[str, typer.Option(help="end, exclusive (UTC)")] = "2024-01-08",
    freq: Annotated[str, typer.Option(help="timestep: 1min ... 1d")] = "1min",
    seed: Annotated[int, typer.Option(help="reference engine seed")] = 0,
    run_id: RunId = None,
    strict: Strict = False,
    batch_size: Annotated[int | None, typer.Option(help="timesteps per commit")] = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Run the reference engine through the store (the backtest-results flow) and print a summary."""
    _run_backtest_flow(data_dir, mode=mode, run_id=run_id, start=start, end=end, freq=freq, seed=seed,
                       strict=strict, batch_size=batch_size)


def ingest(
    file: Annotated[Path, typer.Argument(help="an engine's JSON Lines snapshot file", exists=True, dir_okay=False)],
    mode: Mode,
    run_id: Annotated[str | None, typer.Option("--run-id", help="run identifier [default: the file stem]")] = None,
    strict: Strict = False,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Store an engine's JSON Lines snapshot file (the backtest-results flow) and print a summary."""
    _run_backtest_flow(data_dir, total=_count_lines(file), mode=mode, run_id=run_id or file.stem,
                       snapshot_file=str(file.resolve()), strict=strict)


def _flow_call(name: str, data_dir: Path, **params: Any) -> dict[str, Any]:
    _prepare_prefect(data_dir)
    from flows.live_snapshots import live_snapshots
    from flows.rerun_results import rerun_results

    flows: dict[str, Any] = {"rerun": rerun_results, "live": live_snapshots}
    return _run(lambda: flows[name](data_dir=str(data_dir), **params))


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _csv_option(what: str) -> Any:
    return typer.Option(help=f"comma-separated {what} [default: the run's own]")


def rerun(
    run_id: Annotated[str, typer.Argument(help="the run to re-derive from its raw snapshots")],
    new_run_id: Annotated[str | None, typer.Option(help="write a new run (lineage: parent = RUN_ID)")] = None,
    result_types: Annotated[str | None, _csv_option("result types")] = None,
    balance_sheet_assets: Annotated[str | None, _csv_option("balance-sheet assets")] = None,
    pnl_attribution_types: Annotated[str | None, _csv_option("PnL attribution types")] = None,
    delta_tracking_assets: Annotated[str | None, _csv_option("delta-tracking assets")] = None,
    funding_tracking_venues: Annotated[str | None, _csv_option("funding venues")] = None,
    dust_tracking_tokens: Annotated[str | None, _csv_option("dust tokens")] = None,
    strict: Strict = False,
    execution_mode: ExecutionMode = "backtest",
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Re-derive a run's tables with new parameters: new versions (or a new run), never a silent overwrite."""
    started = time.perf_counter()
    summary = _flow_call(
        "rerun", data_dir, run_id=run_id, new_run_id=new_run_id, result_types=_csv(result_types),
        balance_sheet_assets=_csv(balance_sheet_assets), pnl_attribution_types=_csv(pnl_attribution_types),
        delta_tracking_assets=_csv(delta_tracking_assets), funding_tracking_venues=_csv(funding_tracking_venues),
        dust_tracking_tokens=_csv(dust_tracking_tokens), strict=strict, execution_mode=execution_mode,
    )
    _print_summary(summary, time.perf_counter() - started)


def live(
    mode: Mode,
    run_id: RunId = None,
    anchor: Annotated[str | None, typer.Option(help="time of the feed's timestep 0 [default: today 00:00 UTC]")] = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Collect and store the pending live snapshots once (what the every-minute deployment runs)."""
    started = time.perf_counter()
    summary = _flow_call("live", data_dir, mode=mode, run_id=run_id, anchor=anchor)
    _print_summary(summary, time.perf_counter() - started)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(backtest)
    app.command()(ingest)
    app.command()(rerun)
    app.command()(live)
