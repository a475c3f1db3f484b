"""The ``results-store`` command line: one typer app, commands grouped by the layer they drive."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from results_store.cli import (
    commands_audit,
    commands_engine,
    commands_export,
    commands_flows,
    commands_lifecycle,
    commands_store,
)
from schemas.errors import ComponentError
from schemas.modes import load_all_modes
from schemas.result_types import ResultType
from schemas.tables import column_docs

app = typer.Typer(
    name="results-store",
    help="Results store of the basis-trading system: validated, versioned Delta tables via Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


@app.command()
def modes() -> None:
    """List the 7 strategy modes and the result types each one stores."""
    table = Table(title="strategy modes")
    table.add_column("mode")
    table.add_column("result types")
    table.add_column("share class")
    for name, cfg in load_all_modes().items():
        table.add_row(name, ", ".join(t.value for t in cfg.results_store.result_types),
                      cfg.strategy.share_class)
    console.print(table)


@app.command()
def schema(result_type: str = typer.Argument(..., help="one of the 8 result types")) -> None:
    """Show a result table's columns, derived from its pandera model."""
    try:
        rtype = ResultType(result_type)
    except ValueError:
        raise typer.BadParameter(f"allowed: {', '.join(t.value for t in ResultType)}") from None
    table = Table(title=rtype.value)
    for col in ("column", "type", "description"):
        table.add_column(col)
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
    try:
        app()
    except ComponentError as exc:
        console.print(f"[red]{exc}[/red]")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
