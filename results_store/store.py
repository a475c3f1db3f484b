"""``ResultsStore``: the API engines call, the async FIFO queue, and its single consumer.

The engine's path (``store_timestep_results``) only checks ordering and appends to the queue: no
conversion, no I/O (live mode adds one fsynced WAL append, because an acknowledged live snapshot
must survive a crash; the WAL and its spill backlog are ``results_store.live``). One worker drains
the queue in FIFO order into chunks; chunks are flattened and validated (inline in backtest, in a
thread in live) and committed as batches from a writer thread while the next chunks are prepared,
one Delta commit per table per batch, each carrying the batch's last timestep as its
application-transaction version. A restart with the same ``run_id`` reads those versions and
skips what is already committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from results_store import delta_tables
from results_store.allocators import tune_allocators
from results_store.batch_writer import BatchWriter, PreparedBatch, Queued, TableWriter, delta_table_writer
from results_store.events import EventLog
from results_store.flatten import to_micros
from results_store.health import HealthTracker
from results_store.live import LiveDurability, wal_directory
from results_store.run_lock import RunLock
from results_store.runs import append_run_record, input_differences, latest_run, read_runs
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import ModeConfig, config_hash
from schemas.result_types import ResultType
from schemas.settings import StoreSettings, load_settings
from schemas.store_tables import QUARANTINE, RAW_SNAPSHOTS

__all__ = ["ResultsStore"]

_STOP: Any = object()
# Snapshots flattened and validated together. pandera costs ~4 ms per table per call whatever the
# size, so larger chunks are cheaper per timestep (bench: 34 µs at 5,000, 28 µs at 10,000, 26 µs at
# 20,000) but hold more Python objects at once (+34 MB per 5,000 more): 10,000 is the middle.
CHUNK_TIMESTEPS = 10_000


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
        writer: TableWriter = delta_table_writer,
        backoff_base_s: float = 0.5,
        commit_metadata: dict[str, Any] | None = None,
        allow_config_change: bool = False,
        run_inputs: dict[str, Any] | None = None,
    ) -> None:
        if execution_mode not in ("backtest", "live"):
            raise ComponentError("RST-201", f"execution_mode must be 'backtest' or 'live', got {execution_mode!r}")
        if not run_id or "'" in run_id or "/" in run_id:
            raise ComponentError("RST-201", f"run_id must be non-empty without quotes or slashes, got {run_id!r}")
        self.config = config
        self.execution_mode = execution_mode
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        base = settings or load_settings(config, data_dir=data_dir)
        self.settings = base.model_copy(update={"execution_mode": execution_mode, "data_dir": Path(data_dir)})
        self.root = self.settings.root
        self._live = execution_mode == "live"
        self.event_log = event_logger or EventLog(self.settings.data_dir, buffered=not self._live)
        self._owns_event_log = event_logger is None
        self.health = HealthTracker(execution_mode)
        self.health_manager = health_manager
        self._writer_fn = writer
        self._backoff_base_s = backoff_base_s
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
        self._failure: BaseException | None = None
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
        await asyncio.to_thread(self._lock.acquire)
        try:
            self._batch_writer = await asyncio.to_thread(self._open_writer)
            self._watermark = self._batch_writer.watermark()
            await asyncio.to_thread(self._register_start)
        except BaseException:
            self._lock.release()
            raise
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
        if self._live:
            self._durability = LiveDurability(
                wal_directory(self.root, self.run_id), queue=self.results_queue, health=self.health,
                log_error=self._log_error, retry_interval_s=self.settings.flush_interval,
            )
            last = await self._durability.recover(self._watermark)
            # Replayed snapshots were acknowledged before the restart: the engine resumes after them.
            if last is not None:
                self._last_step = last.timestep
                self._last_ts = last.timestamp_us
            elif self._watermark >= 0:
                self._last_step = self._watermark
        self._running = True
        self._worker_task = asyncio.create_task(self._worker(), name=f"results-store-worker-{self.run_id}")
        return self.get_storage_status()

    def _open_writer(self) -> BatchWriter:
        for path in self.table_paths.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        return BatchWriter(
            mode=self.config, settings=self.settings, run_id=self.run_id, table_paths=self.table_paths,
            writer=self._writer_fn, on_retry=self._on_retry, backoff_base_s=self._backoff_base_s,
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
        """Drain the queue, commit what is left, compact the run, record it; return its summary."""
        if not self._running:
            if self.summary is not None:
                return self.summary
            raise ComponentError("RST-001", "stop() called on a store that was never started")
        self._running = False
        assert self._worker_task is not None
        if not self._worker_task.done():
            await self.results_queue.put(_STOP)
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker_task
        if self._failure is not None:
            await asyncio.to_thread(self._finish, "failed")
            raise self._failure
        return await asyncio.to_thread(self._finish, "finished")

    async def _abort(self, exc: BaseException) -> None:
        """The engine failed: commit what was accepted, mark the run failed, keep the WAL."""
        self._running = False
        if self._worker_task is not None and not self._worker_task.done():
            await self.results_queue.put(_STOP)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._worker_task
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._finish, "failed", f"engine raised {type(exc).__name__}: {exc}")

    def _finish(self, status: str, note: str = "") -> RunSummary:
        assert self._batch_writer is not None
        files: dict[str, int] = {}
        if status == "finished":
            files = self._batch_writer.compact()
            for name, path in self.table_paths.items():
                version = delta_tables.version(path)
                if version is not None:
                    self._versions[name] = version
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
            note=note or status,
        )
        self.event_log.log_event("run_finalized", {
            "run_id": self.run_id, "status": status, "rows": row_counts, "commits": dict(self._commits),
            "quarantined": self._quarantined, "data_files": files, "elapsed_s": round(elapsed, 3),
        })
        self._batch_writer.close()
        if self._durability is not None:
            self._durability.close()
        self._lock.release()
        if self._owns_event_log:
            self.event_log.close()
        else:
            self.event_log.flush()
        return self.summary

    # ----------------------------------------------------------------------------- hot path
    async def store_timestep_results(self, timestamp: Any, results: dict[str, Any]) -> None:
        """Accept one timestep's component data. FIFO; refuses out-of-order input (RST-103).

        Backtest: waits while the queue is full (the engine slows down; nothing is dropped).
        Live: the snapshot is fsynced to the WAL before this returns; a full queue never blocks.
        """
        if not self._running:
            raise self._failure or ComponentError("RST-001", "the results store is not running")
        step = results.get("timestep")
        if step is None:
            step = self._last_step + 1
        ts_us = to_micros(timestamp)
        if step <= self._last_step or ts_us < self._last_ts:
            self._refuse(step, timestamp, ts_us)
        self._last_step = step
        self._last_ts = ts_us
        self._received += 1
        if step <= self._watermark:
            self._skipped += 1
            return
        item = (step, ts_us, timestamp, results, time.monotonic())
        if self._live:
            await self._accept_live(item)
            return
        await self.results_queue.put(item)
        self._enqueued_at.append(item[4])

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
            self.results_queue.put_nowait(item)
            self._enqueued_at.append(item[4])

    def _backlog(self) -> int:
        """Live snapshots acknowledged but only in the WAL (spilled or replayed); 0 in backtest."""
        return self._durability.backlog if self._durability is not None else 0

    # ----------------------------------------------------------------------------- worker
    async def _worker(self) -> None:
        """The single consumer: chunk → prepare (thread) → commit batches (thread), in order."""
        assert self._batch_writer is not None
        pending: list[PreparedBatch] = []
        pending_steps = 0
        first_pending_at: float | None = None
        inflight: asyncio.Task[None] | None = None
        stopping = False
        try:
            while True:
                chunk, stopping = await self._next_chunk(first_pending_at, stopping)
                if chunk:
                    if self._live:
                        # Live: the trading loop shares this event loop and must never wait on us.
                        prepared = await asyncio.to_thread(self._batch_writer.prepare, chunk)
                    else:
                        # Backtest: preparing inline avoids a CPU-bound thread fighting the producer for
                        # the GIL (measured 2x slower); the engine simply waits, as back-pressure intends.
                        prepared = self._batch_writer.prepare(chunk)
                        await asyncio.sleep(0)
                    pending.append(prepared)
                    pending_steps += prepared.timesteps
                    first_pending_at = first_pending_at or chunk[0][4]
                due = pending and (
                    stopping
                    or pending_steps >= self.settings.commit_batch_size
                    or (self._live and time.monotonic() - (first_pending_at or 0) >= self.settings.flush_interval)
                    or (self._live and self.results_queue.empty() and not self._backlog())
                )
                if due:
                    batch = PreparedBatch.merge(pending)
                    pending, pending_steps, first_pending_at = [], 0, None
                    if inflight is not None:
                        await inflight
                    inflight = asyncio.create_task(self._commit(batch))
                if stopping and not pending and self.results_queue.empty() and not self._backlog():
                    break
            if inflight is not None:
                await inflight
        except BaseException as exc:
            if inflight is not None and not inflight.done():
                with contextlib.suppress(BaseException):
                    await inflight
            self._failure = exc
            self.health.fatal = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ComponentError):
                self._log_error(exc, event_type="storage_failed" if exc.error_code in ("RST-001", "RST-003") else "error")
            if not isinstance(exc, asyncio.CancelledError):
                return
            raise

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

    async def _commit(self, batch: PreparedBatch) -> None:
        assert self._batch_writer is not None
        if self._durability is not None:
            outcome = await self._durability.commit(batch, self._batch_writer.commit)
        else:
            # Backtest: a commit that fails through its retries ends the run (RST-001/RST-003).
            outcome = await asyncio.to_thread(self._batch_writer.commit, batch)
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
    def _on_retry(self, error: ComponentError, attempt: int, table: str) -> None:
        event = "write_timeout" if error.error_code == "RST-003" else "storage_failed"
        self.event_log.log_event(event, {**error.to_event(), "table": table, "attempt": attempt})
        self.health.record_error({**error.to_event(), "table": table})
        self.event_log.log_event("error", {**error.to_event(), "table": table, "retrying": True})

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

    async def retrieve_results(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of one table: ``{"result_type": ..., "run_id": ... (default this run), "version": ...}``."""
        from results_store.reading import read_table

        table = str(query.get("result_type", ""))
        if table not in self.table_paths:
            raise ComponentError("RST-302", f"no table {table!r} in this run; tables: {sorted(self.table_paths)}")
        data = await asyncio.to_thread(
            read_table, self.root, self.execution_mode, table,
            run_id=query.get("run_id", self.run_id), version=query.get("version"),
        )
        if "limit" in query:
            data = data.slice(0, int(query["limit"]))
        rows: list[dict[str, Any]] = data.to_pylist()  # pyarrow is untyped here: name what it returns
        return rows

    async def cleanup_old_results(self, retention_days: int) -> list[str]:
        """Delete the partitions of finished runs older than ``retention_days`` (never this run)."""
        def _cleanup() -> list[str]:
            runs = read_runs(self.root, self.execution_mode)
            cutoff = pd.Timestamp.now(tz="UTC") - timedelta(days=retention_days)
            old = runs[(runs["status"] != "running") & (runs["finished_at"] < cutoff) & (runs["run_id"] != self.run_id)]
            removed = []
            for run_id in old["run_id"]:
                for result_type in ResultType:
                    delta_tables.delete_run(delta_tables.table_path(self.root, self.execution_mode, result_type.value), run_id)
                for name in (RAW_SNAPSHOTS, QUARANTINE):
                    delta_tables.delete_run(delta_tables.table_path(self.root, self.execution_mode, name), run_id)
                removed.append(str(run_id))
            return removed

        return await asyncio.to_thread(_cleanup)

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
