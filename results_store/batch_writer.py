"""Turns a chunk of queued snapshots into validated Arrow tables, and commits them exactly once.

``prepare`` is CPU work (flatten, validate, serialise the raw payload), GIL-bound, so the store
runs it where it competes least with the engine; ``commit`` writes every table of the run in
parallel (pyarrow and delta-rs work outside the GIL) with a timeout per table. Each table's commit
carries the batch's last timestep as its application-transaction version, so a retried or
replayed batch is a no-op for tables that already have it.

Failures are classified by ``results_store.error_map``: only transient ones (RST-001, RST-003)
are retried, with jittered exponential backoff (``stamina``); a terminal one (a full disk, a
read-only mount, corrupt data, a schema mismatch, a bug) is raised at its first occurrence.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import stamina

from results_store import delta_tables
from results_store.error_map import is_transient, map_error, storage_errors
from results_store.flatten import SnapshotItem, encode_snapshots, flatten_batch
from results_store.simulator.jsonl import BadLine
from results_store.validate import quarantine_rejected, validate_table
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from schemas.result_types import ResultType
from schemas.settings import StoreSettings
from schemas.store_tables import QUARANTINE, QUARANTINE_SCHEMA, RAW_SNAPSHOTS, RAW_SNAPSHOTS_SCHEMA

__all__ = ["BACKTEST_RETRY", "LIVE_RETRY", "BatchTally", "BatchWriter", "CommitOutcome", "PreparedBatch", "Queued",
           "RetryPolicy"]

# A queued snapshot, as a plain tuple because it is built on the engine's hot path:
# (timestep, timestamp in µs since epoch UTC, timestamp as given, results dict, monotonic enqueue time)
Queued = tuple[int, int, Any, dict[str, Any], float]
SCHEMA_VERSION = "1"
# A finished backtest's files are merged at finalize only when a table has more than this many of
# the run (a batch size far below the default). Otherwise they stay as the batches wrote them: one
# file per table per batch, in timestep order, already what readers prune best by file and row-group
# statistics; rewriting them cost a second write of the run's bytes (~5 s and +130 MB for a quarter).
FINALIZE_MAX_FILES = 16


@dataclass(frozen=True)
class RetryPolicy:
    """How long a transient failure is retried: at most ``attempts`` tries (None: no limit) within
    ``timeout_s`` (None: no limit), waiting ``wait_initial_s`` doubled each time up to ``wait_max_s``,
    plus up to ``wait_jitter_s`` of random jitter so that writers that failed together do not retry together."""

    attempts: int | None
    timeout_s: float | None
    wait_initial_s: float
    wait_max_s: float
    wait_jitter_s: float = 1.0

    def attempts_on_transient(self, retry_if: Callable[[], bool] | None = None) -> Iterator[stamina.Attempt]:
        """stamina's attempts, retrying only what ``error_map`` calls transient (its test mode drops the waits)
        and, with ``retry_if``, only while it says a new attempt can still succeed."""
        def on(exc: Exception) -> bool:
            return is_transient(exc) and (retry_if is None or retry_if())

        return iter(stamina.retry_context(on=on, attempts=self.attempts, timeout=self.timeout_s,
                                          wait_initial=self.wait_initial_s, wait_max=self.wait_max_s,
                                          wait_jitter=self.wait_jitter_s))


# Backtest: a few tries, then the run fails and Prefect's one task retry resumes it.
BACKTEST_RETRY = RetryPolicy(attempts=4, timeout_s=None, wait_initial_s=0.5, wait_max_s=5.0)
# Live: the batch is safe in the write-ahead log, so storage gets two minutes to come back; not
# for ever, because a collection must end (Failed) for the next one to start and try again.
LIVE_RETRY = RetryPolicy(attempts=None, timeout_s=120.0, wait_initial_s=1.0, wait_max_s=15.0)


def _utf8_array(payloads: Sequence[bytes]) -> pa.Array | pa.ChunkedArray:
    """orjson's UTF-8 bytes as one Arrow string array, without decoding each to a Python str."""
    offsets = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads)), out=offsets[1:])
    if offsets[-1] >= 2**31:
        # Over 2 GiB in one chunk cannot have 32-bit offsets; pa.array splits it into chunks.
        return pa.array([p.decode() for p in payloads], pa.string())
    # orjson always emits valid UTF-8, so the bytes need no decoding or re-validation.
    data = pa.py_buffer(b"".join(payloads))
    return pa.StringArray.from_buffers(len(payloads), pa.py_buffer(offsets.astype(np.int32)), data)


@dataclass
class PreparedBatch:
    """One chunk of timesteps, flattened and validated, ready to commit."""

    first_timestep: int
    last_timestep: int
    timesteps: int
    tables: dict[str, pa.Table]
    quarantined: int
    errors: list[ComponentError] = field(default_factory=list)
    prepare_s: float = 0.0

    @staticmethod
    def merge(batches: Sequence[PreparedBatch]) -> PreparedBatch:
        names = batches[0].tables.keys()
        return PreparedBatch(
            first_timestep=batches[0].first_timestep,
            last_timestep=batches[-1].last_timestep,
            timesteps=sum(b.timesteps for b in batches),
            tables={n: pa.concat_tables([b.tables[n] for b in batches]) for n in names},
            quarantined=sum(b.quarantined for b in batches),
            errors=[e for b in batches for e in b.errors],
            prepare_s=sum(b.prepare_s for b in batches),
        )


@dataclass
class BatchTally:
    """What a batch streamed chunk by chunk amounts to, once its chunks' tables are written and gone."""

    first_timestep: int
    last_timestep: int
    timesteps: int = 0
    quarantined: int = 0
    errors: list[ComponentError] = field(default_factory=list)
    prepare_s: float = 0.0

    @staticmethod
    def of(chunk: PreparedBatch) -> BatchTally:
        return BatchTally(chunk.first_timestep, chunk.last_timestep).add(chunk)

    def add(self, chunk: PreparedBatch) -> BatchTally:
        self.last_timestep = chunk.last_timestep
        self.timesteps += chunk.timesteps
        self.quarantined += chunk.quarantined
        self.errors.extend(chunk.errors)
        self.prepare_s += chunk.prepare_s
        return self


@dataclass
class CommitOutcome:
    versions: dict[str, int]
    commits: int
    rows: dict[str, int]
    write_s: float
    retries: int


class BatchWriter:
    """Prepare and commit batches for one run; holds the per-table committed watermarks."""

    def __init__(
        self,
        *,
        mode: ModeConfig,
        settings: StoreSettings,
        run_id: str,
        table_paths: dict[str, Path],
        on_failed_attempt: Callable[[ComponentError, int, str], None] | None = None,
        commit_metadata: dict[str, Any] | None = None,
    ) -> None:
        """``on_failed_attempt(error, attempt, table)`` hears of every transient failure of a table
        write (``attempt`` counts from 1; stamina retries it unless its attempts or time ran out)."""
        self.mode = mode
        self.settings = settings
        self.run_id = run_id
        self.table_paths = table_paths
        self.on_failed_attempt = on_failed_attempt
        self.retry = LIVE_RETRY if settings.execution_mode == "live" else BACKTEST_RETRY
        # Live leaves the tables' checkpoints to the live policy, which writes them in the background
        # (compaction.py): every table reaches a checkpoint boundary at the same commit, and delta-rs
        # writing ten checkpoints inside it made every tenth commit the slowest (bench/bench_live.py).
        self._checkpoints = settings.execution_mode != "live"
        self.commit_metadata = dict(commit_metadata or {})
        self.result_types = [ResultType(t) for t in mode.results_store.result_types]
        self.committed: dict[str, int | None] = {
            name: delta_tables.committed_txn_version(path, run_id) for name, path in table_paths.items()
        }
        # Unparseable lines of a snapshot file, by the timestep of the snapshot they travel with
        # (see ``add_bad_lines``); ``prepare`` takes those of its chunk.
        self.bad_lines: dict[int, list[tuple[int, BadLine]]] = {}
        # Open table handles, one per table; each is only used by that table's (sequential) commits.
        self._handles: dict[str, delta_tables.TableHandle | None] = {}
        # The batch being streamed: its open data file per table, the row schema of every table, and
        # how many chunks went in.
        self._open: dict[str, delta_tables.RunFile] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._streamed = 0
        self._committers: dict[str, concurrent.futures.ThreadPoolExecutor] = {}  # one commit thread per table
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(4, len(table_paths)), thread_name_prefix="results-store-write"
        )

    # -- resume -------------------------------------------------------------------------------
    def watermark(self) -> int:
        """Last timestep every table has committed (-1 if none): replay starts after it."""
        values = [v if v is not None else -1 for v in self.committed.values()]
        return min(values) if values else -1

    def add_bad_lines(self, step: int, timestamp_us: int, lines: Sequence[BadLine]) -> None:
        """Quarantine ``lines`` (unparseable lines of a snapshot file) with the batch holding ``step``.

        They take that snapshot's timestep and timestamp (the nearest known: the line has none), so
        they commit under its app-transaction version with the snapshot: a resume that skips the
        snapshot as committed skips them too, and a batch retried commits them once.
        """
        self.bad_lines.setdefault(step, []).extend((timestamp_us, line) for line in lines)

    def _bad_line_rows(self, entries: Sequence[Queued]) -> pa.Table | None:
        taken = [(e[0], ts, line) for e in entries for ts, line in self.bad_lines.pop(e[0], ())]
        if not taken:
            return None
        n = len(taken)
        return pa.table({
            "run_id": pa.repeat(pa.scalar(self.run_id, pa.string()), n),
            "timestep": pa.array([step for step, _, _ in taken], pa.int64()),
            "timestamp": pa.array([ts for _, ts, _ in taken], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "result_type": pa.repeat(pa.scalar("snapshot", pa.string()), n),
            "rule": pa.repeat(pa.scalar("unparseable_line", pa.string()), n),
            "column": pa.array([f"line {line.line}" for _, _, line in taken], pa.string()),
            "error_code": pa.array([line.error.error_code for _, _, line in taken], pa.string()),
            "message": pa.array([line.error.message for _, _, line in taken], pa.string()),
            "payload": pa.array([line.text for _, _, line in taken], pa.string()),
            "quarantined_at": pa.repeat(pa.scalar(int(time.time() * 1_000_000), pa.int64()), n).cast(
                pa.timestamp("us", tz="UTC")),
        }).cast(QUARANTINE_SCHEMA)

    # -- prepare (worker thread) --------------------------------------------------------------
    def prepare(self, entries: Sequence[Queued], *, raw_snapshots: bool = True) -> PreparedBatch:
        """Flatten, validate and serialise one chunk; invalid rows become quarantine rows.

        ``raw_snapshots=False``: the chunk's ``raw_snapshots`` table is left empty (its payloads are not
        built nor hashed), for a caller that does not write it (an in-place rerun re-derives from it).
        """
        started = time.perf_counter()
        items = [SnapshotItem(e[0], e[2], e[3]) for e in entries]
        # The raw payloads first: a snapshot with no lossless JSON form is quarantined whole (RST-101)
        # before it is flattened, so no result table holds a timestep that raw_snapshots lacks.
        payloads, unencodable = encode_snapshots(items)
        # The raw table at once, and the payloads' bytes dropped before flattening: they are a chunk's
        # largest part, and holding them through flatten and validation raised the chunk's peak.
        encoded = [(e, p) for e, p in zip(entries, payloads, strict=True) if p is not None]
        raw_table = (self._raw_table([e for e, _ in encoded], [p for _, p in encoded]) if raw_snapshots
                     else RAW_SNAPSHOTS_SCHEMA.empty_table())
        to_flatten = [i for i, p in zip(items, payloads, strict=True) if p is not None] if unencodable else items
        del payloads, encoded
        flat = flatten_batch(to_flatten, self.mode, self.run_id)
        rejected = sorted([*unencodable, *flat.rejected], key=lambda r: r.timestep) if unencodable else flat.rejected
        tables: dict[str, pa.Table] = {}
        quarantine = [quarantine_rejected(rejected, self.run_id)] if rejected else []
        errors = [r.error for r in rejected]
        if (lines := self._bad_line_rows(entries)) is not None:
            quarantine.append(lines)
        if rejected and self.settings.strict:
            raise rejected[0].error
        for rtype, table in flat.tables.items():
            outcome = validate_table(rtype, table, self.mode, strict=self.settings.strict)
            tables[rtype.value] = outcome.valid
            if outcome.quarantine.num_rows:
                quarantine.append(outcome.quarantine)
            errors.extend(outcome.errors)
        if flat.rejected:  # snapshots that broke the contract: quarantined whole, so not in raw_snapshots either
            dropped = pa.array([r.timestep for r in flat.rejected], pa.int64())
            raw_table = raw_table.filter(pc.invert(pc.is_in(raw_table["timestep"], value_set=dropped)))
        tables[RAW_SNAPSHOTS] = raw_table
        tables[QUARANTINE] = (pa.concat_tables(quarantine).cast(QUARANTINE_SCHEMA) if quarantine
                              else QUARANTINE_SCHEMA.empty_table())
        return PreparedBatch(
            first_timestep=entries[0][0],
            last_timestep=entries[-1][0],
            timesteps=len(entries),
            tables=tables,
            quarantined=tables[QUARANTINE].num_rows,
            errors=errors,
            prepare_s=time.perf_counter() - started,
        )

    def _raw_table(self, entries: Sequence[Queued], payloads: Sequence[bytes]) -> pa.Table:
        """``raw_snapshots`` rows of the accepted ``entries``, with their payloads as encoded by
        ``flatten.encode_snapshots`` (the JSON policy's bytes) and each payload's sha256."""
        sha = hashlib.sha256
        return pa.table(
            {
                "run_id": pa.repeat(pa.scalar(self.run_id, pa.string()), len(entries)),
                "timestep": pa.array([e[0] for e in entries], pa.int64()),
                "timestamp": pa.array([e[1] for e in entries], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")),
                "payload": _utf8_array(payloads),
                "payload_sha256": pa.array([sha(p).hexdigest() for p in payloads], pa.string()),
            },
            schema=RAW_SNAPSHOTS_SCHEMA,
        )

    # -- write and commit (writer threads) --------------------------------------------------------
    # A batch is streamed: each prepared chunk goes into the batch's open data file of every table
    # (``stream``) and is dropped; when the batch is due, ``finish`` closes the files and commits
    # them, one commit per table carrying the batch's last timestep as its app-transaction version.
    # Memory stays at the chunk being written, whatever the batch size, and a batch of many chunks
    # is one file per table, so a finished run needs little compaction.
    def stream(self, chunk: PreparedBatch) -> None:
        """Write ``chunk``'s rows (those past each table's committed timestep) into the batch's files,
        every table side by side. A failure abandons the batch's files and is raised (mapped); a
        transient one is retried first while the table's file holds no earlier chunk (the rows of
        the earlier chunks are gone from memory, so only a resume can write them again)."""
        futures = {name: self._pool.submit(self._stream_table, name, table, chunk)
                   for name, table in chunk.tables.items()}
        errors: list[ComponentError] = []
        for name, future in futures.items():
            try:
                future.result()
            except Exception as exc:
                errors.append(map_error(exc, f"write {name}", self.table_paths[name]))
        if errors:
            self.abandon()
            raise min(errors, key=lambda error: error.transient)
        self._streamed += 1

    def _stream_table(self, name: str, table: pa.Table, chunk: PreparedBatch) -> None:
        self._schemas.setdefault(name, table.schema)
        committed = self.committed.get(name)
        if committed is not None and committed >= chunk.last_timestep:
            return
        if committed is not None and table.num_rows:
            table = table.filter(pc.greater(table["timestep"], committed))
        if not table.num_rows:
            return
        retry_if = lambda: name not in self._open  # noqa: E731 - read when a write has failed
        for attempt in self.retry.attempts_on_transient(retry_if):
            with attempt:
                file = self._open.get(name)
                fresh = file is None
                if file is None:
                    file = delta_tables.open_run_file(self.table_paths[name], self.run_id, table.schema,
                                                      self.settings.compression)
                try:
                    with storage_errors(f"write {name}", self.table_paths[name]):
                        file.write(table)
                except ComponentError as exc:
                    # A file a write failed in cannot be trusted: it goes, and with it the batch's earlier rows.
                    file.abandon()
                    self._open.pop(name, None)
                    if fresh and exc.transient and self.on_failed_attempt is not None:
                        self.on_failed_attempt(exc, attempt.num, name)
                    raise
                self._open[name] = file
                return

    def finish(self, first_timestep: int, last_timestep: int) -> CommitOutcome:
        """Close the batch's files and commit every table; raise a ComponentError if a table could not be
        committed: a terminal one at once, a transient one once its retries are exhausted. The tables that
        did commit keep their commit (the next attempt skips them by their app-transaction version)."""
        started = time.perf_counter()
        files, self._open = self._open, {}
        closing = {name: self._pool.submit(delta_tables.close_run_file, file) for name, file in files.items()}
        adds: dict[str, list[delta_tables.FileAction]] = {}
        errors: list[ComponentError] = []
        for name, closed in closing.items():
            try:
                adds[name] = [closed.result()]
            except Exception as exc:
                errors.append(map_error(exc, f"write {name}", self.table_paths[name]))
        if errors:
            for name, added in adds.items():  # closed but never to be committed
                delta_tables.discard_run_files(self.table_paths[name], added)
            raise min(errors, key=lambda error: error.transient)
        commits_of = {
            name: self._pool.submit(self._commit_table, name, adds.get(name, []), first_timestep, last_timestep)
            for name in self._schemas
        }
        versions: dict[str, int] = {}
        rows: dict[str, int] = {}
        commits = retries = 0
        for name, committing in commits_of.items():
            try:
                version, attempts = committing.result()
            except Exception as exc:
                errors.append(map_error(exc, f"commit {name}", self.table_paths[name]))
                continue
            retries += attempts - 1
            rows[name] = files[name].rows if name in files and version is not None else 0
            if version is not None:
                versions[name] = version
                commits += 1
            self.committed[name] = last_timestep
        self._streamed = 0
        if errors:
            # A terminal error first: retrying the batch cannot succeed while it stands.
            raise min(errors, key=lambda error: error.transient)
        return CommitOutcome(versions, commits, rows, time.perf_counter() - started, retries)

    def commit(self, batch: PreparedBatch) -> CommitOutcome:
        """Write and commit ``batch`` whole (a live batch; one chunk). A transient failure of a file
        write is retried by ``stream`` (the batch is in memory), of a commit by ``finish``."""
        self.stream(batch)
        return self.finish(batch.first_timestep, batch.last_timestep)

    def abandon(self) -> None:
        """Delete the open batch's files (a failed batch: nothing will commit them)."""
        files, self._open = self._open, {}
        for file in files.values():
            file.abandon()
        self._streamed = 0

    def _commit_table(self, name: str, adds: list[delta_tables.FileAction], first_timestep: int,
                      last_timestep: int) -> tuple[int | None, int]:
        committed = self.committed.get(name)
        if committed is not None and committed >= last_timestep:
            return None, 1
        metadata = {
            **self.commit_metadata,
            "run_id": self.run_id,
            "table": name,
            "schema_version": SCHEMA_VERSION,
            "first_timestep": str(first_timestep),
            "last_timestep": str(last_timestep),
        }
        # The files are on disk: a failed commit is retried with them as they are.
        for attempt in self.retry.attempts_on_transient():
            with attempt:
                try:
                    version = self._commit_with_timeout(name, adds, last_timestep, metadata)
                except ComponentError as exc:
                    if exc.transient and self.on_failed_attempt is not None:
                        self.on_failed_attempt(exc, attempt.num, name)
                    raise
                return version, attempt.num
        raise AssertionError("unreachable: stamina re-raises the last failure")

    def _commit_with_timeout(self, name: str, adds: list[delta_tables.FileAction], last_timestep: int,
                             metadata: dict[str, Any]) -> int | None:
        # A timed-out commit cannot be cancelled; wait for it to settle before any retry, so two
        # attempts never run at once (the app-transaction check then makes the retry a no-op).
        # One long-lived thread per table: a live run commits every table per snapshot, and a thread
        # started and joined per commit cost ten of each per snapshot.
        executor = self._committers.get(name)
        if executor is None:
            executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"results-store-commit-{name}")
            self._committers[name] = executor
        future = executor.submit(self._commit_with_handle, name, adds, last_timestep, metadata)
        try:
            return future.result(timeout=self.settings.timeout)
        except concurrent.futures.TimeoutError:
            with contextlib.suppress(Exception):  # its outcome is read back by the retry's version check
                future.result()
            raise ComponentError(
                "RST-003", f"committing {name} took longer than {self.settings.timeout:g} s",
                details={"table": name, "files": len(adds)},
            ) from None
        except Exception as exc:
            # A failed attempt may leave the cached handle behind the log: the next one reopens it.
            self._handles.pop(name, None)
            raise map_error(exc, f"commit {name}", self.table_paths[name]) from exc

    def handle(self, name: str) -> delta_tables.TableHandle | None:
        """The open handle of table ``name`` (None before its first commit, or after a failed one).
        Between commits only: a handle is not for two threads at once."""
        return self._handles.get(name)

    def _commit_with_handle(self, name: str, adds: list[delta_tables.FileAction], last_timestep: int,
                            metadata: dict[str, Any]) -> int | None:
        """``delta_tables.commit_run_files``, reusing one open table per result table: opening a
        Delta table replays its log, which three opens per table per batch made a visible share of a commit."""
        path = self.table_paths[name]
        handle = self._handles.get(name)
        if handle is None:
            handle = delta_tables.open_handle(path)  # still None before the table's first commit
        version = delta_tables.commit_run_files(path, adds, run_id=self.run_id, last_timestep=last_timestep,
                                                schema=self._schemas[name], metadata=metadata, table=handle,
                                                checkpoint=self._checkpoints)
        self._handles[name] = handle if handle is not None else delta_tables.open_handle(path)
        return version

    # -- finalize -----------------------------------------------------------------------------
    def compact(self) -> dict[str, int]:
        """Merge this run's files of every table that has more than FINALIZE_MAX_FILES of them (a streamed
        batch is one file per table); returns data files per table after."""
        def compact_one(path: Path) -> int:
            # Compaction is idempotent (a retry finds the files merged, or merges them), so a
            # transient failure is retried like a commit; a terminal one fails the run's finalize.
            for attempt in self.retry.attempts_on_transient():
                with attempt, storage_errors("compact", path):
                    delta_tables.compact_run(path, self.run_id, compression=self.settings.compression,
                                             min_files=FINALIZE_MAX_FILES + 1)
                    return len(delta_tables.data_files(path, run_id=self.run_id))
            raise AssertionError("unreachable: stamina re-raises the last failure")

        # Tables are independent and delta-rs works outside the GIL: compact them side by side,
        # the raw payloads first because they take longest (1.4 s of 3.6 s for a 1-year run).
        order = sorted(self.table_paths, key=lambda name: name != RAW_SNAPSHOTS)
        futures = {name: self._pool.submit(compact_one, self.table_paths[name]) for name in order}
        return {name: futures[name].result() for name in self.table_paths}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for committer in self._committers.values():
            committer.shutdown(wait=True)
        self._committers.clear()
        self.abandon()


def utc_now() -> datetime:
    return datetime.now(UTC)
