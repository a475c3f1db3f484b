"""The project's error codes and the one exception type that carries them.

Codes RST-001..003 come from the component specification; RST-004..006 (terminal storage
errors), the RST-1xx (input), RST-2xx (configuration), RST-3xx (run lifecycle) and RST-9xx
(internal) families are this project's own. Transient errors (RST-001, RST-003) are retried with
backoff; every other code is terminal and never retried, by the store or by Prefect, because a
retry cannot free a disk, fix a permission, a schema or bad input.
``results_store.error_map`` maps the exceptions of deltalake, pyarrow and the OS onto these codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR_CODES",
    "ComponentError",
    "ErrorCode",
    "Severity",
]

COMPONENT = "ResultsStore"


class Severity(enum.StrEnum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the error-code registry."""

    code: str
    title: str
    severity: Severity
    transient: bool
    resolution: str


ERROR_CODES: dict[str, ErrorCode] = {
    e.code: e
    for e in [
        ErrorCode("RST-001", "storage failed", Severity.HIGH, True,
                  "check the storage backend, free disk space and permissions; the write is retried"),
        ErrorCode("RST-002", "queue full", Severity.MEDIUM, False,
                  "raise RESULTS_STORE_QUEUE_SIZE or investigate slow storage; live snapshots "
                  "spill to the write-ahead log meanwhile"),
        ErrorCode("RST-003", "write timeout", Severity.HIGH, True,
                  "raise RESULTS_STORE_TIMEOUT or investigate slow storage; the write is retried"),
        ErrorCode("RST-004", "storage refused", Severity.HIGH, False,
                  "free disk space, fix permissions, or mount the data dir read-write, then run the same "
                  "command again: it resumes where the run stopped"),
        ErrorCode("RST-005", "data corrupted", Severity.CRITICAL, False,
                  "run `results-store checksum verify` to find the damaged files and restore them from a backup"),
        ErrorCode("RST-006", "table schema mismatch", Severity.HIGH, False,
                  "the table on disk has other columns or types than this version writes; migrate it or use a "
                  "new data dir"),
        ErrorCode("RST-101", "snapshot contract violated", Severity.MEDIUM, False,
                  "fix the producing engine: a required component key is missing or mistyped"),
        ErrorCode("RST-102", "result rule violated", Severity.MEDIUM, False,
                  "inspect the quarantine table; the offending rows were not written"),
        ErrorCode("RST-103", "timestep order violated", Severity.HIGH, False,
                  "the engine must send timesteps once each, with non-decreasing timestamps"),
        ErrorCode("RST-201", "invalid configuration", Severity.CRITICAL, False,
                  "fix the named field in the named configuration file"),
        ErrorCode("RST-301", "run conflict", Severity.HIGH, False,
                  "use a new run_id, or the same mode and configuration as the existing run"),
        ErrorCode("RST-302", "not found", Severity.MEDIUM, False,
                  "check the run_id, result type and data directory"),
        ErrorCode("RST-901", "internal invariant broken", Severity.CRITICAL, False,
                  "a bug in the store: report it with the event log; nothing is retried"),
    ]
}


class ComponentError(Exception):
    """An error with a registered code, a severity and the component it came from.

    It stays picklable (Prefect ships task exceptions across processes), so every field is
    passed to ``Exception.__init__``.
    """

    def __init__(
        self,
        error_code: str,
        message: str,
        component: str = COMPONENT,
        severity: Severity | str | None = None,
        original_exception: BaseException | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        if error_code not in ERROR_CODES:
            raise ValueError(f"unregistered error code {error_code!r}")
        entry = ERROR_CODES[error_code]
        self.error_code = error_code
        self.message = message
        self.component = component
        self.severity = Severity(severity) if severity is not None else entry.severity
        self.original_exception = original_exception
        self.details = dict(details or {})
        super().__init__(error_code, message, component, str(self.severity),
                         original_exception, self.details)

    @property
    def transient(self) -> bool:
        """Whether retrying the same operation may succeed."""
        return ERROR_CODES[self.error_code].transient

    def __str__(self) -> str:
        return f"{self.error_code} {ERROR_CODES[self.error_code].title}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            self.__class__,
            (self.error_code, self.message, self.component, str(self.severity),
             self.original_exception, self.details),
        )

    def to_event(self) -> dict[str, Any]:
        """The fields an ``error`` event in the event log carries."""
        return {
            "error_code": self.error_code,
            "error_message": self.message,
            "error_severity": str(self.severity),
            "component": self.component,
            **({"details": self.details} if self.details else {}),
        }
