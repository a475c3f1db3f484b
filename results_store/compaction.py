"""When a run's files are compacted: a backtest once, at finalize; a live run by a policy.

A live run commits a small file per table every collection (every minute, or every second for an
engine that embeds the store). Compacting the whole partition after each commit, as the store once
did, rewrote the day's data on every collection: quadratic writes, and a disk full of replaced
files nothing vacuumed. The live policy (:class:`LiveCompaction`) instead:

- **merges the appends** of a table once ``merge_files`` of them have piled up since the last merge
  (into a ``merged-…`` file; ``delta_tables.merge_appends`` by version through the writer's handle,
  which knows the files it appended, or ``compact_run(select="appended")`` through delta-rs when it
  knows too few of them): each row is rewritten once more here, whatever the day's length. The
  tables take turns, so that one commit does not merge all of them at once and hold up the commits
  behind it;
- **compacts the day** when the run's data rolls over into a new UTC day
  (``select="uncompacted"``, into one ``compacted-…`` file per day): a second rewrite.

It also keeps each table's log **checkpointed** for the live commits, which leave that to it: every
table reaches a boundary at the same commit, and ten checkpoints inside it made it the slowest of
ten. Here they are written in the background, of a boundary version (every ``CHECKPOINT_INTERVAL``
versions), while the next commits go on; a table's next one no sooner than ``checkpoint_seconds``
after its last began, nor than ``checkpoint_cost_factor`` times what its last took. A checkpoint
lists and reads the log (delta-rs), so its cost grows with the log: 23 ms at 100 versions, 44 ms at
6,000 (bench/bench_log_growth.py), and a week's log at one snapshot a second is 600,000 versions.
The cost factor keeps a table's background checkpoints under ~5% of the time however long its log,
and a table never has a second checkpoint queued behind one not yet written. A sparser cadence is
not taken while checkpoints are cheap: every 10 s at 10 snapshots/s cut the live CPU by a tenth, but
each merge (delta-rs, inside the commit task) then replayed up to 100 log entries and the 10/s tail
tripled (bench/bench_live.py: p99 181 vs 48-63 ms; 141 ms at a factor of 50, which skipped some).

A run that ends with its day (the every-minute deployment names one run per UTC day) never sees
the roll-over itself: the next day's run does, at its first commit, and compacts the live runs
whose days are over (``compact_finished_days``), so that by the nightly retention (04:00) the files
they replaced are past the vacuum's grace and go (``results_store.retention``). The nightly
compacts whatever a quiet day left over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from time import monotonic
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from results_store import checksums, delta_tables
from schemas.modes import Compression
from schemas.store_tables import RAW_SNAPSHOTS

__all__ = ["CHECKPOINT_COST_FACTOR", "CHECKPOINT_INTERVAL", "CHECKPOINT_SECONDS", "LIVE_MERGE_FILES", "LiveCompaction",
           "is_append", "last_timestamp_us", "run_last_day"]

_T = TypeVar("_T")
_R = TypeVar("_R")

# Appended files per table after which a live run's appends are merged. A day of one-minute
# collections is then 45 merges of 32 files (each row rewritten once), and a reader of the day opens
# at most ~45 + 31 files before the day's compaction.
LIVE_MERGE_FILES = 32
# The tables' checkpoint interval: a checkpoint at every version v with (v + 1) % CHECKPOINT_INTERVAL == 0.
CHECKPOINT_INTERVAL = delta_tables.CHECKPOINT_INTERVAL
# ... but per table no sooner than this many seconds after its last one (the policy's default) ...
CHECKPOINT_SECONDS = 1.0
# ... nor than this many times what its last one took: a table's background checkpoints stay under
# ~5% of the time (and the one background thread under one core), however long the log.
CHECKPOINT_COST_FACTOR = 20.0
# Tables compacted side by side. Every table of a run reaches the merge threshold at the same commit
# (each batch commits to all of them), and one after the other the ten merges held that commit's
# successor for ~0.7 s (bench/bench_live.py); pyarrow and delta-rs work outside the GIL.
COMPACTION_THREADS = 4


def _each(call: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[call(item) for item in items]``, side by side; the first failure (in ``items`` order) is raised."""
    if len(items) < 2:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(COMPACTION_THREADS, len(items)),
                            thread_name_prefix="results-store-compact") as pool:
        return list(pool.map(call, items))


def is_append(file: Path | str) -> bool:
    """Whether a data file is an append (not the output of a merge or a compaction)."""
    name = Path(file).name
    return not name.startswith((delta_tables.MERGED_PREFIX, delta_tables.COMPACTED_PREFIX))


def _day(micros: int) -> date:
    return datetime.fromtimestamp(micros / 1e6, UTC).date()


def run_last_day(path: Path, run_id: str) -> date | None:
    """The UTC day of the newest timestamp of ``run_id`` in the table at ``path`` (from file statistics)."""
    if not delta_tables.table_exists(path):
        return None
    files = delta_tables.table_files(path).runs([run_id])[0][1]
    newest = [f.max_timestamp_us for f in files if f.max_timestamp_us is not None]
    return _day(max(newest)) if newest else None


@dataclass
class LiveCompaction:
    """The compaction policy of one live run, told of each commit (see the module docstring)."""

    table_paths: dict[str, Path]
    run_id: str
    compression: Compression = "zstd"
    merge_files: int = LIVE_MERGE_FILES
    appended: dict[str, int] = field(default_factory=dict)
    day: date | None = None
    started: bool = False
    fresh: bool = False
    done: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Per table, the newest checkpoint boundary (a version v with (v + 1) % CHECKPOINT_INTERVAL == 0) seen to.
    checkpointed: dict[str, int] = field(default_factory=dict)
    checkpoints: list[tuple[str, int]] = field(default_factory=list)
    commits: int = 0  # commits told of: whose turn it is to merge (``_turn``)
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    checkpoint_cost_factor: float = CHECKPOINT_COST_FACTOR
    clock: Callable[[], float] = field(default=monotonic, repr=False)  # when checkpoints are due (tests pass their own)
    # The run's writer's handle of a table (``BatchWriter.handle``): a merge goes through it when it
    # appended at least ``merge_files`` files since its last merge (``delta_tables.merge_appends``);
    # otherwise, or without one, through delta-rs, which lists the run's appends.
    handles: Callable[[str], delta_tables.TableHandle | None] | None = field(default=None, repr=False)
    # Per table, the clock's time before which no checkpoint is started.
    _next_checkpoint: dict[str, float] = field(default_factory=dict, repr=False)
    # Tables whose checkpoint is submitted and not written yet: never a second one queued behind it.
    _writing: set[str] = field(default_factory=set, repr=False)
    # Checkpoints are written off the commit path, one table after the other (``_checkpoint``).
    _background: ThreadPoolExecutor | None = field(default=None, repr=False)
    _pending: list[Future[None]] = field(default_factory=list, repr=False)

    def start(self) -> None:
        """Count each table's appends since its last merge, and find the run's current day."""
        def count(path: Path) -> tuple[int, int] | None:
            if not delta_tables.table_exists(path):
                return None
            files = delta_tables.table_files(path).runs([self.run_id])[0][1]
            return sum(1 for f in files if is_append(f.path)), len(files)

        stored = 0
        for name, counted in zip(self.table_paths, _each(count, list(self.table_paths.values())), strict=True):
            if counted is not None:
                self.appended[name] = counted[0]
                stored += counted[1]
        self.fresh = stored == 0  # a new run: its first commit is another day's roll-over
        raw = self.table_paths.get(RAW_SNAPSHOTS)
        self.day = run_last_day(raw, self.run_id) if raw is not None else None
        self.started = True

    def after_commit(self, committed: Iterable[str], last_timestamp_us: int | None) -> list[dict[str, Any]]:
        """Compact what the policy says after a commit of ``committed`` tables (their new versions when
        a mapping: then their checkpoints are seen to as well); returns the compactions it made."""
        # Told of a commit before it started: the count it starts from already includes that commit.
        counted = not self.started
        if counted:
            self.start()
        day = _day(last_timestamp_us) if last_timestamp_us is not None else None
        actions: list[dict[str, Any]] = []
        if day is not None and self.day is not None and day > self.day:
            # The run's data rolled over into a new UTC day: the days before are final, compact them.
            midnight = int(datetime.combine(day, time.min, UTC).timestamp() * 1_000_000)
            names = list(self.table_paths)
            results = _each(lambda name: delta_tables.compact_run(
                self.table_paths[name], self.run_id, compression=self.compression, select="uncompacted",
                before_us=midnight), names)
            tables = set(committed)
            for name, result in zip(names, results, strict=True):
                self.appended[name] = 1 if name in tables else 0
                if result.get("numFilesRemoved"):
                    actions.append({"table": name, "step": "day", "day": self.day.isoformat(), **result})
        else:
            due = []
            for name in committed:
                self.appended[name] = self.appended.get(name, 0) + (0 if counted else 1)
                if self.appended[name] >= self.merge_files and self._turn(name):
                    due.append(name)
            results = _each(self._merge, due)
            for name, result in zip(due, results, strict=True):
                self.appended[name] = 0
                if result.get("numFilesRemoved"):
                    actions.append({"table": name, "step": "merge", **result})
        if day is not None and self.fresh:
            self.fresh = False
            actions += self.compact_finished_days(day)
        if day is not None:
            self.day = max(day, self.day) if self.day is not None else day
        if isinstance(committed, Mapping):
            self._checkpoint(committed)
        self.done.extend(actions)
        self.commits += 1
        return actions

    def _merge(self, name: str) -> dict[str, Any]:
        """Merge a table's appends: those its writer's handle appended, by version, when there are
        ``merge_files`` of them; else what the table lists as the run's appends (a run's first merge,
        one after a restart), through delta-rs."""
        handle = self.handles(name) if self.handles is not None else None
        path = self.table_paths[name]
        if handle is not None:
            merged = delta_tables.merge_appends(path, handle, self.run_id, compression=self.compression,
                                                min_files=self.merge_files)
            if merged is not None:
                return merged
        result = delta_tables.compact_run(path, self.run_id, compression=self.compression, select="appended",
                                          output="merged", min_files=self.merge_files)
        if handle is not None and result.get("numFilesRemoved"):
            handle.forget_unmerged()  # merged just now with the rest of the run's appends
        return result

    def _turn(self, name: str) -> bool:
        """Whether ``name`` may merge at this commit: tables take turns, one slot per commit.

        Every table of a run reaches the threshold at the same commit; merging all ten there held the
        commits behind it for ~300 ms at 10 snapshots/s (bench/bench_live.py). With slots over a quarter
        of the threshold's commits, a commit merges at most two tables, and a table holds at most
        ``merge_files * 1.25`` appends; one table, or a small threshold (tests), keeps one slot.
        """
        slots = max(1, min(len(self.table_paths), self.merge_files // 4))
        return list(self.table_paths).index(name) % slots == self.commits % slots

    def _checkpoint(self, versions: Mapping[str, int]) -> None:
        """Checkpoint, in the background, each table whose commit passed a checkpoint boundary without
        one being written: of the boundary version itself, which no commit in flight touches. A table
        checkpointed too recently waits for a later boundary."""
        due = []
        now = self.clock()
        for name, version in versions.items():
            boundary = version - (version + 1) % CHECKPOINT_INTERVAL
            if boundary < 0 or boundary <= self.checkpointed.get(name, -1):
                continue
            if now < self._next_checkpoint.get(name, now) or name in self._writing:
                continue
            self._next_checkpoint[name] = now + self.checkpoint_seconds
            self.checkpointed[name] = boundary
            path = self.table_paths[name]
            if not (path / checksums.LOG_DIR / f"{boundary:020d}.checkpoint.parquet").exists():
                due.append((name, boundary))  # one stat per table per interval when the commits wrote theirs
                self._writing.add(name)
        if not due:
            return
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results-store-checkpoint")
        # A live run lasts days: keep only the checkpoints still being written.
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._background.submit(self._write_checkpoints, due))

    def _write_checkpoints(self, due: Sequence[tuple[str, int]]) -> None:
        for name, boundary in due:
            started = monotonic()  # what it took, in real time whatever ``clock`` is
            try:
                made = delta_tables.checkpoint(self.table_paths[name], boundary)
            except Exception as exc:  # the commit stands; a missing checkpoint only costs log replay
                self.errors.append(f"checkpoint {name} at {boundary}: {exc}")
                continue
            finally:
                self._writing.discard(name)
                ended = self.clock()
                self._next_checkpoint[name] = max(self._next_checkpoint.get(name, ended),
                                                  ended + self.checkpoint_cost_factor * (monotonic() - started))
            if made is not None:
                self.checkpoints.append((name, made))

    def wait_checkpoints(self) -> None:
        """Wait for the checkpoints being written (a run's end; tests)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Wait for the checkpoints being written and let the background thread go."""
        self.wait_checkpoints()
        if self._background is not None:
            self._background.shutdown(wait=True)
            self._background = None

    def compact_finished_days(self, today: date) -> list[dict[str, Any]]:
        """Compact the other live runs' days before ``today`` that are still in more than one file.

        Housekeeping on behalf of runs that ended with their day: a failure (another process
        compacting the same run at once) is noted in ``errors`` and left to the nightly, never
        raised into this run's collection.
        """
        midnight = int(datetime.combine(today, time.min, UTC).timestamp() * 1_000_000)
        actions: list[dict[str, Any]] = []
        for name, path in self.table_paths.items():
            if not delta_tables.table_exists(path):
                continue
            for run_id, files in delta_tables.table_files(path).runs():
                if run_id == self.run_id:
                    continue
                over = [f for f in files if not Path(f.path).name.startswith(delta_tables.COMPACTED_PREFIX)
                        and (f.num_records == 0 or (f.max_timestamp_us is not None and f.max_timestamp_us < midnight))]
                if len(over) < 2:
                    continue
                try:
                    result = delta_tables.compact_run(path, run_id, compression=self.compression, select="uncompacted",
                                                      before_us=midnight)
                except Exception as exc:
                    self.errors.append(f"{name} {run_id}: {exc}")
                    continue
                actions.append({"table": name, "run_id": run_id, "step": "finished day", **result})
        return actions


def last_timestamp_us(table: pa.Table | None) -> int | None:
    """The newest ``timestamp`` of a batch's table in µs since the epoch (None: no rows)."""
    if table is None or not table.num_rows or "timestamp" not in table.column_names:
        return None
    newest = pc.max(table.column("timestamp").cast(pa.timestamp("us", "UTC")).cast(pa.int64())).as_py()
    return None if newest is None else int(newest)
