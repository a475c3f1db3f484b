"""Integrity checks of a stored run, pluggable: each returns the run's integrity findings (none: intact).

Registered by default:

- ``payload_sha256``: every raw snapshot payload hashed again and compared with the sha256 stored
  beside it when it was written (the checksum that exists today);
- ``data_files``: every data file of the run's partitions exists and has the size the Delta log
  records for it (a truncated, missing or overwritten file);
- ``file_sha256``: every file of the run against the sha256 the lifecycle's checksum manifest
  recorded when it was written (``results_store.checksums``, what ``results-store checksum verify``
  checks), so a flipped byte is found even where the data still decodes.

Data that cannot be decoded at all surfaces during the audit's pass and is reported against its
table there. Other checks plug in with :func:`register_integrity_check`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from results_store import checksums, delta_tables, error_map
from results_store.audit_checks import READ_ERRORS, Finding, Issue, RunContext, null_template
from schemas.store_tables import RAW_SNAPSHOTS

__all__ = ["IntegrityCheck", "data_files", "file_checksums", "integrity_checks", "payload_checksums",
           "register_integrity_check"]

IntegrityCheck = Callable[[RunContext], list[Finding]]
_CHECKS: dict[str, IntegrityCheck] = {}


def register_integrity_check(name: str, check: IntegrityCheck) -> None:
    """Add (or replace) an integrity check under ``name``; the audit runs every registered one on each run."""
    _CHECKS[name] = check


def integrity_checks() -> dict[str, IntegrityCheck]:
    """The registered integrity checks by name, in registration order."""
    return dict(_CHECKS)


def payload_checksums(ctx: RunContext) -> list[Finding]:
    """Every raw snapshot payload of the run hashed again and compared with its stored sha256.

    Streamed in batches of 4,096 payloads (~8 MB). Payloads are hashed straight from the Arrow
    buffer (no Python string per payload) and the digests compared in bulk, as hex against the stored
    column's buffer (no Python string per digest either): a year of 1-minute payloads (~1 GB) costs
    about what hashlib alone costs, plus reading them.

    A null payload or stored digest (the columns are non-nullable) has nothing to compare: it is a
    schema finding of raw_snapshots (rule ``not_nullable``, with its timesteps), reported from here,
    the one place that reads those columns. A row whose timestep is null is the pass's to report.
    """
    path = ctx.path(RAW_SNAPSHOTS)
    if not delta_tables.table_exists(path):
        return []
    issue = Issue("integrity", RAW_SNAPSHOTS, "payload sha256 {got} != stored {stored} at {steps}")
    nulls = {column: Issue("schema", RAW_SNAPSHOTS, null_template(column)) for column in ("payload", "payload_sha256")}
    sha256 = hashlib.sha256
    try:
        for entry in delta_tables.table_files(path).runs([ctx.run_id])[0][1]:
            # Unbuffered, in small batches: the heap stays flat over a year of payloads (see audit_checks._TableStream).
            with pq.ParquetFile(entry.path, pre_buffer=False, buffer_size=1 << 20) as file:
                for batch in file.iter_batches(batch_size=4_096, columns=["timestep", "payload", "payload_sha256"],
                                               use_threads=False):
                    _check_batch(_without_nulls(batch, nulls), issue, sha256)
    except READ_ERRORS as exc:
        if error_map.is_transient(exc):
            raise error_map.map_error(exc, "read raw_snapshots", path) from exc
        return [Finding("integrity", "fail", RAW_SNAPSHOTS, None, None,
                        f"{RAW_SNAPSHOTS}: payloads cannot be read: {type(exc).__name__}: {str(exc)[:300]}")]
    return issue.findings() + [f for null in nulls.values() for f in null.findings()]


def _without_nulls(batch: pa.RecordBatch, nulls: dict[str, Issue]) -> pa.RecordBatch:
    """The batch's rows with a timestep, a payload and a digest; the nulls of the latter two go to ``nulls``."""
    if not any(batch.column(i).null_count for i in range(batch.num_columns)):
        return batch
    valid = pc.is_valid(batch.column(0))
    placed = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=np.bool_)
    steps = batch.column(0).fill_null(0).to_numpy()
    for column, null in nulls.items():
        values = batch.column(batch.schema.get_field_index(column))
        if values.null_count:
            missing = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_) & placed
            null.add(np.unique(steps[missing]))
            null.rows += int(missing.sum())
        valid = pc.and_(valid, pc.is_valid(values))
    return batch.filter(valid)


def _check_batch(batch: pa.RecordBatch, issue: Issue, sha256: Callable[[Any], Any]) -> None:
    """Hash a batch's payloads straight from the Arrow buffer and compare the digests in bulk."""
    if not batch.num_rows:
        return
    payloads = batch.column(1)
    offsets = np.frombuffer(payloads.buffers()[1], dtype=np.int64 if pa.types.is_large_string(payloads.type)
                            else np.int32)[payloads.offset:payloads.offset + len(payloads) + 1].tolist()
    data = memoryview(payloads.buffers()[2] or b"")
    digests = b"".join([sha256(data[a:b]).digest() for a, b in itertools.pairwise(offsets)])
    if _stored_text(batch.column(2)) == digests.hex().encode():
        return  # every stored digest is the lowercase hex of its payload's: compared as one buffer
    stored = batch.column(2).to_pylist()
    try:
        expected = bytes.fromhex("".join(stored))
    except ValueError:  # a stored digest that is not hex at all
        expected = b""
    if digests == expected:
        return
    got = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)
    bad = [i for i, digest in enumerate(stored) if got[i].tobytes().hex() != digest]
    issue.add(batch.column(0).to_numpy()[bad], got=np.array([got[i].tobytes().hex()[:12] for i in bad], dtype=object),
              stored=np.array([str(stored[i])[:12] for i in bad], dtype=object))


def _stored_text(column: pa.Array) -> bytes | None:
    """The stored digests' text end to end (their Arrow data buffer), when none is null; None otherwise.

    When it equals the lowercase hex of the recomputed digests, so do the stored digests joined and
    read as hex (the comparison below): the batch passes either way. Anything else (upper case, a
    wrong digest) takes that comparison, and the row-by-row one after it, as before.
    """
    if column.null_count or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    width = np.int64 if pa.types.is_large_string(column.type) else np.int32
    if not len(column):
        return b""
    offsets = np.frombuffer(column.buffers()[1], dtype=width)[column.offset:column.offset + len(column) + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    data = column.buffers()[2]
    return b"" if data is None or end <= start else data.slice(start, end - start).to_pybytes()


def data_files(ctx: RunContext) -> list[Finding]:
    """Each data file of the run's partitions exists and has the size the Delta log records for it."""
    findings = []
    for name in [RAW_SNAPSHOTS, *(t.value for t in ctx.enabled())]:
        path = ctx.path(name)
        if not delta_tables.table_exists(path):
            continue
        for entry in delta_tables.table_files(path).runs([ctx.run_id])[0][1]:
            file = Path(entry.path)
            if not file.exists():
                findings.append(Finding("integrity", "fail", name, None, None, f"{name}: data file {entry.log_path} is missing"))
            elif file.stat().st_size != entry.size_bytes:
                findings.append(Finding("integrity", "fail", name, None, None,
                                        f"{name}: data file {entry.log_path} has {file.stat().st_size:,} bytes but the "
                                        f"Delta log records {entry.size_bytes:,} (truncated or overwritten)"))
    return findings


def file_checksums(ctx: RunContext) -> list[Finding]:
    """The run's files against the sha256 the lifecycle's checksum manifest recorded when they were written.

    ``results_store.checksums.verify_table`` restricted to the run: every data file of the run (and
    the log entries of its commits) must be on disk with its recorded size and sha256. A table with
    no manifest at all (written before checksums were recorded) is noted, not failed: ``results-store
    checksum adopt`` records its files as they are.
    """
    findings = []
    unrecorded = []
    for name in [RAW_SNAPSHOTS, *(t.value for t in ctx.enabled())]:
        table_dir = ctx.path(name)
        if not delta_tables.table_exists(table_dir):
            continue
        if not (table_dir / checksums.MANIFEST_DIR).is_dir():
            unrecorded.append(name)
            continue
        report = checksums.verify_table(ctx.root, ctx.execution_mode, name, run_id=ctx.run_id)
        for problem in report.problems:
            findings.append(Finding("integrity", "fail", name, None, None,
                                    f"{name}: {problem.kind} file {problem.path} is {problem.problem} (versions "
                                    f"{problem.versions}): {problem.detail}",
                                    {"path": problem.path, "problem": problem.problem, "versions": problem.versions}))
    if unrecorded:
        findings.append(Finding("integrity", "warn", ", ".join(unrecorded), None, None,
                                f"{', '.join(unrecorded)}: no file checksums recorded (written before checksums; "
                                "`results-store checksum adopt` records them)"))
    return findings


register_integrity_check("payload_sha256", payload_checksums)
register_integrity_check("data_files", data_files)
register_integrity_check("file_sha256", file_checksums)
