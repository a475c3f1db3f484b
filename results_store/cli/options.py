"""Options every command shares, so their names, defaults and help stay identical."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from schemas.modes import MODE_NAMES
from schemas.settings import resolve_data_dir

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="root of tables, logs and WAL [default: $BASIS_DATA_DIR, else ./data]",
                 default_factory=resolve_data_dir, show_default=False),
]
Mode = Annotated[str, typer.Option("--mode", "-m", help=f"strategy mode: {', '.join(MODE_NAMES)}")]
RunId = Annotated[str | None, typer.Option("--run-id", help="run identifier; the same id resumes a run")]
