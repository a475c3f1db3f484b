"""What the ``results-store`` command prints: its consoles, JSON for scripts, and its one failure line.

**Failures.** Every failure ends the command with one line on stderr, ``RST-xxx title: what, where``,
and an exit code that says whose move it is (the one mapping, :func:`exit_code`):

=================  ==============================================================  =========
codes              meaning                                                         exit code
=================  ==============================================================  =========
RST-1xx            bad input: a snapshot, a file's line, a timestep                2
RST-2xx            bad configuration: an option, a run id, a mode file             2
RST-3xx            the run's lifecycle: a run id taken by another run, not found    2
RST-0xx            storage: the run failed (disk, permission, corruption, ...)     1
RST-9xx            a bug                                                           1
=================  ==============================================================  =========

2 means "change what you asked for"; 1 means "what you asked for failed, the same command may work
once the storage is fixed". Click's own usage errors (an unknown option) also exit with 2.

The line is printed as plain text, never as rich markup: an error's text may hold brackets
(``[errno 28]``) that markup would swallow. Messages are flattened to one line (delta-rs chains
causes over several lines) with control characters escaped (a run id may hold a newline).
Prefect's tracebacks stay in the flow-run log: ``commands_flows`` keeps them off the terminal.

**Output.** Piped output is read by scripts, so nothing is cut to the terminal's 80 columns: when
stdout is not a terminal the console is as wide as the longest line, and on a terminal the columns
that hold names and ids fold instead of ending in an ellipsis.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.text import Text

from results_store.error_map import map_error
from schemas.errors import ComponentError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_RUN_FAILED",
    "as_component_error",
    "echo_json",
    "exit_code",
    "fail",
    "failure_line",
    "make_console",
    "report_failure",
]

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
# Wide enough for any row a table of ours holds; rich measures columns by their content, so
# nothing is padded to this width.
_PIPED_WIDTH = 100_000


def make_console(*, stderr: bool = False) -> Console:
    """A console that never cuts a line when its output goes to a pipe or a file."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty()
    return Console(stderr=stderr, width=_PIPED_WIDTH if piped else None, soft_wrap=piped)


_stderr = make_console(stderr=True)


def exit_code(error_code: str) -> int:
    """The exit code of a failure with ``error_code`` (the table in the module docstring)."""
    family = error_code.removeprefix("RST-")[:1]
    return EXIT_BAD_INPUT if family in {"1", "2", "3"} else EXIT_RUN_FAILED


def as_component_error(exc: BaseException) -> ComponentError:
    """Any exception that ends a command, as the registry's error that describes it."""
    if isinstance(exc, ComponentError):
        return exc
    name = type(exc).__name__
    if name == "ChecksumMismatch":  # results_store.maintenance: stored payloads that changed
        return ComponentError("RST-005", str(exc), original_exception=exc)
    if name == "ParameterTypeError" and type(exc).__module__.startswith("prefect"):
        # A flow parameter the CLI did not check first; Prefect lists the bad ones.
        return ComponentError("RST-201", str(exc).replace("Flow run received invalid parameters:", "").strip(),
                              original_exception=exc)
    if isinstance(exc, OSError):
        return map_error(exc, "the command", exc.filename)
    return map_error(exc, "the command")


def failure_line(error: ComponentError) -> str:
    """``error`` as the one line the command ends with."""
    flat = " ".join(str(error).split())
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in flat)


def report_failure(exc: BaseException) -> int:
    """Print ``exc``'s one line on stderr; return the exit code it calls for."""
    error = as_component_error(exc)
    _stderr.print(Text(failure_line(error), style="red"), soft_wrap=True)
    return exit_code(error.error_code)


def fail(exc: BaseException) -> NoReturn:
    """End the command on ``exc``: its one line on stderr, and its exit code."""
    raise typer.Exit(report_failure(exc)) from None


def echo_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, for scripts (dates as ISO 8601, anything else as text)."""
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=_jsonable).decode())


def _jsonable(value: Any) -> Any:
    # pandas' Timestamp is a datetime that orjson leaves to us: ISO 8601 like the datetimes it writes.
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
