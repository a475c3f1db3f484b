"""Options every command shares, so their names, defaults, help and checks stay identical.

The checks run while typer parses the command line, before a command does any work (before Prefect
starts, for the flow commands), and end the command with the one RST line of ``output.fail``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from results_store.cli.output import fail
from schemas.errors import ComponentError
from schemas.identifiers import validate_run_id
from schemas.modes import MODE_NAMES
from schemas.settings import resolve_data_dir

__all__ = [
    "ConfigFile",
    "DataDir",
    "ExecutionMode",
    "JsonOutput",
    "Mode",
    "OptionalMode",
    "RunId",
    "check_execution_mode",
    "check_mode",
    "check_run_id",
    "check_run_ids",
    "data_dir_problem",
    "require_writable_data_dir",
]

EXECUTION_MODES = ("backtest", "live")


def check_run_id(value: str | None) -> str | None:
    """A run id argument or option: None (not given) or a valid run id (``schemas.identifiers``)."""
    if value is None:
        return None
    try:
        return validate_run_id(value)
    except ComponentError as exc:
        fail(exc)


def check_run_ids(values: list[str] | None) -> list[str] | None:
    """Several run id arguments: each a valid run id."""
    for value in values or []:
        check_run_id(value)
    return values


def check_mode(value: str | None) -> str | None:
    if value is not None and value not in MODE_NAMES:
        fail(ComponentError("RST-201", f"--mode {value!r} is not a strategy mode; allowed: {', '.join(MODE_NAMES)}"))
    return value


def check_execution_mode(value: str | None) -> str | None:
    if value is not None and value not in EXECUTION_MODES:
        fail(ComponentError("RST-201", f"--execution-mode {value!r} is not allowed; "
                                       f"allowed: {', '.join(EXECUTION_MODES)}"))
    return value


def data_dir_problem(path: Path, *, write: bool) -> str | None:
    """Why ``path`` cannot serve as the data dir (for writing, if ``write``), or None.

    Writing is tried for real (a file created and removed): a mode or an access() check says
    nothing of an immutable directory or, for root, of a read-only mount.
    """
    if path.exists() and not path.is_dir():
        return f"data dir {path} is not a directory"
    if not write:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = {errno.EROFS: "is on a read-only file system", errno.ENOSPC: "is on a full disk",
                  errno.EPERM: "refuses writes (permission, or the immutable attribute)",
                  errno.EACCES: "refuses writes (permission)", errno.ENOTDIR: "is below a file, not a directory",
                  }.get(exc.errno or 0, f"cannot be written: {exc.strerror}")
        return f"data dir {path} {reason} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    return None


def _checked_data_dir(value: Path) -> Path:
    # A file in place of the data dir makes every command fail, reading ones included.
    problem = data_dir_problem(value, write=False)
    if problem:
        fail(ComponentError("RST-004", problem, details={"path": str(value)}))
    return value


def require_writable_data_dir(path: Path) -> None:
    """End a command that writes unless it can write under ``path`` (RST-004 naming the path)."""
    problem = data_dir_problem(path, write=True)
    if problem:
        fail(ComponentError("RST-004", problem, details={"path": str(path)}))


DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="root of tables, logs and WAL [default: $BASIS_DATA_DIR, else ./data]",
                 default_factory=resolve_data_dir, show_default=False, callback=_checked_data_dir),
]
Mode = Annotated[str, typer.Option("--mode", "-m", help=f"strategy mode: {', '.join(MODE_NAMES)}",
                                   callback=check_mode)]
# For the commands that also take --config: the mode may come from the file instead.
OptionalMode = Annotated[str | None, typer.Option("--mode", "-m", help=f"strategy mode: {', '.join(MODE_NAMES)} "
                                                  "[default: the --config file's]", callback=check_mode)]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="a mode file of your own (any name, anywhere; its "
                                                 "`mode` field must be one of the strategy modes) instead of the "
                                                 "mode's own", show_default=False)]
RunId = Annotated[str | None, typer.Option("--run-id", help="run identifier (1-128 characters of A-Z a-z 0-9 . _ -); "
                                           "the same id resumes a run", callback=check_run_id)]
# Default from BASIS_EXECUTION_MODE, else backtest: the precedence of every setting (flag, environment, default).
ExecutionMode = Annotated[str, typer.Option("--execution-mode", "-e", help="backtest | live",
                                            envvar="BASIS_EXECUTION_MODE", callback=check_execution_mode)]
JsonOutput = Annotated[bool, typer.Option("--json", help="print JSON for scripts instead of a table")]
