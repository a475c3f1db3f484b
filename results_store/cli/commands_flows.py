"""CLI commands that run the Prefect flows.

Without PREFECT_API_URL the flows run against Prefect's local server, which the command starts
as its own child so that it dies with the command, even one killed with SIGKILL (see
``results_store.prefect_env``; its database is in ``{data_dir}/.prefect``); with it, against that
server, so the runs show in its UI. Prefect is imported only after ``_prepare_prefect`` has set
its environment, which is why the flow modules are imported inside the functions.

Everything a flow is given is checked before Prefect starts (mode, execution mode, run ids and a
user's mode file in ``options`` and ``_mode_and_config``; the data dir must be writable), so bad
input ends the command at once with its RST line, not with a Prefect ``ParameterTypeError`` after a
server start. A flow that fails ends the command with its one line too (``output.fail``); Prefect's
own report of the failure, traceback included, stays in the flow-run log (``_leave_failures_to_the_cli``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from results_store.cli.options import (
    ConfigFile,
    DataDir,
    ExecutionMode,
    OptionalMode,
    RunId,
    check_run_id,
    require_writable_data_dir,
)
from results_store.cli.output import fail, make_console
from results_store.prefect_env import configure_prefect, start_local_api_server
from schemas.errors import ComponentError
from schemas.identifiers import validate_run_id
from schemas.modes import load_mode_file
from schemas.settings import load_settings

console = make_console()
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
    if lines := summary.get("file_lines"):
        console.print(f"file lines: {lines['read']:,} read = {lines['written']:,} written + "
                      f"{lines['quarantined']:,} quarantined + {lines['refused']:,} refused")
    console.print(f"throughput: {summary['throughput']:,.0f} timesteps/s in the store; "
                  f"wall time with Prefect: {wall_s:.1f} s")
    if summary.get("parent_run_id"):
        console.print(f"parent run: {summary['parent_run_id']}")


def _prepare_prefect(data_dir: Path) -> None:
    """Prefect's settings, and its local API server unless PREFECT_API_URL names one; before Prefect loads.

    Every flow command writes (and Prefect's database is in ``{data_dir}/.prefect``), so the data dir
    must be writable: checked here, before anything starts, as one RST-004 line naming it.
    """
    require_writable_data_dir(data_dir)
    # BASIS_LOG_LEVEL is Prefect's level too (what the flow-run logs keep), unless Prefect's own is set;
    # when it is set, the terminal shows Prefect's records from that level instead of from WARNING.
    level = load_settings().log_level
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    if "BASIS_LOG_LEVEL" in os.environ:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)
    configure_prefect(data_dir, quiet_console=True)
    with console.status("starting Prefect's local API server"):  # about 6-10 s here (20 s on a fresh database)
        start_local_api_server()


class _LeaveFailuresToTheCli(logging.Filter):
    """Drops Prefect's ERROR records (a failed task or flow run, with its traceback) from the terminal.

    The command ends with its own line for the same failure; the records still reach the flow-run log
    (the API handler sits on Prefect's loggers, this filter only on the terminal's handler). Also
    dropped: the progress notes of Prefect's delivery of its own logs and events at exit
    ("EventsWorker - Still processing items: 4 items remaining..."), which came after that line.
    """

    _DELIVERY = frozenset({"EventsWorker", "APILogWorker"})  # Prefect's queue services log under their class names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in self._DELIVERY:
            return record.levelno >= logging.ERROR
        return record.levelno < logging.ERROR or not record.name.startswith("prefect")


def _leave_failures_to_the_cli() -> None:
    """Once Prefect has set up its logging: its failure reports off the terminal, unless BASIS_LOG_LEVEL=DEBUG."""
    if load_settings().log_level == "DEBUG":
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _LeaveFailuresToTheCli) for f in handler.filters):
            handler.addFilter(_LeaveFailuresToTheCli())


def _run(call: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run a flow call to completion; a failure ends the command with its one line (``output.fail``)."""
    try:
        return asyncio.run(call())
    except Exception as exc:
        fail(exc)


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

    _leave_failures_to_the_cli()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            # Until the first timesteps arrive, Prefect creates the flow and task runs (its server is up).
            bar = progress.add_task("starting Prefect", total=total)

            def stored(n: int) -> None:
                # Set, not advanced: a retried task reports the run's stored timesteps afresh.
                progress.update(bar, completed=n, description="storing timesteps")

            with report_progress(stored, lambda length: progress.update(bar, total=length)):
                summary = asyncio.run(backtest_results(data_dir=str(data_dir), **params))
            # The last commit happens as the store stops, after the engine's last timestep was fed.
            stored(summary["timesteps_skipped"] + summary["timesteps_written"])
    except Exception as exc:
        fail(exc)  # after the bar has drawn its last state: the failure is the command's last line
    _print_summary(summary, time.perf_counter() - started)


def _mode_and_config(mode: str | None, config: Path | None) -> tuple[str, str | None]:
    """The run's mode, and the user's mode file for the flow (``config_path``), checked before Prefect starts."""
    if config is None:
        if mode is None:
            fail(ComponentError("RST-201", "no mode: give --mode, or --config with a mode file of your own"))
        return mode, None
    try:
        loaded = load_mode_file(config, user_file=True)
    except ComponentError as exc:
        fail(exc)
    if mode is not None and mode != loaded.mode:
        fail(ComponentError("RST-201", f"--mode {mode!r}, but {config} is a mode file of {loaded.mode!r}"))
    return loaded.mode, str(config.resolve())


def backtest(
    mode: OptionalMode = None,
    start: Annotated[str, typer.Option(help="first timestamp (UTC)")] = "2024-01-01",
    end: Annotated[str, typer.Option(help="end, exclusive (UTC)")] = "2024-01-08",
    freq: Annotated[str, typer.Option(help="timestep: 1min ... 1d")] = "1min",
    seed: Annotated[int, typer.Option(help="reference engine seed")] = 0,
    run_id: RunId = None,
    strict: Strict = False,
    batch_size: Annotated[int | None, typer.Option(help="timesteps per commit")] = None,
    config: ConfigFile = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Run the reference engine through the store (the backtest-results flow) and print a summary."""
    mode, config_path = _mode_and_config(mode, config)
    _run_backtest_flow(data_dir, mode=mode, run_id=run_id, start=start, end=end, freq=freq, seed=seed,
                       strict=strict, batch_size=batch_size, config_path=config_path)


def ingest(
    file: Annotated[Path, typer.Argument(help="an engine's JSON Lines snapshot file", exists=True, dir_okay=False)],
    mode: OptionalMode = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="run identifier [default: the file stem]",
                                               callback=check_run_id)] = None,
    strict: Annotated[bool, typer.Option(help="all or nothing: refuse the file if any line is bad (every one "
                                         "named) and fail on the first invalid row [default: quarantine "
                                         "unparseable lines, refuse lines out of order, write the good ones]")] = False,
    config: ConfigFile = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Store an engine's JSON Lines snapshot file (the backtest-results flow) and print a summary."""
    mode, config_path = _mode_and_config(mode, config)
    if run_id is None:
        try:
            run_id = validate_run_id(file.stem)
        except ComponentError as exc:
            fail(ComponentError("RST-201", f"{exc.message}: the run id defaults to the file's stem; "
                                           "give one with --run-id"))
    _run_backtest_flow(data_dir, total=_count_lines(file), mode=mode, run_id=run_id,
                       snapshot_file=str(file.resolve()), strict=strict, strict_file=strict, config_path=config_path)


def _flow_call(name: str, data_dir: Path, **params: Any) -> dict[str, Any]:
    _prepare_prefect(data_dir)
    from flows.live_snapshots import live_snapshots
    from flows.rerun_results import rerun_results

    _leave_failures_to_the_cli()
    flows: dict[str, Any] = {"rerun": rerun_results, "live": live_snapshots}
    return _run(lambda: flows[name](data_dir=str(data_dir), **params))


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _csv_option(what: str) -> Any:
    return typer.Option(help=f"comma-separated {what} [default: the run's own]")


def rerun(
    run_id: Annotated[str, typer.Argument(help="the run to re-derive from its raw snapshots", callback=check_run_id)],
    new_run_id: Annotated[str | None, typer.Option(help="write a new run (lineage: parent = RUN_ID)",
                                                   callback=check_run_id)] = None,
    result_types: Annotated[str | None, _csv_option("result types")] = None,
    balance_sheet_assets: Annotated[str | None, _csv_option("balance-sheet assets")] = None,
    pnl_attribution_types: Annotated[str | None, _csv_option("PnL attribution types")] = None,
    delta_tracking_assets: Annotated[str | None, _csv_option("delta-tracking assets")] = None,
    funding_tracking_venues: Annotated[str | None, _csv_option("funding venues")] = None,
    dust_tracking_tokens: Annotated[str | None, _csv_option("dust tokens")] = None,
    strict: Strict = False,
    execution_mode: ExecutionMode = "backtest",
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
    empty_dropped_tables: Annotated[bool, typer.Option(help="in place: allow --result-types that leave out a table "
                                                       "holding the run's rows (emptied in a new version)")] = False,
) -> None:
    """Re-derive a run's tables with new parameters: new versions (or a new run), never a silent overwrite."""
    started = time.perf_counter()
    summary = _flow_call(
        "rerun", data_dir, run_id=run_id, new_run_id=new_run_id, result_types=_csv(result_types),
        balance_sheet_assets=_csv(balance_sheet_assets), pnl_attribution_types=_csv(pnl_attribution_types),
        delta_tracking_assets=_csv(delta_tracking_assets), funding_tracking_venues=_csv(funding_tracking_venues),
        dust_tracking_tokens=_csv(dust_tracking_tokens), strict=strict, execution_mode=execution_mode,
        empty_dropped_tables=empty_dropped_tables,
    )
    _print_summary(summary, time.perf_counter() - started)


def live(
    mode: OptionalMode = None,
    run_id: RunId = None,
    anchor: Annotated[str | None, typer.Option(help="time of the feed's timestep 0 [default: today 00:00 UTC]")] = None,
    config: ConfigFile = None,
    data_dir: DataDir = ...,  # type: ignore[assignment]  # typer fills it from DataDir's default_factory
) -> None:
    """Collect and store the pending live snapshots once (what the every-minute deployment runs)."""
    mode, config_path = _mode_and_config(mode, config)
    started = time.perf_counter()
    summary = _flow_call("live", data_dir, mode=mode, run_id=run_id, anchor=anchor, config_path=config_path)
    _print_summary(summary, time.perf_counter() - started)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(backtest)
    app.command()(ingest)
    app.command()(rerun)
    app.command()(live)
