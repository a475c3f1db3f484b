"""The ``results-store`` command line: one typer app, commands grouped by the layer they drive."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from rich.table import Table

from results_store.cli import (
    commands_audit,
    commands_engine,
    commands_export,
    commands_flows,
    commands_lifecycle,
    commands_store,
)
from results_store.cli.options import JsonOutput
from results_store.cli.output import echo_json, fail, make_console, report_failure
from schemas.errors import ComponentError
from schemas.modes import load_all_modes
from schemas.redaction import redact_text
from schemas.result_types import ResultType
from schemas.settings import StoreSettings, load_settings
from schemas.tables import column_docs

app = typer.Typer(
    name="results-store",
    help="Results store of the basis-trading system: validated, versioned Delta tables via Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = make_console()


@app.callback()
def _environment() -> None:
    # Runs before every command: a bad BASIS_* or RESULTS_STORE_* variable is one RST-201 line naming
    # it, not a pydantic traceback halfway through a command; BASIS_LOG_LEVEL becomes the level of the
    # library's own loggers (the event log and Prefect get it where they are set up).
    try:
        settings = load_settings()
    except ValidationError as exc:
        fail(ComponentError("RST-201", "; ".join(_env_problem(e) for e in exc.errors())))
    logging.getLogger("results_store").setLevel(settings.log_level)


def _env_problem(error: ErrorDetails) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    alias = StoreSettings.model_fields[field].validation_alias if field in StoreSettings.model_fields else None
    names = [c for c in getattr(alias, "choices", []) if isinstance(c, str) and c.isupper()]
    return f"{names[0] if names else field}: {error['msg']} (got {redact_text(repr(error.get('input')))})"


@app.command()
def modes(json_output: JsonOutput = False) -> None:
    """List the 7 strategy modes and the result types each one stores."""
    configs = load_all_modes()
    if json_output:
        echo_json([{"mode": name, "result_types": [t.value for t in cfg.results_store.result_types],
                    "share_class": cfg.strategy.share_class, "description": cfg.description}
                   for name, cfg in configs.items()])
        return
    table = Table(title="strategy modes")
    table.add_column("mode", overflow="fold")
    table.add_column("result types")
    table.add_column("share class")
    for name, cfg in configs.items():
        table.add_row(name, ", ".join(t.value for t in cfg.results_store.result_types),
                      cfg.strategy.share_class)
    console.print(table)


@app.command()
def schema(
    result_type: Annotated[str, typer.Argument(help="one of the 8 result types")],
    json_output: JsonOutput = False,
) -> None:
    """Show a result table's columns, derived from its pandera model."""
    try:
        rtype = ResultType(result_type)
    except ValueError:
        fail(ComponentError("RST-201", f"unknown result type {result_type!r}; allowed: "
                                       f"{', '.join(t.value for t in ResultType)}"))
    if json_output:
        echo_json([dict(zip(("column", "type", "description"), row, strict=True)) for row in column_docs(rtype)])
        return
    table = Table(title=rtype.value)
    for col in ("column", "type", "description"):
        table.add_column(col, overflow="fold")
    for row in column_docs(rtype):
        table.add_row(*row)
    console.print(table)


commands_engine.register(app)
commands_store.register(app)
commands_flows.register(app)
commands_audit.register(app)
commands_lifecycle.register(app)
commands_export.register(app)


def main() -> None:
    """The console script. Commands print their own failure line; anything that escapes them (an
    OSError, a bug) still ends in one line and the exit code of its kind (``output.exit_code``), not a
    traceback. BASIS_LOG_LEVEL=DEBUG keeps the traceback, for a bug report."""
    try:
        app()
    except Exception as exc:
        code = report_failure(exc)
        if os.environ.get("BASIS_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
