"""The one error mapper: deltalake, pyarrow and OS exceptions onto the registry's codes.

Two families (``schemas.errors``): **transient** failures (a commit conflict, a timeout, EAGAIN,
a reset connection) become RST-001 and are retried with jittered backoff; **terminal** ones are
never retried: a full disk, a permission or a read-only mount (RST-004), corrupt data (RST-005),
a schema that does not match (RST-006), and anything that is not an I/O failure at all, which is
a broken invariant of ours (RST-901).

delta-rs and pyarrow often raise without ``errno`` set and name the OS error in the message
("... (os error 28)", "Os { code: 30 ... }", "[errno 28] ..."), so the message is read too. deltalake's own exception
classes are registered by ``results_store.delta_tables``, the only module that imports deltalake.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from schemas.errors import ComponentError

__all__ = [
    "TERMINAL_ERRNOS",
    "TRANSIENT_ERRNOS",
    "is_transient",
    "map_error",
    "register",
    "storage_errors",
]

TERMINAL_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG,
    errno.ENOTDIR, errno.EISDIR, errno.EFBIG, errno.EMFILE, errno.ENFILE,
})
TRANSIENT_ERRNOS = frozenset({
    errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
    errno.ECONNABORTED, errno.EPIPE, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESTALE,
})
# "(os error 28)" (Rust's Display), "Os { code: 30, kind: ... }" (Rust's Debug), "[errno 28]" (Arrow).
_ERRNO_IN_MESSAGE = re.compile(r"(?:os error|errno|Os \{ code:)\s*(\d+)", re.IGNORECASE)
_CORRUPTION = re.compile(
    r"corrupt|magic bytes|thrift|checksum|crc|unexpected end of (?:stream|file)|invalid page|"
    r"couldn't deserialize|decompress|truncated|not a parquet file|invalid json in log", re.IGNORECASE)
_SCHEMA = re.compile(r"schema|column .* not found|type mismatch|cannot cast", re.IGNORECASE)

# Exception classes of libraries mapped by class, registered by the module that imports them.
_BY_CLASS: dict[type[BaseException], str] = {}


def register(exc_type: type[BaseException], code: str) -> None:
    """Map every instance of ``exc_type`` onto ``code`` (e.g. deltalake's CommitFailedError -> RST-001)."""
    _BY_CLASS[exc_type] = code


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    match = _ERRNO_IN_MESSAGE.search(str(exc))
    return int(match.group(1)) if match else None


def _code_for(exc: BaseException) -> str:
    for exc_type, code in _BY_CLASS.items():
        if isinstance(exc, exc_type):
            return code
    number = _errno_of(exc)
    if number in TERMINAL_ERRNOS:
        return "RST-004"
    if number in TRANSIENT_ERRNOS or isinstance(exc, TimeoutError):
        return "RST-001"
    text = str(exc)
    if _CORRUPTION.search(text):
        return "RST-005"
    if isinstance(exc, pa.ArrowTypeError) or (isinstance(exc, pa.ArrowInvalid) and _SCHEMA.search(text)):
        return "RST-006"
    if isinstance(exc, OSError | pa.ArrowException) or type(exc).__module__.partition(".")[0] in {"deltalake", "_internal"}:
        # An I/O failure with no recognisable cause: worth a bounded retry.
        return "RST-001"
    return "RST-901"


def map_error(exc: BaseException, action: str, path: Path | str | None = None) -> ComponentError:
    """``exc`` as a ComponentError with the registry's code, naming what was done and where."""
    if isinstance(exc, ComponentError):
        return exc
    code = _code_for(exc)
    where = f" for {path}" if path is not None else ""
    number = _errno_of(exc)
    details: dict[str, object] = {"action": action, **({"path": str(path)} if path is not None else {})}
    if number is not None:
        details["errno"] = errno.errorcode.get(number, str(number))
    return ComponentError(code, f"{action} failed{where}: {type(exc).__name__}: {exc}", original_exception=exc,
                          details=details)


def is_transient(exc: BaseException) -> bool:
    """Whether a retry of the same operation may succeed (the stamina ``on=`` predicate)."""
    return map_error(exc, "check").transient


@contextlib.contextmanager
def storage_errors(action: str, path: Path | str | None = None) -> Iterator[None]:
    """Raise any failure inside the block as the mapped ComponentError, keeping the original as its cause."""
    try:
        yield
    except ComponentError:
        raise
    except Exception as exc:
        raise map_error(exc, action, path) from exc
