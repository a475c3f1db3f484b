"""CLI commands that drive the reference engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from results_store.cli.options import Mode
from results_store.cli.output import fail, make_console
from results_store.error_map import storage_errors
from results_store.simulator.jsonl import write_jsonl
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode

__all__ = ["register", "simulate"]

console = make_console()
PROGRESS_FROM = 20_000   # timesteps; shorter runs finish before a bar is worth drawing
_TICK = 1_000


def simulate(
    mode: Mode,
    start: Annotated[str, typer.Option(help="first timestamp (UTC), e.g. 2024-01-01")],
    end: Annotated[str, typer.Option(help="end of the range, exclusive (UTC)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON Lines file to write")],
    freq: Annotated[str, typer.Option(help="timestep: 1min, 5min, 15min, 1h, 4h or 1d")] = "1min",
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same snapshots")] = 0,
) -> None:
    """Write a mode's simulated snapshots to a JSON Lines file, one timestep per line."""
    try:
        engine = ReferenceEngine(load_mode(mode), start, end, freq, seed=seed)
    except ComponentError as exc:
        fail(exc)
    except ValueError as exc:  # the engine's own check of start, end and freq
        fail(ComponentError("RST-201", str(exc)))
    try:
        with storage_errors("write snapshots", out):  # a full disk or a read-only --out: RST-004 naming the file
            written = _write(engine, mode, out)
    except ComponentError as exc:
        fail(exc)
    console.print(f"wrote {written} timesteps of {mode} ({freq}, seed {seed}) to {out}", highlight=False)


def _write(engine: ReferenceEngine, mode: str, out: Path) -> int:
    total = len(engine)
    if total < PROGRESS_FROM:
        written = write_jsonl(engine, out)
    else:
        with Progress(TextColumn("simulating {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as progress:
            task = progress.add_task(mode, total=total)

            def ticking() -> Iterator[tuple[pd.Timestamp, dict[str, Any]]]:
                for index, item in enumerate(engine.iter_snapshots(), start=1):
                    yield item
                    if index % _TICK == 0:
                        progress.update(task, completed=index)

            written = write_jsonl(ticking(), out)
    return written


def register(app: typer.Typer) -> None:
    """Add this module's commands (``simulate``) to the app."""
    app.command()(simulate)
