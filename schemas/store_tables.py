"""The store's own tables: raw snapshots, quarantine and the runs registry.

Declared as pandera models like the result tables, so their Arrow/Delta schemas derive the same
way (:func:`schemas.tables.model_arrow_schema`).
"""

from __future__ import annotations

import numpy as np
import pandera.pandas as pdr
import pyarrow as pa
from pandera.typing import Series

from schemas.result_types import ResultType
from schemas.tables import UtcMicros, model_arrow_schema

__all__ = [
    "INBOX_LEDGER",
    "INBOX_LEDGER_SCHEMA",
    "LEDGER_STATUSES",
    "LIFECYCLE",
    "LIFECYCLE_KINDS",
    "LIFECYCLE_SCHEMA",
    "LIFECYCLE_STATUSES",
    "QUARANTINE",
    "QUARANTINE_SCHEMA",
    "RAW_SNAPSHOTS",
    "RAW_SNAPSHOTS_SCHEMA",
    "RUNS",
    "RUNS_SCHEMA",
    "RUN_STATUSES",
    "RUN_TABLES",
    "STORE_TABLES",
    "InboxLedgerEntry",
    "LifecycleRecord",
    "QuarantineRow",
    "RawSnapshotRow",
    "RunRecord",
]

# The store's own table names, declared once; every module refers to these constants.
RAW_SNAPSHOTS = "raw_snapshots"
QUARANTINE = "quarantine"
RUNS = "runs"
INBOX_LEDGER = "inbox_ledger"
STORE_TABLES: tuple[str, ...] = (RAW_SNAPSHOTS, QUARANTINE, RUNS)
# Tables that hold a partition per run: every result table, the raw payloads and the quarantine.
RUN_TABLES: tuple[str, ...] = (*(t.value for t in ResultType), RAW_SNAPSHOTS, QUARANTINE)

# "expired": retention removed the run's rows (its last record says how many rows and bytes, and when).
RUN_STATUSES = ("running", "finished", "failed", "expired")


class _Strict(pdr.DataFrameModel):
    class Config:
        strict = True
        ordered = True
        coerce = False


class RawSnapshotRow(_Strict):
    """Each accepted timestep's original payload: the source of reruns and audits."""

    run_id: Series[str]
    timestep: Series[np.int64] = pdr.Field(ge=0)
    timestamp: Series[UtcMicros]
    payload: Series[str] = pdr.Field(description="the component data exactly as received, JSON")
    payload_sha256: Series[str] = pdr.Field(description="sha256 of payload, for checksum audits")


class QuarantineRow(_Strict):
    """A rejected row (or a whole rejected snapshot when result_type is 'snapshot')."""

    run_id: Series[str]
    timestep: Series[np.int64]
    timestamp: Series[UtcMicros]
    result_type: Series[str] = pdr.Field(description="the table the row was meant for, or 'snapshot'")
    rule: Series[str] = pdr.Field(description="name of the failed check")
    column: Series[str] = pdr.Field(description="the column the check ran on, or '*' for row-level rules")
    error_code: Series[str] = pdr.Field(description="RST-101 (contract) or RST-102 (rule)")
    message: Series[str]
    payload: Series[str] = pdr.Field(description="the rejected row (or snapshot) as JSON")
    quarantined_at: Series[UtcMicros]


class RunRecord(_Strict):
    """One state of a run. The registry is append-only; a run's latest record is its state."""

    run_id: Series[str]
    mode: Series[str]
    execution_mode: Series[str]
    status: Series[str] = pdr.Field(isin=list(RUN_STATUSES))
    config_json: Series[str] = pdr.Field(description="the mode config with secrets redacted")
    config_hash: Series[str]
    code_version: Series[str]
    parent_run_id: Series[str] = pdr.Field(nullable=True, description="set on a rerun under a new run_id")
    started_at: Series[UtcMicros]
    finished_at: Series[UtcMicros] = pdr.Field(nullable=True)
    row_counts_json: Series[str] = pdr.Field(description="rows per table, JSON")
    table_versions_json: Series[str] = pdr.Field(description="Delta version per table after this state, JSON")
    note: Series[str] = pdr.Field(description="what this state records, e.g. 'rerun: result_types changed'")
    recorded_at: Series[UtcMicros]
    # Last, and nullable: registries written before it existed gain it on their next append (schema
    # merge) and read it as null; a state that does not restate the inputs leaves it null too.
    inputs_json: Series[str] = pdr.Field(
        nullable=True, description="what the run's snapshots come from (engine parameters or the snapshot "
        "file's sha256), JSON; part of the run's identity with mode and config")


LEDGER_STATUSES = ("started", "processed", "failed")


class InboxLedgerEntry(_Strict):
    """One step of one inbox file: started, processed or failed, keyed by the file's content hash."""

    sha256: Series[str] = pdr.Field(description="sha256 of the file's bytes: the same content is ingested once")
    file: Series[str] = pdr.Field(description="the file's name when it was seen")
    run_id: Series[str] = pdr.Field(nullable=True)
    mode: Series[str] = pdr.Field(nullable=True)
    status: Series[str] = pdr.Field(isin=list(LEDGER_STATUSES))
    timesteps: Series[np.int64] = pdr.Field(nullable=True, description="snapshots stored, once processed")
    detail: Series[str] = pdr.Field(nullable=True, description="why a file failed")
    recorded_at: Series[UtcMicros]


RAW_SNAPSHOTS_SCHEMA: pa.Schema = model_arrow_schema(RawSnapshotRow)
QUARANTINE_SCHEMA: pa.Schema = model_arrow_schema(QuarantineRow)
RUNS_SCHEMA: pa.Schema = model_arrow_schema(RunRecord)
INBOX_LEDGER_SCHEMA: pa.Schema = model_arrow_schema(InboxLedgerEntry)


# The audit's history: one row per (audit, run, check). Small and append-only, so it is neither
# partitioned nor keyed by app transactions; `results-store audits` and the nightly run selection read it.
AUDITS = "audits"
AUDIT_STATUSES = ("pass", "warn", "fail", "skip")
# raw_snapshots' key, declared with its model like the result tables' TABLE_KEYS (schemas.tables).
RAW_SNAPSHOTS_KEY: tuple[str, ...] = ("run_id", "timestep")


class AuditRecord(_Strict):
    """The outcome of one check of one run in one audit."""

    audit_id: Series[str] = pdr.Field(description="one audit invocation (all its runs and checks share it)")
    run_id: Series[str]
    execution_mode: Series[str]
    mode: Series[str]
    check: Series[str] = pdr.Field(description="e.g. reconciliation.pnl, completeness.gaps, integrity")
    status: Series[str] = pdr.Field(isin=list(AUDIT_STATUSES))
    findings: Series[np.int64] = pdr.Field(ge=0, description="findings of this check (warnings and failures)")
    rows_checked: Series[np.int64] = pdr.Field(ge=0, description="rows (or timesteps) the check looked at")
    first_timestep: Series[np.int64] = pdr.Field(nullable=True, description="first timestep of its findings")
    last_timestep: Series[np.int64] = pdr.Field(nullable=True, description="last timestep of its findings")
    detail: Series[str] = pdr.Field(description="the first finding, or why the check was skipped")
    audited_at: Series[UtcMicros]
    code_version: Series[str]


AUDITS_SCHEMA: pa.Schema = model_arrow_schema(AuditRecord)


# The lifecycle log: one row per backup, restore, retention pass, checksum verification and pin or
# unpin, beside the runs registry (``{root}/{execution_mode}/lifecycle``). Small and append-only, so
# neither partitioned nor keyed; retention reads the pins from it, `results-store lifecycle` shows it.
LIFECYCLE = "lifecycle"
LIFECYCLE_KINDS = ("backup", "restore", "retention", "verify", "pin", "unpin")
LIFECYCLE_STATUSES = ("ok", "failed")


class LifecycleRecord(_Strict):
    """One backup, restore, retention pass, verification, or pin of a run: when, what, how much, the result."""

    record_id: Series[str] = pdr.Field(description="one invocation (a backup's id names its manifest)")
    kind: Series[str] = pdr.Field(isin=list(LIFECYCLE_KINDS))
    execution_mode: Series[str]
    run_id: Series[str] = pdr.Field(nullable=True, description="the run pinned or unpinned; null otherwise")
    location: Series[str] = pdr.Field(nullable=True, description="the backup's URI (backup, restore)")
    status: Series[str] = pdr.Field(isin=list(LIFECYCLE_STATUSES))
    files: Series[np.int64] = pdr.Field(ge=0, description="files copied, restored, checked or removed")
    bytes: Series[np.int64] = pdr.Field(ge=0, description="their bytes")
    detail_json: Series[str] = pdr.Field(description="what was done, per table and run, and what went wrong, JSON")
    started_at: Series[UtcMicros]
    finished_at: Series[UtcMicros]
    code_version: Series[str]


LIFECYCLE_SCHEMA: pa.Schema = model_arrow_schema(LifecycleRecord)
