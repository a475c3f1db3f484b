"""What a run id may be: safe as a directory name, as a Delta partition value and in a terminal.

1 to 128 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or a digit. That excludes
path separators and ``..`` (a run id becomes ``run_id=<id>/`` under every table), NUL and control
characters (which garbled listings), spaces and quotes (partition predicates), and lengths that
the file system refuses (a 300-character id gave ``File name too long``). The empty string is not
"no run id": callers that generate ids pass ``None``.
"""

from __future__ import annotations

import re

from schemas.errors import ComponentError

__all__ = ["MAX_RUN_ID_LENGTH", "RUN_ID_PATTERN", "validate_run_id"]

MAX_RUN_ID_LENGTH = 128
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_run_id(run_id: object) -> str:
    """``run_id`` if it is a valid run id; RST-201 saying what is wrong otherwise (never echoing control characters)."""
    if not isinstance(run_id, str):
        raise ComponentError("RST-201", f"a run id must be text, got {type(run_id).__name__}")
    if run_id == "":
        raise ComponentError("RST-201", "the run id is empty; leave it out to get a generated one")
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise ComponentError("RST-201", f"run id of {len(run_id)} characters; at most {MAX_RUN_ID_LENGTH} are allowed")
    if RUN_ID_PATTERN.fullmatch(run_id) is None:
        bad = sorted({c for c in run_id if not (c.isascii() and (c.isalnum() or c in "._-"))})
        shown = ", ".join(repr(c) for c in bad) if bad else "its first character"
        raise ComponentError("RST-201", f"run id {run_id.encode('unicode_escape').decode()[:40]!r} is not allowed "
                             f"(offending: {shown}); use 1-{MAX_RUN_ID_LENGTH} characters of A-Z a-z 0-9 . _ -, "
                             "starting with a letter or digit")
    return run_id
