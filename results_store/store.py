"""``ResultsStore``: the API engines call, the async FIFO queue, and its single consumer.

The engine's path (``store_timestep_results``) only checks ordering and appends to the queue: no
conversion, no I/O (live mode adds one fsynced WAL append, because an acknowledged live snapshot
must survive a crash; the WAL and its spill backlog are ``results_store.live``). One worker drains
the queue in FIFO order into chunks; chunks are flattened and validated (inline in backtest, in a
thread in live) and committed as batches from a writer thread while the next chunks are prepared,
one Delta commit per table per batch, each carrying the batch's last timestep as its
application-transaction version. A restart with the same ``run_id`` reads those versions and
skips what is already committed.

Failing loudly: the worker's first failure (mapped onto its RST code by ``results_store.error_map``)
is the run's failure. From then on ``store_timestep_results`` and ``stop()`` raise it, an engine
waiting for room in a full queue is woken with it, and cleanup releases the run's lock whatever else
fails, so a retry in the same process (Prefect's) can start at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa

from results_store import delta_tables
from results_store.allocators import tune_allocators
from results_store.batch_writer import BatchTally, BatchWriter, CommitOutcome, PreparedBatch, Queued
from results_store.compaction import LiveCompaction, last_timestamp_us
from results_store.error_map import map_error, storage_errors
from results_store.events import EventLog
from results_store.flatten import json_safe_snapshot, to_micros
from results_store.health import HealthTracker
from results_store.live import LiveDurability, wal_directory
from results_store.run_lock import RunLock
from results_store.runs import append_run_record, input_differences, latest_run
from results_store.simulator.jsonl import BadLine
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.identifiers import validate_run_id
from schemas.modes import ModeConfig, config_hash
from schemas.settings import StoreSettings, load_settings
from schemas.snapshot import (
    NO_TIME_US,
    TIMESTAMP_MAX_US,
    TIMESTAMP_MIN_US,
    TIMESTEP_MAX,
    printable,
    timestep_problem,
)
from schemas.store_tables import QUARANTINE, RAW_SNAPSHOTS

__all__ = ["ResultsStore"]

_T = TypeVar("_T")

_STOP: Any = object()
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Codes logged as "storage_failed" (the spec's event for a failed write) rather than a plain "error".
_STORAGE_CODES = frozenset({"RST-001", "RST-003", "RST-004", "RST-005", "RST-006"})
# Snapshots flattened, validated and written together. A batch is streamed chunk by chunk, so the
# chunk sets the store's memory: preparing one peaks at ~13 KB per timestep (JSON payloads, the
# flattened columns, their Arrow tables) while the one before it is written. 5,000 timesteps kept a
# quarter's peak RSS at 377 MB against 450 MB at 10,000, for ~7% more CPU (bench/bench_store.py).
CHUNK_TIMESTEPS = 5_000


def _one_line(error: ComponentError) -> ComponentError:
    """``error`` with its message on one line. A run's failure is shown as one line (the Prefect
    state message, the CLI, the registry's note), and delta-rs chains an error's causes over
    several lines with terminal colours ("... error\\n  ↳ No space left on device (os error 28)")."""
    message = " ".join(_ANSI_ESCAPE.sub("", error.message).split())
    if message == error.message:
        return error
    flat = ComponentError(error.error_code, message, error.component, error.severity, error.original_exception,
                          error.details)
    flat.__cause__ = error  # the traceback keeps the original, lines and all
    return flat


class ResultsStore:
    """Stores a run's timestep snapshots as validated, versioned Delta tables, exactly once.

    Use as ``async with ResultsStore(config, "backtest", data_dir=..., run_id=...) as store:``
    and ``await store.store_timestep_results(timestamp, results)`` once per timestep.
    """

    def __init__(
        self,
        config: ModeConfig,
        execution_mode: str,
        *,
        data_dir: Path,
        run_id: str,
        event_logger: Any = None,
        health_manager: Any = None,
        settings: StoreSettings | None = None,
        parent_run_id: str | None = None,
        commit_metadata: dict[str, Any] | None = None,
        allow_config_change: bool = False,
        run_inputs: dict[str, Any] | None = None,
    ) -> None:
        if execution_mode not in ("backtest", "live"):
            raise ComponentError("RST-201", f"execution_mode must be 'backtest' or 'live', got {execution_mode!r}")
        # A run id becomes a directory and a partition value: refused before anything touches the disk.
        validate_run_id(run_id)
        self.config = config
        self.execution_mode = execution_mode
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        base = settings or load_settings(config, data_dir=data_dir)
        self.settings = base.model_copy(update={"execution_mode": execution_mode, "data_dir": Path(data_dir)})
        self.root = self.settings.root
        self._live = execution_mode == "live"
        with storage_errors("open the event log", self.settings.data_dir):
            # BASIS_LOG_LEVEL (or the mode file's log_level) sets what is written; every event names the run.
            self.event_log = event_logger or EventLog(self.settings.data_dir, buffered=not self._live,
                                                      level=self.settings.log_level, correlation_id=run_id)
        self._owns_event_log = event_logger is None
        self.health = HealthTracker(execution_mode)
        self.health_manager = health_manager
        self._commit_metadata = dict(commit_metadata or {})
        self._allow_config_change = allow_config_change
        # What the snapshots come from (engine parameters, a file's sha256): part of the run's identity.
        self._run_inputs = dict(run_inputs) if run_inputs is not None else None
        names = [t.value for t in config.results_store.result_types] + [RAW_SNAPSHOTS, QUARANTINE]
        self.table_paths = {n: delta_tables.table_path(self.root, execution_mode, n) for n in names}
        self.results_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.settings.queue_size)
        self._enqueued_at: collections.deque[float] = collections.deque()
        self._batch_writer: BatchWriter | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._failure: ComponentError | None = None
        self._running = False
        self._started_at = datetime.now(UTC)
        self._t0 = 0.0
        self._last_step = -1
        self._last_ts = -(2**62)
        self._watermark = -1
        self._received = 0
        self._skipped = 0
        self._written_steps = 0
        self._rows: collections.Counter[str] = collections.Counter()
        self._commits: collections.Counter[str] = collections.Counter()
        self._versions: dict[str, int] = {}
        self._quarantined = 0
        # Live only, from start(): the WAL and the backlog spilled to it when the queue is full.
        self._durability: LiveDurability | None = None
        # Live only: compacts the run's files by policy (a file-count threshold, a UTC day's roll-over),
        # never after every collection (results_store/compaction.py).
        self._live_compaction = LiveCompaction(self.table_paths, run_id, self.settings.compression) if self._live else None
        self.summary: RunSummary | None = None
        self._lock = RunLock(self.root / execution_mode / "_locks" / f"{run_id}.lock")
        if health_manager is not None and hasattr(health_manager, "register_component"):
            health_manager.register_component(component_name="ResultsStore", checker=self.check_component_health)

    # ----------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> ResultsStore:
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.stop()
        else:
            await self._abort(exc)

    async def start(self) -> dict[str, Any]:
        """Open the run: read committed versions, register it, replay the WAL (live), start the worker."""
        if self._running:
            return self.get_storage_status()
        self._t0 = time.perf_counter()
        allocators = tune_allocators() if self.settings.tune_allocators else {}
        await asyncio.to_thread(self._acquire_lock)
        try:
            self._batch_writer = await asyncio.to_thread(self._open_writer)
            if self._live_compaction is not None:
                self._live_compaction.handles = self._batch_writer.handle
            self._watermark = self._batch_writer.watermark()
            await asyncio.to_thread(self._retrying, f"register run {self.run_id}", self._register_start)
            if self._live:
                await self._open_durability()
        except BaseException as exc:
            # Nothing of this attempt may keep the run's lock: a retry in this process must get it.
            await asyncio.to_thread(self._release)
            if not isinstance(exc, Exception):
                raise
            error = _one_line(map_error(exc, f"start run {self.run_id}", self.root))
            if error is exc:
                raise
            raise error from exc
        self.event_log.log_event("component_initialization", {
            "execution_mode": self.execution_mode,
            "run_id": self.run_id,
            "mode": self.config.mode,
            "queue_size": self.settings.queue_size,
            "batch_size": self.settings.commit_batch_size,
            "config_hash": config_hash(self.config),
            "resume_after_timestep": self._watermark,
            "allocators": allocators,
        })
        self._running = True
        self._worker_task = asyncio.create_task(self._worker(), name=f"results-store-worker-{self.run_id}")
        return self.get_storage_status()

    def _acquire_lock(self) -> None:
        with storage_errors("lock run", self._lock.path):
            self._lock.acquire()

    async def _open_durability(self) -> None:
        """Live: open the WAL and make what it holds past the committed watermark the backlog."""
        self._durability = LiveDurability(
            wal_directory(self.root, self.run_id), queue=self.results_queue, health=self.health,
            log_error=self._log_error,
        )
        last = await self._durability.recover(self._watermark)
        # Replayed snapshots were acknowledged before the restart: the engine resumes after them.
        if last is not None:
            self._last_step = last.timestep
            self._last_ts = last.timestamp_us
        elif self._watermark >= 0:
            self._last_step = self._watermark

    def _open_writer(self) -> BatchWriter:
        for path in self.table_paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        return BatchWriter(
            mode=self.config, settings=self.settings, run_id=self.run_id, table_paths=self.table_paths,
            on_failed_attempt=self._on_failed_attempt,
            commit_metadata={**self._commit_metadata, "mode": self.config.mode,
                             "execution_mode": self.execution_mode},
        )

    def _register_start(self) -> None:
        existing = latest_run(self.root, self.execution_mode, self.run_id)
        digest = config_hash(self.config)
        if existing is not None:
            if existing["mode"] != self.config.mode or (
                existing["config_hash"] != digest and not self._allow_config_change
            ):
                raise ComponentError(
                    "RST-301",
                    f"run {self.run_id!r} already exists with mode {existing['mode']!r} and config "
                    f"{existing['config_hash'][:12]}; this run has mode {self.config.mode!r} and "
                    f"config {digest[:12]}",
                )
            # Other inputs under the same run id would skip every committed timestep and append the
            # rest: two runs mixed into one. Without inputs on either side there is nothing to compare.
            differences = input_differences(existing["inputs"], self._run_inputs)
            if differences:
                raise ComponentError(
                    "RST-301",
                    f"run {self.run_id!r} already exists with other inputs (given != recorded): "
                    f"{'; '.join(differences)}. A run id names one run: resume it with its own inputs, "
                    "or store these under another run id",
                    details={"run_id": self.run_id, "differences": differences},
                )
            self._started_at = pd.Timestamp(existing["started_at"]).to_pydatetime()
            self.parent_run_id = self.parent_run_id or existing.get("parent_run_id") or None
        note = "started" if existing is None else f"resumed after timestep {self._watermark}"
        append_run_record(
            self.root, self.execution_mode, run_id=self.run_id, mode=self.config.mode, status="running",
            config_json=self.config.redacted(), config_hash=digest, started_at=self._started_at,
            parent_run_id=self.parent_run_id, note=note, inputs=self._run_inputs,
        )

    async def stop(self) -> RunSummary:
        """Drain the queue, commit what is left, compact the run, record it; return its summary.

        Raises the run's failure (the worker's, or finalize's) after recording the run failed;
        the lock is released either way.
        """
        if not self._running:
            if self._failure is not None:
                raise self._failure
            if self.summary is not None:
                return self.summary
            raise ComponentError("RST-901", "stop() called on a store that was never started")
        self._running = False
        await self._stop_worker()
        if self._failure is not None:
            await asyncio.to_thread(self._finish_failed, str(self._failure))
            raise self._failure
        return await asyncio.to_thread(self._finish_finished)

    async def _abort(self, exc: BaseException) -> None:
        """The engine failed (or was handed the store's failure): commit what was accepted, mark the
        run failed, keep the WAL. The caller re-raises ``exc``."""
        if not self._running:
            return
        self._running = False
        await self._stop_worker()
        cause = self._failure if self._failure is not None else exc
        note = str(cause) if isinstance(cause, ComponentError) else f"engine raised {type(exc).__name__}: {exc}"
        await asyncio.to_thread(self._finish_failed, note)

    async def _stop_worker(self) -> None:
        """Hand the worker the stop marker and wait for it to end; at once if it has failed."""
        worker = self._worker_task
        if worker is None:
            return
        if not worker.done():
            # Raises only when the worker died before there was room: its error is self._failure.
            with contextlib.suppress(ComponentError):
                await self._put(_STOP)
        # asyncio.wait: the worker's outcome is in self._failure, and our own cancellation still propagates.
        await asyncio.wait([worker])

    def _finish_finished(self) -> RunSummary:
        """Compact and record the finished run, then release it. If that fails, the run failed:
        it is recorded so (when storage allows) and the mapped error is raised."""
        assert self._batch_writer is not None
        try:
            # A backtest compacts once, here; a live run by its policy as it commits (one collection ends
            # many times a day, and compacting the day's partition each time rewrote it each time).
            files = self._batch_writer.compact() if not self._live else {
                name: len(delta_tables.data_files(path, run_id=self.run_id)) for name, path in self.table_paths.items()}
            for name, path in self.table_paths.items():
                version = delta_tables.version(path)
                if version is not None:
                    self._versions[name] = version
            return self._retrying(f"record run {self.run_id}", lambda: self._record("finished", "finished", files))
        except Exception as exc:
            error = self._fail(exc, f"finalize run {self.run_id}")
            with contextlib.suppress(Exception):  # the disk may refuse this too; the error is raised below
                self._retrying(f"record failed run {self.run_id}", lambda: self._record("failed", str(error), {}))
            if error is exc:
                raise
            raise error from exc
        finally:
            self._release()

    def _finish_failed(self, note: str) -> None:
        """Record the run as failed if storage allows, then release it. Never raises: the caller
        raises the run's own error, which a failure to record it must not replace."""
        try:
            self._retrying(f"record failed run {self.run_id}", lambda: self._record("failed", note, {}))
        except Exception as exc:
            self._log_error(map_error(exc, f"record failed run {self.run_id}", self.root))
        finally:
            self._release()

    def _retrying(self, action: str, call: Callable[[], _T]) -> _T:
        """``call()``, its failure mapped and retried like a commit when transient: the runs registry
        is one Delta table that every run appends to, so concurrent runs' commits may conflict."""
        assert self._batch_writer is not None
        for attempt in self._batch_writer.retry.attempts_on_transient():
            with attempt, storage_errors(action, self.root / self.execution_mode):
                return call()
        raise AssertionError("unreachable: stamina re-raises the last failure")

    def _record(self, status: str, note: str, files: dict[str, int]) -> RunSummary:
        """The run's summary, appended to the runs registry and the event log."""
        row_counts = {name: delta_tables.count_rows(path, run_id=self.run_id)
                      for name, path in self.table_paths.items()}
        elapsed = time.perf_counter() - self._t0
        self.summary = RunSummary(
            run_id=self.run_id, mode=self.config.mode, execution_mode=self.execution_mode,
            timesteps_received=self._received, timesteps_skipped=self._skipped,
            timesteps_written=self._written_steps, rows=row_counts, commits=dict(self._commits),
            quarantined=self._quarantined, elapsed_s=elapsed,
            throughput=self._received / elapsed if elapsed > 0 else 0.0,
            table_paths={n: str(p) for n, p in self.table_paths.items()},
            table_versions=dict(self._versions), data_files=files,
            parent_run_id=self.parent_run_id, status=status,
        )
        append_run_record(
            self.root, self.execution_mode, run_id=self.run_id, mode=self.config.mode, status=status,
            config_json=self.config.redacted(), config_hash=config_hash(self.config),
            started_at=self._started_at, finished_at=datetime.now(UTC),
            parent_run_id=self.parent_run_id, row_counts=row_counts, table_versions=self._versions,
            note=note,
        )
        self.event_log.log_event("run_finalized", {
            "run_id": self.run_id, "status": status, "rows": row_counts, "commits": dict(self._commits),
            "quarantined": self._quarantined, "data_files": files, "elapsed_s": round(elapsed, 3),
            **({"error": note} if status == "failed" else {}),
        })
        return self.summary

    def _release(self) -> None:
        """Close the run's files and free its lock; every step runs, whatever an earlier one raised."""
        try:
            # The live policy first: its background checkpoints finish before the run's lock is freed.
            closers = [c for c in (self._live_compaction, self._batch_writer, self._durability) if c is not None]
            for closer in closers:
                try:
                    closer.close()
                except Exception as exc:
                    self._log_error(map_error(exc, f"close run {self.run_id}", self.root))
        finally:
            self._lock.release()
            if self._owns_event_log:
                self.event_log.close()
            else:
                self.event_log.flush()

    # ----------------------------------------------------------------------------- hot path
    async def store_timestep_results(self, timestamp: Any, results: dict[str, Any]) -> None:
        """Accept one timestep's component data. FIFO; refuses out-of-order input (RST-103).

        Backtest: waits while the queue is full (the engine slows down; nothing is dropped).
        Live: the snapshot is fsynced to the WAL before this returns; a full queue never blocks.
        Once the store has failed, raises its error (the same one ``stop()`` raises).
        """
        if self._failure is not None:
            raise self._failure
        if not self._running:
            raise ComponentError("RST-901", "store_timestep_results called on a store that is not running")
        step = results.get("timestep")
        if step is None:
            step = self._last_step + 1
        elif step.__class__ is not int or not 0 <= step <= TIMESTEP_MAX:
            step = self._placed_step(step)
        try:
            ts_us = to_micros(timestamp)
        except (TypeError, ValueError):
            ts_us = NO_TIME_US
        # A timestamp the tables cannot hold takes no part in the order: its snapshot is the
        # contract's to quarantine (RST-101, at this timestep), and later ones are compared with
        # the last timestamp that can be stored.
        if step <= self._last_step or TIMESTAMP_MIN_US <= ts_us < self._last_ts:
            self._refuse(step, timestamp, ts_us)
        if step > self._last_step + 1 and self._last_step >= 0:
            self._warn_gap(step)
        previous = self._last_step, self._last_ts
        # Claimed before any await, so that a concurrent call is checked against this timestep.
        self._last_step = step
        if TIMESTAMP_MIN_US <= ts_us <= TIMESTAMP_MAX_US:
            self._last_ts = ts_us
        self._received += 1
        if step <= self._watermark:
            self._skipped += 1
            return
        item = (step, ts_us, timestamp, results, time.monotonic())
        if not self._live:
            self._enqueued_at.append(item[4])
            await self._put(item)
            return
        # The WAL is JSON: a snapshot with no lossless JSON form goes in as a tagged copy that is
        # quarantined (RST-101, naming the key path) instead of raising into the engine.
        item = (step, ts_us, timestamp, json_safe_snapshot(results), item[4])
        try:
            await self._accept_live(item)
        except BaseException:
            # Not acknowledged (the WAL append failed): the engine may send this timestep again.
            if self._last_step == step:
                (self._last_step, self._last_ts), self._received = previous, self._received - 1
            raise

    def quarantine_lines(self, step: int, timestamp: Any, lines: Sequence[BadLine]) -> None:
        """Quarantine a snapshot file's unparseable ``lines`` (RST-101, rule ``unparseable_line``) with
        the snapshot of ``step`` and ``timestamp``: call it just before storing that snapshot.

        They commit in that snapshot's batch, under its app-transaction version, so a resume that
        skips the snapshot as committed drops them here (they are in the quarantine table already).
        Backtest only: the live WAL holds snapshots, not lines.
        """
        if self._live:
            raise ComponentError("RST-201", "quarantine_lines is for backtest file ingestion, not live runs")
        if not lines or step <= self._watermark:
            return
        assert self._batch_writer is not None
        self._batch_writer.add_bad_lines(step, to_micros(timestamp), lines)

    async def _put(self, item: Any) -> None:
        """Queue ``item``, waiting while the queue is full, unless the worker ends first: then
        raise its error (nobody would ever make room)."""
        queue = self.results_queue
        if not queue.full():
            queue.put_nowait(item)
            return
        assert self._worker_task is not None
        put = asyncio.ensure_future(queue.put(item))
        try:
            await asyncio.wait([put, self._worker_task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()  # the worker ended first, or we are cancelled ourselves
        if put.done() and not put.cancelled():
            return
        raise self._failure or ComponentError("RST-901", f"run {self.run_id}: the store's worker ended "
                                              "while the engine waited for room in the queue")

    def _placed_step(self, step: Any) -> int:
        """``step`` as an int if an int64 from 0 holds it (numpy's integers do); else it has no place
        in the run's order and is refused at once, like an order violation, as RST-101."""
        problem = timestep_problem(step)
        if problem is None:
            return int(step)
        error = ComponentError("RST-101", f"run {self.run_id}: refused timestep {problem}; nothing was stored",
                               details={"paths": ["timestep"], "value": printable(step),
                                        "previous_timestep": self._last_step})
        self._log_error(error)
        raise error

    def _warn_gap(self, step: int) -> None:
        """Rule ``timestep_gap``: timesteps that skip (0, 1, then 1,001) are stored, with a warning
        naming the gap: the missing timesteps may be an engine's bug, or a feed that was down."""
        gap = step - self._last_step
        self.event_log.log_warning(
            f"run {self.run_id}: timestep_gap: timestep {step} follows {self._last_step}, a gap of {gap:,} "
            f"({gap - 1:,} timesteps missing)",
            {"rule": "timestep_gap", "run_id": self.run_id, "timestep": step, "previous_timestep": self._last_step,
             "missing": gap - 1})

    def _refuse(self, step: int, timestamp: Any, ts_us: int) -> None:
        if step <= self._last_step:
            why = f"timestep {step} after timestep {self._last_step} (timesteps must be unique and increasing)"
        else:
            why = f"timestamp {timestamp} is earlier than the previous timestep's"
        error = ComponentError("RST-103", f"run {self.run_id}: refused {why}; nothing was reordered",
                               details={"timestep": step, "previous_timestep": self._last_step})
        self._log_error(error)
        raise error

    async def _accept_live(self, item: Queued) -> None:
        assert self._durability is not None
        # Durable first; a full queue never blocks live: the snapshot then waits in the WAL.
        if await self._durability.accept(item):
            self._enqueued_at.append(item[4])
            self.results_queue.put_nowait(item)

    def _backlog(self) -> int:
        """Live snapshots acknowledged but only in the WAL (spilled or replayed); 0 in backtest."""
        return self._durability.backlog if self._durability is not None else 0

    # ----------------------------------------------------------------------------- worker
    async def _worker(self) -> None:
        """The single consumer: chunk → prepare → write (thread) → commit when the batch is due, in order.

        Backtest streams: each prepared chunk is written into the batch's open files while the next is
        prepared, then dropped; the batch's commit comes when it is due. Live commits each batch whole,
        as soon as the commit before it has landed (what was prepared meanwhile is one batch).
        """
        assert self._batch_writer is not None
        pending: list[PreparedBatch] = []  # live: prepared, not yet committed
        pending_steps = 0
        first_pending_at: float | None = None
        tally: BatchTally | None = None  # backtest: the batch being streamed
        inflight: asyncio.Task[None] | None = None
        stopping = False
        try:
            while True:
                if self._failure is not None:
                    raise self._failure  # a commit failed (see _on_commit_done): the run stops here
                chunk, stopping = await self._next_chunk(first_pending_at, stopping)
                if not self._live:
                    prepared = None
                    if chunk:
                        # Preparing inline avoids a CPU-bound thread fighting the producer for the GIL
                        # (measured 2x slower); the engine simply waits, as back-pressure intends.
                        prepared = self._batch_writer.prepare(chunk)
                        tally = tally.add(prepared) if tally is not None else BatchTally.of(prepared)
                    due = tally is not None and (stopping or tally.timesteps >= self.settings.commit_batch_size)
                    if prepared is not None or due:
                        if inflight is not None:
                            await inflight  # one chunk written at a time, in order
                        inflight = asyncio.create_task(self._write(prepared, tally if due else None))
                        inflight.add_done_callback(self._on_commit_done)
                        if due:
                            tally = None
                    await asyncio.sleep(0)
                elif chunk:
                    # Live: the trading loop shares this event loop and must never wait on us.
                    prepared = await asyncio.to_thread(self._batch_writer.prepare, chunk)
                    pending.append(prepared)
                    pending_steps += prepared.timesteps
                    first_pending_at = first_pending_at or chunk[0][4]
                # Live commits what it has prepared as soon as no commit is in flight; while one is,
                # it goes on preparing what arrives (unless the queue ran empty, the batch is full or
                # flush_interval passed) and commits it all next. Waiting for the queue to run empty
                # held batches back at 10 snapshots/s (bench/bench_live.py).
                commit_now = bool(pending) and (
                    stopping
                    or inflight is None
                    or inflight.done()
                    or pending_steps >= self.settings.commit_batch_size
                    or time.monotonic() - (first_pending_at or 0) >= self.settings.flush_interval
                    or (self.results_queue.empty() and not self._backlog())
                )
                if commit_now:
                    batch = PreparedBatch.merge(pending)
                    pending, pending_steps, first_pending_at = [], 0, None
                    if inflight is not None:
                        await inflight
                    inflight = asyncio.create_task(self._commit(batch))
                    inflight.add_done_callback(self._on_commit_done)
                if stopping and not pending and tally is None and self.results_queue.empty() and not self._backlog():
                    break
            if inflight is not None:
                await inflight
        except BaseException as exc:
            if inflight is not None and not inflight.done():
                # Let the write in flight settle (its outcome is in the tables), so that nothing
                # writes while the run is finalized.
                await asyncio.wait([inflight])
            if isinstance(exc, asyncio.CancelledError):
                self._fail(ComponentError("RST-901", f"run {self.run_id}: the store's worker was cancelled"))
                raise
            self._fail(exc)

    def _on_commit_done(self, commit: asyncio.Task[None]) -> None:
        """A failed commit fails the run at once, not when the worker next looks at it: the engine
        and health checks see it while the worker may still be waiting for snapshots."""
        if not commit.cancelled() and (exc := commit.exception()) is not None:
            self._fail(exc)

    def _fail(self, exc: BaseException, action: str = "store the run's snapshots") -> ComponentError:
        """Make ``exc`` (mapped onto its RST code) the run's failure, unless it already has one."""
        if self._failure is None:
            error = _one_line(map_error(exc, action, self.root))
            self._failure = error
            self.health.fatal = str(error)
            self._log_error(error, event_type="storage_failed" if error.error_code in _STORAGE_CODES else "error")
        return self._failure

    async def _next_chunk(self, first_pending_at: float | None, stopping: bool) -> tuple[list[Queued], bool]:
        """Up to CHUNK_TIMESTEPS queued snapshots in FIFO order (waiting for at least one)."""
        chunk: list[Queued] = []
        if self._durability is not None and self._durability.backlog and self.results_queue.empty():
            # The queue has caught up: the WAL backlog is next in FIFO order.
            chunk = await self._durability.read_backlog(CHUNK_TIMESTEPS)
            return chunk, stopping
        if stopping:
            return chunk, stopping
        timeout = None
        if self._live and first_pending_at is not None:
            timeout = max(0.0, self.settings.flush_interval - (time.monotonic() - first_pending_at))
        try:
            first = await asyncio.wait_for(self.results_queue.get(), timeout) if timeout is not None \
                else await self.results_queue.get()
        except TimeoutError:
            return chunk, stopping
        limit = min(CHUNK_TIMESTEPS, self.settings.commit_batch_size)
        item = first
        while True:
            if item is _STOP:
                stopping = True
                break
            chunk.append(item)
            self._enqueued_at.popleft()
            if len(chunk) >= limit or self.results_queue.empty():
                break
            item = self.results_queue.get_nowait()
        return chunk, stopping

    async def _write(self, chunk: PreparedBatch | None, due: BatchTally | None) -> None:
        """Backtest: stream ``chunk`` into the batch's files; then, if the batch ``due`` is complete, commit it."""
        assert self._batch_writer is not None
        if chunk is not None:
            await asyncio.to_thread(self._batch_writer.stream, chunk)
        if due is not None:
            outcome = await asyncio.to_thread(self._batch_writer.finish, due.first_timestep, due.last_timestep)
            await self._committed(due, outcome, None)

    async def _commit(self, batch: PreparedBatch) -> None:
        """Live: commit ``batch`` whole, from the WAL's point of view one sealed segment."""
        assert self._batch_writer is not None and self._durability is not None
        if self._live_compaction is not None and not self._live_compaction.started:
            # Before the first commit: the run's current day, to notice this batch rolling it over.
            await asyncio.to_thread(self._live_compaction.start)
        # A commit that fails (terminal at once, transient once its retries are spent) ends the run;
        # live keeps the batch in the WAL for the next run.
        outcome = await self._durability.commit(batch, self._batch_writer.commit)
        await self._committed(BatchTally.of(batch), outcome, last_timestamp_us(batch.tables.get(RAW_SNAPSHOTS)))

    async def _committed(self, batch: BatchTally, outcome: CommitOutcome, last_us: int | None) -> None:
        """The bookkeeping of a committed batch: counters, health, WAL release, live compaction, events."""
        for name, version in outcome.versions.items():
            self._versions[name] = version
            self._commits[name] += 1
        for name, rows in outcome.rows.items():
            self._rows[name] += rows
        self._quarantined += batch.quarantined
        self._written_steps += batch.timesteps
        for error in batch.errors:
            self._log_error(error)
        now = datetime.now(UTC)
        self.health.record_batch(timesteps=batch.timesteps, processing_s=batch.prepare_s + outcome.write_s,
                                 commits=outcome.commits, when=now)
        if self._durability is not None:
            await self._durability.release_through(batch.last_timestep)
        if self._live_compaction is not None:
            await asyncio.to_thread(self._live_compaction.after_commit, outcome.versions, last_us)
        self.event_log.log_event("batch_committed", {
            "run_id": self.run_id, "first_timestep": batch.first_timestep, "last_timestep": batch.last_timestep,
            "timesteps": batch.timesteps, "rows": outcome.rows, "versions": outcome.versions,
            "quarantined": batch.quarantined, "retries": outcome.retries,
            "write_ms": round(outcome.write_s * 1000, 2), "prepare_ms": round(batch.prepare_s * 1000, 2),
        })
        # state_update is aggregated per batch: one event per commit, not one per call.
        self.event_log.log_event("state_update", {
            "results_count": batch.timesteps,
            "queue_size": self.results_queue.qsize(),
            "write_count": self.health.write_count,
            "processing_time_ms": round((batch.prepare_s + outcome.write_s) * 1000, 2),
        })
        if not self._live:
            self.event_log.flush()

    # ----------------------------------------------------------------------------- errors
    def _on_failed_attempt(self, error: ComponentError, attempt: int, table: str) -> None:
        """A transient failure of one table write (retried unless its attempts ran out)."""
        event = "write_timeout" if error.error_code == "RST-003" else "storage_failed"
        self.event_log.log_event(event, {**error.to_event(), "table": table, "attempt": attempt})
        self.health.record_error({**error.to_event(), "table": table})
        self.event_log.log_event("error", {**error.to_event(), "table": table, "attempt": attempt})

    def _log_error(self, error: ComponentError, *, event_type: str = "error") -> None:
        # A full queue degrades health through the spilling flag, which clears once the backlog drains.
        self.health.record_error(error.to_event(), degrades=error.error_code != "RST-002")
        if event_type != "error":
            self.event_log.log_event(event_type, error.to_event())
        self.event_log.log_event("error", error.to_event())

    # ----------------------------------------------------------------------------- other API
    async def store_result(self, result: dict[str, Any]) -> None:
        """Store one snapshot given as a dict with a ``timestamp`` key beside the component data."""
        if "timestamp" not in result:
            raise ComponentError("RST-101", "store_result needs a 'timestamp' key beside the component data")
        payload = {k: v for k, v in result.items() if k != "timestamp"}
        await self.store_timestep_results(result["timestamp"], payload)

    async def store_results_batch(self, results: list[dict[str, Any]]) -> None:
        """Store several snapshots (each with a ``timestamp`` key) in order."""
        for result in results:
            await self.store_result(result)

    async def _store_many(self, request_id: str, results: Any) -> RunSummary | None:
        if request_id != self.run_id:
            raise ComponentError("RST-301", f"request_id {request_id!r} is not this store's run {self.run_id!r}")
        source = results.get("snapshots", results) if isinstance(results, dict) else results
        if isinstance(source, AsyncIterable):
            async for entry in source:
                await self._store_entry(entry)
        elif isinstance(source, Iterable):
            for entry in source:
                await self._store_entry(entry)
        else:
            raise ComponentError("RST-101", "results must be an iterable of (timestamp, results) or dicts")
        return None

    async def _store_entry(self, entry: Any) -> None:
        if isinstance(entry, tuple):
            await self.store_timestep_results(entry[0], entry[1])
        else:
            await self.store_result(entry)

    async def store_backtest_results(self, request_id: str, results: Any) -> None:
        """Store a whole backtest's snapshots: ``results`` is an iterable (or ``{"snapshots": ...}``)
        of ``(timestamp, results)`` pairs or dicts with a ``timestamp`` key."""
        await self._store_many(request_id, results)

    async def store_live_results(self, request_id: str, results: Any) -> None:
        """Store the pending live snapshots of one collection, same shapes as the backtest call."""
        await self._store_many(request_id, results)

    async def retrieve_results(self, query: dict[str, Any]) -> pd.DataFrame | pa.Table:
        """The spec's ``retrieve_results(query)``: ``results_store.query.retrieve_results`` on this store's
        tables, ``run_id`` defaulting to this run. Every key of that query is taken (result_type, run_id(s),
        start/end, columns, where, version/as_of, points/every/how, limit, output); filters are pushed
        down to the files. ``raw_snapshots`` and ``quarantine`` are read by ``version`` and ``limit`` only."""
        from results_store.query import retrieve_results

        table = str(query.get("result_type", ""))
        if table not in self.table_paths:
            raise ComponentError("RST-302", f"no table {table!r} in this run; tables: {sorted(self.table_paths)}")
        if table in (RAW_SNAPSHOTS, QUARANTINE):
            from results_store.reading import read_table

            data = await asyncio.to_thread(read_table, self.root, self.execution_mode, table,
                                           run_id=query.get("run_id", self.run_id), version=query.get("version"))
            if query.get("limit") is not None:
                data = data.slice(0, int(query["limit"]))
            return data if query.get("output") == "arrow" else data.to_pandas()
        scoped = dict(query) if ("run_id" in query or "run_ids" in query) else {**query, "run_id": self.run_id}
        return await asyncio.to_thread(retrieve_results, self.root, scoped, execution_mode=self.execution_mode)

    async def cleanup_old_results(self, retention_days: int) -> list[str]:
        """Apply retention with ``retention_days`` to this execution mode (never to this run); the runs removed.

        The one retention of the store (``results_store.retention``): expired runs are recorded as
        such, pinned runs and runs no complete backup holds are kept, and vacuum frees the space of
        what fell out of the time-travel window.
        """
        from results_store.retention import run_retention

        result = await asyncio.to_thread(run_retention, self.root, self.execution_mode, retention_days=retention_days,
                                         data_dir=self.settings.data_dir, keep=(self.run_id,))
        return result.removed_runs

    def last_committed_timestep(self) -> int | None:
        """The last timestep every table of this run has committed, or None."""
        if self._batch_writer is not None:
            mark = self._batch_writer.watermark()
        else:
            values = [delta_tables.committed_txn_version(p, self.run_id) for p in self.table_paths.values()]
            mark = min((v if v is not None else -1) for v in values)
        return None if mark < 0 else mark

    def get_queue_size(self) -> int:
        return self.results_queue.qsize()

    def is_worker_running(self) -> bool:
        return self._worker_task is not None and not self._worker_task.done()

    def get_storage_status(self) -> dict[str, Any]:
        """Where and what this store writes, and how far it has got."""
        return {
            "run_id": self.run_id,
            "mode": self.config.mode,
            "execution_mode": self.execution_mode,
            "running": self._running,
            "worker_running": self.is_worker_running(),
            "root": str(self.root),
            "tables": {n: str(p) for n, p in self.table_paths.items()},
            "resume_after_timestep": self._watermark,
            "last_timestep_received": self._last_step,
            "wal_dir": str(self._durability.directory) if self._durability is not None else None,
        }

    def get_storage_stats(self) -> dict[str, Any]:
        """Counters of this run so far: received, skipped, written, rows, commits, quarantine."""
        return {
            "run_id": self.run_id,
            "timesteps_received": self._received,
            "timesteps_skipped": self._skipped,
            "timesteps_written": self._written_steps,
            "rows": dict(self._rows),
            "commits": dict(self._commits),
            "table_versions": dict(self._versions),
            "quarantined": self._quarantined,
            "queue_size": self.results_queue.qsize(),
            "spilled_backlog": self._backlog(),
            "write_count": self.health.write_count,
        }

    def check_component_health(self) -> dict[str, Any]:
        """The spec's health report: status, error_count, queue_size, write_count, timings, memory."""
        oldest = time.monotonic() - self._enqueued_at[0] if self._enqueued_at else None
        return self.health.report(
            queue_size=self.results_queue.qsize(), queue_capacity=self.settings.queue_size,
            oldest_queued_age_s=oldest, worker_running=self.is_worker_running(),
            extra={"run_id": self.run_id, "spilled_backlog": self._backlog()},
        )

    @staticmethod
    def new_run_id(mode: str) -> str:
        """A fresh, sortable run id: ``<mode>-<UTC time>-<random>``."""
        return f"{mode}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"

    # ----------------------------------------------------------------------------- the spec's named outputs
    # Thin wrappers with the spec's names over results_store.export and results_store.report (imported
    # on use, as retrieve_results does, so that an engine embedding the store does not load them).
    async def save_timestep_result(self, timestamp: Any, results: dict[str, Any]) -> None:
        """The spec's ``save_timestep_result``: the same as :meth:`store_timestep_results`."""
        await self.store_timestep_results(timestamp, results)

    async def export_results(self, format: str, output_path: Path | str, **options: Any) -> dict[str, Any]:
        """The spec's ``export_results(format, output_path)``: this run's result tables as csv, jsonl, json,
        parquet or db into ``output_path``, with manifest.json (``results_store.export.export_run``;
        ``options``: tables, start, end, as_of, db_url, db_schema)."""
        from results_store.export import export_run

        return await asyncio.to_thread(export_run, self.root, self.run_id, format,  # type: ignore[arg-type]
                                       Path(output_path), execution_mode=self.execution_mode, **options)

    async def save_event_log(self) -> Path:
        """The spec's ``save_event_log``: ``results/{run_id}/events.csv``, the run's execution log and the
        store's own events for the run (``results_store.report.write_event_log``)."""
        from results_store.report import write_event_log

        self.event_log.flush()  # this run's buffered events belong in the file too
        return await asyncio.to_thread(write_event_log, self.root, self.run_id, execution_mode=self.execution_mode,
                                       event_log_dir=self.settings.data_dir)

    async def save_final_result(self) -> Path:
        """The spec's ``save_final_result``: the run's bundle under ``{root}/{execution_mode}/results/{run_id}/``
        (performance, trades and events CSVs, summary.json, report.html with plots;
        ``results_store.report.write_bundle``). Returns the bundle's directory."""
        from results_store.report import write_bundle

        self.event_log.flush()
        bundle = await asyncio.to_thread(write_bundle, self.root, self.run_id, execution_mode=self.execution_mode,
                                         event_log_dir=self.settings.data_dir)
        return bundle.directory
