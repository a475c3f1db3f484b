"""Re-deriving a run's result tables from its ``raw_snapshots``, with new parameters.

Under a new run_id the snapshots are replayed through a fresh ``ResultsStore`` (a new run whose
``parent_run_id`` is the source). In place, the re-derived rows are streamed into new files of the
run's partition, and each result table's partition is then replaced in one commit (the new files
added, the old ones removed, the run's watermark recorded: ``delta_tables.replace_run_files``), so the
previous version stays readable by time travel; the runs registry records the table versions before
and after. Both are idempotent. An in-place rerun that fails part-way leaves each table whole, at its
old version or its new one, and is not recorded; running it again completes it.

What a rerun guarantees (nothing lost, nothing mixed, nothing damaged spread):

- **One writer per run.** An in-place rerun holds the run's lock (the one ``ResultsStore`` holds:
  :func:`results_store.runs.run_lock_path`) from its first read to its registry record; a rerun
  into a new run is written by a ``ResultsStore``, which holds the new run's lock. A lock held by
  another writer is not waited for: the rerun is refused at once (RST-301, "is being written"),
  since a rerun queued behind a writer would re-derive something other than what was asked for.
- **Only finished runs.** A backtest or ingest whose latest status is not ``finished`` (still
  writing, interrupted: ``running`` with its lock free, or ``failed``) is refused in place and as a
  new run (RST-301): its raw snapshots are only the part it stored, and the rerun would record that
  part as the whole run. Resume it first (the same command, the same ``--run-id``). The source of a
  rerun into a new run is locked while its status is checked and its snapshots are read.
- **Live days.** A live run is appended to by every collection and is ``finished`` between them.
  It is rerun in place only once its day is over: the UTC day of its newest stored snapshot ended
  at least ``LIVE_DAY_GRACE`` ago (room for a late or retried last collection), and no collection
  holds its lock. Earlier, an in-place rerun is refused (RST-301): it would fix a partial day as the
  run's result, and with other parameters it would make every later collection of the day fail
  the config check. A live run can always be rerun **as a new run**: a copy of the snapshots stored
  so far, read from one table version without blocking the collections, whose registry record names
  the timesteps it covers.
- **Contract rejections stay.** Snapshots that broke the contract (RST-101) never reach
  ``raw_snapshots``, so no rerun can re-derive them: an in-place rerun carries the run's
  ``snapshot`` quarantine rows into the new quarantine partition. Rule violations (RST-102) are
  re-derived with the rerun's rules.
- **Damaged snapshots are refused.** Before anything is written, every payload's sha256 is checked
  against the ``payload_sha256`` stored with it. One mismatch refuses the whole rerun with RST-005
  (terminal) naming the run and the timesteps; nothing is written. Refused rather than quarantined,
  because a rerun that dropped a damaged timestep would still present itself as the whole run;
  ``results-store checksum verify`` lists the damage, and a backup restores it.

Reading takes the same memory whatever the run's length: the raw snapshots (~1 GB of payloads for
a one-year 1-minute run) are read twice, a thousand at a time, from one table version: once to check
every sha256, then to re-derive them. Writing does too: in place, each chunk's rows go straight into
the tables' new files (a file per ``backtest_batch_size`` timesteps, as the store writes them), and
the commits only name files. (Spooling the rows and letting delta-rs overwrite the partition with them
held another 0.2-0.5 GB per table of a one-year run.)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from results_store import delta_tables
from results_store.batch_writer import BatchWriter, PreparedBatch
from results_store.error_map import storage_errors
from results_store.markdown import markdown_table
from results_store.row_groups import file_index
from results_store.run_lock import RunLock
from results_store.runs import append_run_record, latest_run, run_lock_path
from results_store.store import CHUNK_TIMESTEPS, ResultsStore
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import Compression, ModeConfig, config_hash
from schemas.result_types import ALWAYS_STORED, ResultType
from schemas.settings import StoreSettings, load_settings
from schemas.store_tables import QUARANTINE, QUARANTINE_SCHEMA, RAW_SNAPSHOTS
from schemas.tables import arrow_schema

__all__ = [
    "LIVE_DAY_GRACE",
    "OVERRIDABLE",
    "RawSnapshots",
    "apply_overrides",
    "iter_raw_snapshots",
    "lineage_report",
    "read_raw_snapshots",
    "rederive_run",
    "rederive_run_async",
]

OVERRIDABLE = (
    "result_types", "balance_sheet_assets", "pnl_attribution_types", "delta_tracking_assets",
    "funding_tracking_venues", "dust_tracking_tokens", "leverage_tracking",
)
RERUN_CHUNK = 5_000  # timesteps prepared at a time in place (a ResultsStore chunks a new run itself)
# Raw snapshots decoded at a time: reading a row group in batches of 5,000 payloads peaked ~60 MB
# higher than in batches of 1,000, for the same CPU (a one-year run, 2 KB payloads).
READ_ROWS = 1_000
# Timesteps of a window when the layout is not the store's (see _chunks): each window reads every row
# group overlapping it, so larger windows read less twice, and hold more.
WINDOW_ROWS = 16_384
# After midnight UTC a live day may still get its last snapshots from a collection that runs late
# or is retried; a quarter of an hour covers the every-minute schedule with a wide margin.
LIVE_DAY_GRACE = timedelta(minutes=15)
# The quarantine rows of snapshots that broke the contract: their timesteps are not in raw_snapshots.
CONTRACT_REJECTION = "snapshot"
_SHOWN = 10  # damaged timesteps named in a message (details carry up to 100)


def check_result_types(result_types: Sequence[str | ResultType] | None) -> None:
    """RST-201 in one line, before any work, if ``result_types`` lacks a type every mode stores.

    (The mode's own check would say it too, but only once the rerun is under way, in pydantic's words.)
    """
    if result_types is None:
        return
    given = {ResultType(t) for t in result_types}
    missing = [t.value for t in ALWAYS_STORED if t not in given]
    if missing:
        raise ComponentError("RST-201", f"result_types must include {', '.join(t.value for t in ALWAYS_STORED)} "
                             f"(every mode stores them); missing {', '.join(missing)}")


def table_versions(root: Path, execution_mode: str) -> dict[str, int | None]:
    """Each result and quarantine table's current version (None: not created yet), for a rerun report."""
    names = [*(t.value for t in ResultType), QUARANTINE]
    return {n: delta_tables.version(delta_tables.table_path(root, execution_mode, n)) for n in names}


def apply_overrides(config: ModeConfig, overrides: dict[str, Any] | None) -> ModeConfig:
    """A copy of ``config`` with results_store fields replaced; validated like a mode file."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and k != "strict"}
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ComponentError("RST-201", f"cannot override {unknown}; allowed: {', '.join(OVERRIDABLE)}")
    raw = config.model_dump(mode="json")
    results_store = raw["component_config"]["results_store"]
    results_store.update(overrides)
    if "result_types" in overrides and "leverage_tracking" not in overrides:
        results_store["leverage_tracking"] = "leverage_tracking" in results_store["result_types"]
    try:
        return ModeConfig.model_validate(raw)
    except Exception as exc:
        raise ComponentError("RST-201", f"overrides {overrides} make an invalid config: {exc}",
                             original_exception=exc) from None


@dataclass(frozen=True)
class _Group:
    """One row group of the run's raw_snapshots files: its rows and timesteps as read (not as the statistics say)."""

    path: str
    metadata: pq.FileMetaData
    index: int
    rows: int
    first: int
    last: int
    ordered: bool  # its timesteps strictly increase


@dataclass(frozen=True)
class RawSnapshots:
    """One run's accepted snapshots in one version of ``raw_snapshots``, checked, read chunk by chunk.

    Nothing is held but the row groups' footers: iterating reads the pinned version's files again,
    ``READ_ROWS`` rows at a time (the payloads of a one-year run are ~1 GB). Each payload is checked
    against its sha256 again as it is read (the files are immutable, but a disk may fail meanwhile).
    """

    run_id: str
    path: Path
    version: int
    groups: tuple[_Group, ...]  # by first timestep
    count: int
    first_timestep: int
    last_timestep: int
    last_timestamp: pd.Timestamp

    def __len__(self) -> int:
        return self.count

    @property
    def ordered(self) -> bool:
        """Row group after row group gives strictly increasing timesteps: the layout the store writes."""
        groups = self.groups
        return all(g.ordered for g in groups) and all(b.first > a.last for a, b in itertools.pairwise(groups))

    def __iter__(self) -> Iterator[tuple[int, pd.Timestamp, dict[str, Any]]]:
        """``(timestep, timestamp, results)`` per snapshot in timestep order, decoded a chunk at a time."""
        loads, sha = orjson.loads, hashlib.sha256
        for batch in _chunks(self, _COLUMNS):
            steps = batch.column("timestep").to_pylist()
            stamps = batch.column("timestamp").to_pandas()  # tz-aware UTC pd.Timestamps
            payloads = batch.column("payload").to_pylist()
            digests = batch.column("payload_sha256").to_pylist()
            for step, stamp, payload, digest in zip(steps, stamps, payloads, digests, strict=True):
                if sha(payload).hexdigest() != digest:
                    _refuse_damaged(self.run_id, [step])
                yield step, stamp, loads(payload)


_COLUMNS = ("timestep", "timestamp", "payload", "payload_sha256")


def read_raw_snapshots(root: Path, execution_mode: str, run_id: str) -> RawSnapshots:
    """The run's raw snapshots in the table's current version, every payload checked against its sha256
    first (RST-005 naming the damaged timesteps, before anything is re-derived); nothing is kept but
    where each row group is and which timesteps it holds: iterating reads them again, chunk by chunk."""
    path = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
    listed = delta_tables.table_files(path)
    groups: list[_Group] = []
    damaged: list[int] = []
    last_us = 0
    sha = hashlib.sha256
    for _, files in listed.runs([run_id]):
        for file in files:
            with _reading(path):
                metadata = file_index(file).metadata
            for i in range(metadata.num_row_groups):
                first, last, rows, ordered = -1, -1, 0, True
                for batch in _group_batches(path, file.path, metadata, i, _COLUMNS):
                    steps = batch.column("timestep").to_numpy()
                    if steps.size == 0:
                        continue
                    ordered = ordered and bool(steps[0] > last) and bool(np.all(steps[1:] > steps[:-1]))
                    first = int(steps.min()) if rows == 0 else min(first, int(steps.min()))
                    last, rows = max(last, int(steps.max())), rows + int(steps.size)
                    last_us = max(last_us, int(pc.max(batch.column("timestamp").cast(pa.int64())).as_py()))
                    payloads = batch.column("payload").to_pylist()
                    digests = batch.column("payload_sha256").to_pylist()
                    damaged.extend(int(steps[j]) for j, (payload, digest) in enumerate(zip(payloads, digests, strict=True))
                                   if sha(payload).hexdigest() != digest)
                if rows:
                    groups.append(_Group(file.path, metadata, i, rows, first, last, ordered))
    if damaged:
        _refuse_damaged(run_id, sorted(damaged))
    if not groups:
        raise ComponentError("RST-302", f"run {run_id!r} has no raw snapshots to re-derive from")
    groups.sort(key=lambda g: (g.first, g.last))
    return RawSnapshots(run_id, path, listed.version, tuple(groups), sum(g.rows for g in groups), groups[0].first,
                        max(g.last for g in groups), pd.Timestamp(last_us * 1000, tz="UTC"))


def iter_raw_snapshots(root: Path, execution_mode: str, run_id: str) -> Iterator[tuple[int, pd.Timestamp, dict[str, Any]]]:
    """The run's accepted snapshots in timestep order, checked as :func:`read_raw_snapshots` does."""
    return iter(read_raw_snapshots(root, execution_mode, run_id))


def _reading(path: Path) -> Any:
    """Failures reading the table's files, mapped as ``delta_tables.read``'s are (a damaged page is RST-005)."""
    return storage_errors("read", path)


def _group_batches(path: Path, file: str, metadata: pq.FileMetaData, index: int,
                   columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """One row group's rows, ``READ_ROWS`` at a time, page checksums verified where the file has them;
    the payloads as bytes (the same buffers as the strings: hashed and parsed without decoding).
    Decoded on this thread: Arrow's pool threads held ~40 MB more of a year's payloads, for no gain
    on a machine whose other core writes the tables."""
    with _reading(path):
        reader = pq.ParquetFile(file, metadata=metadata, page_checksum_verification=True)
        for batch in reader.iter_batches(batch_size=READ_ROWS, row_groups=[index], columns=list(columns),
                                         use_threads=False):
            position = batch.schema.get_field_index("payload")
            yield batch if position < 0 else batch.set_column(position, "payload",
                                                              batch.column(position).cast(pa.binary()))


def _chunks(raw: RawSnapshots, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The run's rows in timestep order, at most ``READ_ROWS`` at a time.

    The store's layout (files in timestep order, sorted inside) streams row group after row group.
    Any other (files merged by a Delta optimize interleave their rows) is read in windows of
    timesteps, each reading the row groups that overlap it, kept to the window and sorted.
    """
    if raw.ordered:
        for group in raw.groups:
            yield from _group_batches(raw.path, group.path, group.metadata, group.index, columns)
        return
    for lo, hi in _windows(raw.groups):
        parts = [batch.filter(pc.and_(pc.greater_equal(batch.column("timestep"), lo),
                                      pc.less(batch.column("timestep"), hi)))
                 for group in raw.groups if group.last >= lo and group.first < hi
                 for batch in _group_batches(raw.path, group.path, group.metadata, group.index, columns)]
        if parts:
            window = pa.Table.from_batches(parts).sort_by("timestep").combine_chunks()
            yield from window.to_batches(max_chunksize=READ_ROWS)


def _windows(groups: Sequence[_Group]) -> Iterator[tuple[int, int]]:
    """``[lo, hi)`` timestep ranges cut where row groups start, each of at least ``WINDOW_ROWS`` rows (but the last)."""
    if not groups:
        return
    start, end = groups[0].first, max(g.last for g in groups) + 1
    rows = 0
    for i, group in enumerate(groups):
        rows += group.rows
        following = groups[i + 1].first if i + 1 < len(groups) else None
        if following is not None and rows >= WINDOW_ROWS and start < following:
            yield start, following
            start, rows = following, 0
    yield start, end


def _refuse_damaged(run_id: str, damaged: list[int]) -> NoReturn:
    """RST-005 naming every timestep whose payload no longer hashes to the sha256 stored with it."""
    shown = ", ".join(map(str, damaged[:_SHOWN])) + (f" and {len(damaged) - _SHOWN} more" if len(damaged) > _SHOWN else "")
    raise ComponentError(
        "RST-005",
        f"run {run_id!r}: {len(damaged)} raw snapshot(s) no longer match the sha256 stored with them "
        f"(timestep{'s' if len(damaged) > 1 else ''} {shown}); a rerun re-derives nothing from damaged data, "
        "so nothing was written. `results-store checksum verify` lists the damage; restore raw_snapshots from a backup",
        details={"run_id": run_id, "timesteps": damaged[:100], "damaged": len(damaged)},
    )


def rederive_run(
    *,
    data_dir: Path,
    execution_mode: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    new_run_id: str | None = None,
    strict: bool = False,
    empty_dropped_tables: bool = False,
) -> RunSummary:
    """Re-derive ``run_id``'s result tables from its raw snapshots; see the module docstring for the rules.

    In place, result types that leave out a table holding the run's rows would empty it in a new
    version: refused (RST-201 naming the tables) unless ``empty_dropped_tables``.
    """
    if new_run_id:
        return asyncio.run(rederive_run_async(data_dir=data_dir, execution_mode=execution_mode, run_id=run_id,
                                              overrides=overrides, new_run_id=new_run_id, strict=strict))
    return _rerun_in_place(data_dir, execution_mode, run_id, overrides, strict, empty_dropped_tables)


async def rederive_run_async(
    *,
    data_dir: Path,
    execution_mode: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    new_run_id: str | None = None,
    strict: bool = False,
    empty_dropped_tables: bool = False,
) -> RunSummary:
    """:func:`rederive_run` for callers already inside an event loop (async flows)."""
    if not new_run_id:
        return await asyncio.to_thread(_rerun_in_place, data_dir, execution_mode, run_id, overrides, strict,
                                       empty_dropped_tables)
    if new_run_id == run_id:
        raise ComponentError("RST-201", f"new_run_id {new_run_id!r} is the run being re-derived; leave it out to "
                             "rerun in place, or name another run")
    return await _rerun_as_new_run(data_dir, execution_mode, run_id, new_run_id, overrides, strict)


# ----------------------------------------------------------------------------- what may be rerun
def _source_record(root: Path, execution_mode: str, run_id: str) -> dict[str, Any]:
    record = latest_run(root, execution_mode, run_id)
    if record is None:
        raise ComponentError("RST-302", f"no run {run_id!r} in the {execution_mode} runs registry under {root}")
    return record


def _configure(record: dict[str, Any], overrides: dict[str, Any] | None, data_dir: Path,
               strict: bool) -> tuple[ModeConfig, StoreSettings]:
    """The source run's config with the overrides applied, and the settings to re-derive with."""
    config = apply_overrides(ModeConfig.model_validate(orjson.loads(record["config_json"])), overrides)
    settings = load_settings(config, data_dir=data_dir, strict=strict or bool((overrides or {}).get("strict")))
    return config, settings


@contextmanager
def _writing(root: Path, execution_mode: str, run_id: str, consequence: str) -> Iterator[None]:
    """Hold ``run_id``'s lock, or refuse at once (RST-301) if another writer holds it."""
    lock = RunLock(run_lock_path(root, execution_mode, run_id), timeout_s=0)
    try:
        lock.acquire()
    except ComponentError as busy:
        raise ComponentError(
            "RST-301", f"run {run_id!r} is being written (another writer holds {lock.path}): {consequence}",
            details={"run_id": run_id, "lock": str(lock.path)}, original_exception=busy) from None
    try:
        yield
    finally:
        lock.release()


def _require_finished(record: dict[str, Any], run_id: str) -> None:
    status = record["status"]
    if status == "finished":
        return
    why = "interrupted: no process is writing it" if status == "running" else "it stopped on an error"
    raise ComponentError(
        "RST-301",
        f"run {run_id!r} is not finished (status {status}, {why}); its raw snapshots hold only what it stored "
        f"before, and a rerun would record that part as the whole run. First resume it with the same command "
        f"and --run-id {run_id}; rerun it once it has finished",
        details={"run_id": run_id, "status": status},
    )


def _day_closes(raw: RawSnapshots) -> pd.Timestamp:
    """When a live run's day is over for an in-place rerun: the midnight after its newest snapshot, plus grace."""
    return raw.last_timestamp.floor("1D") + pd.Timedelta(days=1) + LIVE_DAY_GRACE


def _require_day_over(run_id: str, raw: RawSnapshots) -> None:
    closes = _day_closes(raw)
    if pd.Timestamp(datetime.now(UTC)) >= closes:
        return
    raise ComponentError(
        "RST-301",
        f"live run {run_id!r}: its day is not over (newest snapshot {raw.last_timestamp.isoformat()}); a live run is "
        f"appended to until then, and an in-place rerun would fix a partial day as its result. Rerun it in place "
        f"from {closes.isoformat()}, or now as a new run (--new-run-id NEW): a copy of the {len(raw):,} "
        "timesteps stored so far",
        details={"run_id": run_id, "closes_at": closes.isoformat(), "timesteps_so_far": len(raw)},
    )


# ----------------------------------------------------------------------------- as a new run
async def _rerun_as_new_run(data_dir: Path, execution_mode: str, run_id: str, new_run_id: str,
                            overrides: dict[str, Any] | None, strict: bool) -> RunSummary:
    root = load_settings(data_dir=data_dir).root
    record = await asyncio.to_thread(_source_record, root, execution_mode, run_id)
    live = execution_mode == "live"
    if live:
        # A live day's snapshots so far, from one table version: a consistent copy, and the
        # every-minute collections are not held up by it.
        raw = await asyncio.to_thread(read_raw_snapshots, root, execution_mode, run_id)
    else:
        record, raw = await asyncio.to_thread(_read_finished_source, root, execution_mode, run_id)
    config, settings = _configure(record, overrides, data_dir, strict)
    # The store holds the new run's lock for the whole replay but would wait up to its timeout for
    # another writer first; refuse at once instead, as in place.
    await asyncio.to_thread(_check_not_written, root, execution_mode, new_run_id)
    if not live:
        # Stored snapshots wait to be read: a queue of one chunk keeps the worker busy, where the
        # default (10,000) filled up while each 100,000-timestep batch committed: ~40 MB more for a year.
        # (Live keeps its own: a full live queue spills to the WAL.)
        settings = settings.model_copy(update={"queue_size": min(settings.queue_size, CHUNK_TIMESTEPS)})
    store = ResultsStore(config, execution_mode, data_dir=settings.data_dir, run_id=new_run_id,
                         settings=settings, parent_run_id=run_id, commit_metadata={"rerun_of": run_id},
                         # Its identity: the same new run id from another source would mix two runs.
                         run_inputs={"rerun_of": run_id})
    async with store:
        for step, stamp, results in raw:
            results.setdefault("timestep", step)
            await store.store_timestep_results(stamp, results)
    summary = store.summary
    assert summary is not None  # set by a clean exit of the store's context
    open_day = live and pd.Timestamp(datetime.now(UTC)) < _day_closes(raw)
    # Short (listings show it in a column); the parent column names the source run.
    note = f"rerun: timesteps {raw.first_timestep}..{raw.last_timestep}" + (", live day still open" if open_day else "")
    # The store's own records say "started"/"finished"; this one says what the copy covers.
    new_record = await asyncio.to_thread(_source_record, root, execution_mode, new_run_id)
    await asyncio.to_thread(
        append_run_record, root, execution_mode, run_id=new_run_id, mode=config.mode, status=summary.status,
        config_json=config.redacted(), config_hash=config_hash(config),
        started_at=pd.Timestamp(new_record["started_at"]).to_pydatetime(), finished_at=datetime.now(UTC),
        parent_run_id=run_id, row_counts=summary.rows, table_versions=summary.table_versions, note=note)
    return summary


def _read_finished_source(root: Path, execution_mode: str, run_id: str) -> tuple[dict[str, Any], RawSnapshots]:
    """A finished backtest's record and snapshots, read under its lock so that nothing writes it meanwhile."""
    with _writing(root, execution_mode, run_id, "a new run now would copy only the timesteps stored so far; "
                  "rerun it once it has finished"):
        record = _source_record(root, execution_mode, run_id)
        _require_finished(record, run_id)
        return record, read_raw_snapshots(root, execution_mode, run_id)


def _check_not_written(root: Path, execution_mode: str, run_id: str) -> None:
    with _writing(root, execution_mode, run_id, "a rerun into it would mix two writers' snapshots; "
                  "choose another new run id, or wait until it has finished"):
        pass


# ----------------------------------------------------------------------------- in place
def _rerun_in_place(data_dir: Path, execution_mode: str, run_id: str, overrides: dict[str, Any] | None,
                    strict: bool, empty_dropped_tables: bool = False) -> RunSummary:
    root = load_settings(data_dir=data_dir).root
    _source_record(root, execution_mode, run_id)  # an unknown run is refused before any lock file is made
    with _writing(root, execution_mode, run_id, "an in-place rerun now would replace it with only the timesteps "
                  "stored so far; rerun it once it has finished"):
        record = _source_record(root, execution_mode, run_id)  # its state now that nobody else writes it
        _require_finished(record, run_id)
        config, settings = _configure(record, overrides, data_dir, strict)
        emptied = _tables_emptied(root, execution_mode, run_id, config)
        if emptied and not empty_dropped_tables:
            raise ComponentError("RST-201", f"rerunning {run_id} in place with result_types "
                                 f"{[t.value for t in config.results_store.result_types]} would empty "
                                 f"{', '.join(emptied)} in a new version; allow it (empty_dropped_tables, CLI "
                                 "--empty-dropped-tables) or rerun as a new run")
        raw = read_raw_snapshots(root, execution_mode, run_id)
        if execution_mode == "live":
            _require_day_over(run_id, raw)
        return _rederive_in_place(config, settings, execution_mode, run_id, record, root, raw)


def _tables_emptied(root: Path, execution_mode: str, run_id: str, config: ModeConfig) -> list[str]:
    """The result tables holding rows of the run that ``config``'s result types leave out."""
    kept = {t.value for t in config.results_store.result_types}
    paths = {t.value: delta_tables.table_path(root, execution_mode, t.value) for t in ResultType if t.value not in kept}
    return sorted(n for n, p in paths.items() if delta_tables.table_exists(p) and delta_tables.count_rows(p, run_id=run_id))


def _contract_rejections(path: Path, run_id: str) -> pa.Table:
    """The run's quarantine rows of snapshots that broke the contract: a rerun cannot re-derive them."""
    if not delta_tables.table_exists(path):
        return QUARANTINE_SCHEMA.empty_table()
    rows = delta_tables.read(path, run_id=run_id, filter=pc.field("result_type") == CONTRACT_REJECTION)
    return rows.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)


class _NewFiles:
    """The new data files of each table an in-place rerun rewrites, written chunk by chunk before any commit."""

    def __init__(self, paths: dict[str, Path], run_id: str, compression: Compression) -> None:
        self.paths, self.run_id, self.compression = paths, run_id, compression
        self.open: dict[str, delta_tables.RunFile] = {}
        self.closed: dict[str, list[delta_tables.FileAction]] = {n: [] for n in paths}

    def write(self, name: str, data: pa.Table) -> None:
        """Append ``data`` to the table's open file (opened at its first rows: no file of no rows)."""
        if not data.num_rows:
            return
        file = self.open.get(name)
        if file is None:
            file = self.open[name] = delta_tables.open_run_file(self.paths[name], self.run_id, data.schema,
                                                                self.compression)
        with storage_errors(f"write {name}", self.paths[name]):
            file.write(data)

    def rotate(self) -> None:
        """Close the open files: the next rows go to new ones."""
        while self.open:
            name, file = self.open.popitem()
            self.closed[name].append(delta_tables.close_run_file(file))  # deletes the file if it fails

    def take(self, name: str) -> list[delta_tables.FileAction]:
        """The table's closed files, handed to its commit (which deletes them if it certainly did not happen)."""
        return self.closed.pop(name, [])

    def abandon(self) -> None:
        """Delete every file not handed to a commit: no version will refer to them."""
        while self.open:
            self.open.popitem()[1].abandon()
        closed, self.closed = self.closed, {}
        for name, adds in closed.items():
            delta_tables.discard_run_files(self.paths[name], adds)


def _rederive_in_place(config: ModeConfig, settings: StoreSettings, execution_mode: str, run_id: str,
                       record: dict[str, Any], root: Path, raw: RawSnapshots) -> RunSummary:
    started = time.perf_counter()
    names = [t.value for t in config.results_store.result_types] + [QUARANTINE]
    all_result_tables = [t.value for t in ResultType]
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in [*all_result_tables, QUARANTINE]}
    before = {n: delta_tables.version(p) for n, p in paths.items() if delta_tables.table_exists(p)}
    kept = _contract_rejections(paths[QUARANTINE], run_id)
    # The run's tables were committed up to its last timestep, which may be a rejected snapshot after
    # the last raw one; keep that watermark so a later resume does not feed (and reject) it again.
    committed = delta_tables.committed_txn_version(delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS), run_id)
    last_step = max(raw.last_timestep, committed if committed is not None else -1)
    writer = BatchWriter(mode=config, settings=settings, run_id=run_id,
                         table_paths={n: paths[n] for n in names})
    new_files = _NewFiles({n: paths[n] for n in names}, run_id, settings.compression)
    # A new file of each table every backtest batch, as the store writes a backtest (one per 100,000
    # timesteps by default): readers prune the run's files by their statistics as they do a run the store
    # wrote, finalize and later compactions find the layout they expect, and a file's footer and
    # statistics are gathered over a bounded span. (A live day, 1,440 timesteps, is one file, as its own
    # compaction makes it; the live batch size, ~100, would make it hundreds.)
    per_file = settings.backtest_batch_size
    quarantined = kept.num_rows
    in_file = 0  # timesteps in the open files
    chunk: list[Any] = []
    # One thread writes a chunk's tables (pyarrow encodes and compresses outside the GIL) while this one
    # prepares the next: two chunks in memory at most.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results-store-rerun")
    writing: Future[None] | None = None

    def write(prepared: PreparedBatch, rotate: bool) -> None:
        for name in names:
            new_files.write(name, prepared.tables[name])
        if rotate:
            new_files.rotate()

    def flush() -> None:
        nonlocal quarantined, in_file, writing
        # raw_snapshots is not rewritten: its payloads are neither built nor hashed again.
        prepared = writer.prepare(chunk, raw_snapshots=False)
        quarantined += prepared.quarantined
        in_file += len(chunk)
        chunk.clear()
        rotate = in_file >= per_file
        if rotate:
            in_file = 0
        if writing is not None:
            writing.result()
        writing = pool.submit(write, prepared, rotate)

    try:
        try:
            for step, stamp, results in raw:
                chunk.append((step, stamp.value // 1000, stamp, results, 0.0))
                if len(chunk) >= min(RERUN_CHUNK, per_file - in_file):  # a chunk never straddles two files
                    flush()
            if chunk:
                flush()
            if writing is not None:
                writing.result()
        finally:
            pool.shutdown(wait=True)  # nothing is written behind an error's back
            writer.close()
        new_files.write(QUARANTINE, kept)  # the commit below replaces the whole quarantine partition
        new_files.rotate()
        meta = {"run_id": run_id, "rerun": "in_place", "config_hash": config_hash(config)}
        after: dict[str, int] = {}
        for name in names:
            schema = QUARANTINE_SCHEMA if name == QUARANTINE else arrow_schema(name)
            # Each table in one commit: the new files in, the run's old files out, its watermark recorded.
            # The tables committed before a failure keep their new version: a rerun again redoes them all.
            with storage_errors(f"commit {name}", paths[name]):
                after[name] = delta_tables.replace_run_files(
                    paths[name], new_files.take(name), run_id=run_id, last_timestep=last_step, schema=schema,
                    metadata={**meta, "table": name})
    except BaseException:
        new_files.abandon()
        raise
    emptied: list[str] = []
    for name in sorted(set(all_result_tables) - set(names)):
        if delta_tables.count_rows(paths[name], run_id=run_id):
            delta_tables.delete_run(paths[name], run_id)
            emptied.append(name)
            version = delta_tables.version(paths[name])
            if version is not None:
                after[name] = version
    rows = {n: delta_tables.count_rows(paths[n], run_id=run_id) for n in names}
    files = {n: len(delta_tables.data_files(paths[n], run_id=run_id)) for n in names}
    append_run_record(
        root, execution_mode, run_id=run_id, mode=config.mode, status="finished",
        config_json=config.redacted(), config_hash=config_hash(config),
        started_at=pd.Timestamp(record["started_at"]).to_pydatetime(), finished_at=datetime.now(UTC),
        parent_run_id=record.get("parent_run_id") or None, row_counts=rows,
        table_versions={"before": before, "after": after, "emptied": emptied},
        note=f"rerun in place: result_types={[t.value for t in config.results_store.result_types]}; "
             f"{len(raw):,} timesteps re-derived, {kept.num_rows:,} contract rejections (RST-101) kept",
    )
    elapsed = time.perf_counter() - started
    return RunSummary(
        run_id=run_id, mode=config.mode, execution_mode=execution_mode, timesteps_received=len(raw),
        timesteps_written=len(raw), rows=rows, commits=dict.fromkeys(after, 1), quarantined=quarantined,
        elapsed_s=elapsed, throughput=len(raw) / elapsed if elapsed else 0.0,
        table_paths={n: str(paths[n]) for n in names}, table_versions=after, data_files=files,
        parent_run_id=record.get("parent_run_id") or None,
    )


def lineage_report(run_id: str, summary: RunSummary, source: dict[str, Any] | None, record: dict[str, Any] | None,
                   overrides: dict[str, Any], versions_before: dict[str, int | None] | None = None) -> str:
    """Markdown: what was rerun, with which overrides, each table's version before and after, and
    the tables an in-place rerun emptied. ``versions_before`` (:func:`table_versions` read before
    the rerun) gives a new run's "version before", which its registry record does not keep."""
    versions = (record or {}).get("table_versions") or {}
    # In place the registry records {"before": ..., "after": ..., "emptied": [...]}; a new run its versions flat.
    in_place = "after" in versions
    before: dict[str, Any] = versions.get("before", {}) if in_place else dict(versions_before or {})
    after: dict[str, Any] = versions.get("after", versions) if in_place else versions
    emptied: list[str] = list(versions.get("emptied", [])) if in_place else []
    tables = sorted(set(after) | set(summary.rows) | (set(before) & set(after)))
    # A table the rerun created had no version before: "—", never a blank or "None".
    rows = [{"table": name, "version before": _cell(before.get(name)), "version after": _cell(after.get(name)),
             "rows": _cell(summary.rows.get(name))}
            for name in tables]
    lines = [
        f"# Rerun of `{run_id}`",
        "",
        f"- written as: `{summary.run_id}` "
        + (f"(a new run; parent `{run_id}`)" if summary.run_id != run_id else "(new versions of the same run)"),
        f"- lineage: `{(record or {}).get('parent_run_id') or '—'}` → `{summary.run_id}`",
        f"- source run: mode `{(source or {}).get('mode')}`, config `{str((source or {}).get('config_hash'))[:12]}`",
        f"- overrides: {', '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'}",
        f"- snapshots re-derived: {summary.timesteps_received:,}; quarantined rows: {summary.quarantined:,}",
        f"- emptied (result types left out, their rows removed in a new version): {', '.join(emptied) or 'none'}",
        "",
        markdown_table(rows),
        "",
        "Earlier versions stay readable: `results-store show RUN_ID --table TABLE --version N`.",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> Any:
    return "—" if value is None else value
