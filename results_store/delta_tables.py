"""The only module that talks to ``deltalake``: the project's Delta verbs.

Write a batch exactly once (application transactions), overwrite a run's partition, read a
version, compact a run, checkpoint, history. Everything else calls these; errors from deltalake,
pyarrow and the OS come back as ``ComponentError`` RST-001 so callers can retry on one type.

Every commit made here is marked (``checksums.COMMIT_MARKER_KEY`` in its commitInfo) and, once it
has landed, recorded in the table's checksum manifest: the sha256 of its log file, its checkpoint
and every data file it added (``results_store.checksums``). The Parquet files written here with
pyarrow (appends, compactions) carry page checksums, so a reader can notice a damaged page too.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from deltalake import (
    CommitProperties,
    DeltaTable,
    PostCommitHookProperties,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaProtocolError, SchemaMismatchError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from results_store import checksums, durable_files, error_map
from results_store.delta_log import FilesGone, LogChanged, LogTail
from results_store.error_map import storage_errors
from results_store.row_groups import DataFile, file_index, read_ordered
from schemas.errors import ComponentError
from schemas.modes import Compression

__all__ = [
    "CHECKPOINT_INTERVAL",
    "COMPACTED_PREFIX",
    "MERGED_PREFIX",
    "PARTITION_COLUMN",
    "SORTED_ROW_GROUP_ROWS",
    "FileAction",
    "RunFile",
    "TableFiles",
    "TableHandle",
    "append_exactly_once",
    "checkpoint",
    "cleanup_log",
    "close_run_file",
    "commit_run_files",
    "committed_txn_version",
    "compact_run",
    "compact_run_sorted",
    "count_rows",
    "data_files",
    "delete_rows",
    "delete_run",
    "discard_run_files",
    "history",
    "merge_appends",
    "open_handle",
    "open_run_file",
    "open_table",
    "overwrite_run",
    "read",
    "replace_run_files",
    "run_app_id",
    "run_dataset",
    "set_log_retention",
    "table_exists",
    "table_files",
    "table_path",
    "version",
    "write_plain",
]

# deltalake's exceptions, mapped here because this is the one module that imports deltalake.
error_map.register(CommitFailedError, "RST-001")  # a concurrent commit won: retry on the new version
error_map.register(SchemaMismatchError, "RST-006")
error_map.register(DeltaProtocolError, "RST-005")  # a log this reader cannot follow: treat as damaged

PARTITION_COLUMN = "run_id"
# A data file written but not yet committed (``close_run_file``), as ``commit_run_files`` takes it.
FileAction = AddAction

# Compact a finished run into files of up to this size; 1M rows of our widest table is ~40 MB.
TARGET_FILE_BYTES = 512 * 1024 * 1024
# Names of the files a compaction writes, so the live policy tells its tiers apart: appends are
# ``part-…``; a merge of a live run's appends is ``merged-…``; a run's (or a live day's) final
# compaction is ``compacted-…``, which later compactions of a live run leave alone.
MERGED_PREFIX = "merged"
COMPACTED_PREFIX = "compacted"
# Page checksums (CRC32 per page) in every Parquet file written here with pyarrow: a reader that
# verifies them (``page_checksum_verification``) notices a damaged page instead of decoding it.
PAGE_CHECKSUMS = True
# Columns whose Parquet statistics no reader uses and that cost the most: a raw or quarantined payload
# (1-2 KB of JSON) stored as min and max of every column chunk made a one-minute live file ~6.8 KB.
NO_PARQUET_STATISTICS = frozenset({"payload"})


def _statistics_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name not in NO_PARQUET_STATISTICS and f.name != PARTITION_COLUMN]


def table_path(root: Path, execution_mode: str, name: str) -> Path:
    """``{root}/{execution_mode}/{name}``: where one table of one execution mode lives."""
    return Path(root) / execution_mode / name


def run_app_id(run_id: str) -> str:
    """The Delta application-transaction id that makes a run's commits idempotent."""
    return f"results-store:{run_id}"


# After each commit delta-rs writes a checkpoint every CHECKPOINT_INTERVAL versions (kept) and, by
# default, looks for expired log files to delete, which lists and stats the whole log: 25-30 ms per commit at 1,500
# versions and growing, 3/4 of a live commit's time. Log clean-up is the nightly retention's job
# (``cleanup_log``), so commits skip it.
_HOOKS = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)
# A commit that leaves its checkpoint to the caller (``commit_run_files(checkpoint=False)``).
_HOOKS_NO_CHECKPOINT = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)

# A checkpoint every 10 versions, not delta-rs's default 100: delta-rs replays every log entry since
# the last checkpoint both to bring a handle up to date and again inside each commit, ~0.35 ms of
# CPU per entry each time. A live table commits every collection, so at the default interval a
# one-file commit cost from 9 to 40 ms of CPU (25 ms on average) as the log grew to the next
# checkpoint, and 5.5-9.5 ms at 10 (commit_run_files of one-row files, 300 commits, process CPU).
# A checkpoint of a run's compacted files is small; readers replay fewer entries too. Tables made
# before this interval keep delta-rs's 100 in their metadata; the live policy checkpoints them every
# CHECKPOINT_INTERVAL versions anyway (results_store/compaction.py).
CHECKPOINT_INTERVAL = 10
_TABLE_PROPERTIES: dict[str, str | None] = {"delta.checkpointInterval": str(CHECKPOINT_INTERVAL)}


def _marked(metadata: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """A fresh commit marker and ``metadata`` (None values dropped) carrying it."""
    marker = checksums.commit_marker()
    return marker, {**{k: v for k, v in (metadata or {}).items() if v is not None},
                    checksums.COMMIT_MARKER_KEY: marker}


def _record(path: Path, after_version: int, marker: str) -> int:
    """Find the commit marked ``marker`` (after ``after_version``), sync what it wrote and record its
    checksums; its version."""
    found, data = checksums.find_commit(path, after_version, marker)
    _sync_commit(path, found, data)
    checksums.record_commit(path, found, data)
    return found


def _sync_commit(path: Path, version: int, log_bytes: bytes) -> None:
    """Put what a delta-rs commit wrote on disk: its data files, its log entry, and the names of both.

    delta-rs writes without fsync (its local object store), so after a power cut its last commit could
    be an empty log entry, or name an empty file. The files the store wrote itself are on disk
    already (``_StatsWriter.close``): a second fsync of them finds nothing to write.
    """
    directories = {path / checksums.LOG_DIR}
    for add in checksums.added_paths(log_bytes):
        local = Path(_local_file(path, add))
        try:
            durable_files.sync_file(local)
        except FileNotFoundError:
            continue  # removed since by another writer's vacuum
        directories.add(local.parent)
    durable_files.sync_file(path / checksums.LOG_DIR / f"{version:020d}.json")
    for directory in directories:
        durable_files.sync_dir(directory)


def table_exists(path: Path) -> bool:
    return DeltaTable.is_deltatable(str(path))


def open_table(path: Path, version: int | None = None) -> DeltaTable | None:
    """The table at ``path`` (optionally at ``version``), or None if there is none yet."""
    try:
        return DeltaTable(str(path), version=version)
    except TableNotFoundError:
        return None


def committed_txn_version(path: Path, run_id: str) -> int | None:
    """The last timestep committed to this table for this run, from its app transaction."""
    table = open_table(path)
    if table is None:
        return None
    return table.transaction_version(run_app_id(run_id))


class TableHandle:
    """A table a writer keeps open between its commits (the batch writer keeps one per table).

    Its appends are written into the log by version (``results_store.delta_log``): what delta-rs
    would write, without listing the log three times per commit. Tables whose protocol asks more
    of a writer than reader 1 / writer 2 without invariants are committed through delta-rs, and so
    is the first commit after another writer changed the schema or protocol (``LogChanged``).
    """

    def __init__(self, path: Path, table: DeltaTable) -> None:
        self.path = path
        self.table = table  # delta-rs' snapshot as opened: the watermarks from before, and the fallback
        self.tail: LogTail | None = None
        self.reopen(table)

    def reopen(self, table: DeltaTable | None = None) -> None:
        """Start again from ``table`` (default: the table as it is now)."""
        self.table = table if table is not None else DeltaTable(str(self.path))
        self._opened_txns: dict[str, int | None] = {}
        self.checkpoint_interval = int(self.table.metadata().configuration.get("delta.checkpointInterval") or 100)
        self.tail = (LogTail(self.path, self.table.version(), list(self.table.metadata().partition_columns))
                     if _appends_by_hand(self.table) else None)
        # The add actions of the files this handle appended by version since its last merge (in commit
        # order), which ``merge_appends`` replaces without listing the table; a new tail forgets them.
        self.unmerged: list[dict[str, Any]] = []

    def forget_unmerged(self) -> None:
        """Stop tracking the appends not merged yet (another merge took them)."""
        if self.tail is not None:
            self.tail.unwatch(str(action["path"]) for action in self.unmerged)
        self.unmerged = []

    @property
    def direct(self) -> bool:
        """True when appends are written into the log here, False when delta-rs commits them."""
        return self.tail is not None

    @property
    def version(self) -> int:
        return self.tail.version if self.tail is not None else self.table.version()

    def committed(self, run_id: str) -> int | None:
        """The run's last committed timestep as far as this handle has read the log."""
        app_id = run_app_id(run_id)
        if self.tail is not None and app_id in self.tail.txns:
            return self.tail.txns[app_id]
        return self.opened_committed(app_id)

    def opened_committed(self, app_id: str) -> int | None:
        """``app_id``'s application-transaction version in the snapshot this handle opened (delta-rs
        replays the log's transactions to answer, so it is asked once per run)."""
        if app_id not in self._opened_txns:
            self._opened_txns[app_id] = self.table.transaction_version(app_id)
        return self._opened_txns[app_id]


def _appends_by_hand(table: DeltaTable) -> bool:
    """Whether a blind append needs nothing a writer must check beyond what ``delta_log`` writes:
    protocol reader 1 / writer 2 (appendOnly, which allows appends, and invariants), no features,
    and no invariant on any column."""
    protocol = table.protocol()
    if protocol.min_reader_version > 1 or protocol.min_writer_version > 2:
        return False
    if protocol.reader_features or protocol.writer_features:
        return False
    return "delta.invariants" not in table.schema().to_json()


def open_handle(path: Path) -> TableHandle | None:
    """The table at ``path`` opened for a writer's commits (``commit_run_files(table=...)``), or None
    if there is none yet."""
    table = open_table(path)
    return TableHandle(Path(path), table) if table is not None else None


# Parquet row groups are buffered whole while they are written, and a row group of raw payloads is
# ~2 KB per row. The default (1M rows) let the compaction of a 1-year run hold ~200 MB more at its
# peak than 131k rows did, and 32k rows took another ~100 MB off (bench/bench_store.py, RSS child).
ROW_GROUP_ROWS = 32_768
# The mode file's codec names as deltalake spells them.
_CODECS: dict[Compression, Literal["UNCOMPRESSED", "SNAPPY", "GZIP", "LZ4", "ZSTD"]] = {
    "zstd": "ZSTD", "snappy": "SNAPPY", "gzip": "GZIP", "lz4": "LZ4", "uncompressed": "UNCOMPRESSED",
}


def _writer_properties(compression: Compression) -> WriterProperties:
    codec: Literal["UNCOMPRESSED", "SNAPPY", "GZIP", "LZ4", "ZSTD"] = _CODECS[compression]
    return WriterProperties(compression=codec, max_row_group_size=ROW_GROUP_ROWS)


def append_exactly_once(
    path: Path,
    data: pa.Table,
    *,
    run_id: str,
    last_timestep: int,
    compression: Compression = "zstd",
    metadata: dict[str, Any] | None = None,
    table: TableHandle | None = None,
) -> int | None:
    """Append one run's ``data`` in one commit that also records ``last_timestep`` for the run.

    Returns the new table version, or None when the table had already committed this run up to
    ``last_timestep`` (a retry after an unclear failure, or a replay after a crash): then nothing
    is written. Callers must pass only rows with timestep > the committed version.

    One file (``open_run_file``) and one commit (``commit_run_files``); the store's batch writer
    calls the two itself, to stream a batch into its file chunk by chunk.
    """
    with storage_errors("append", path):
        if table is not None:
            if table.tail is not None:
                try:
                    table.tail.catch_up()
                except LogChanged:
                    table.reopen()
            committed = table.committed(run_id)
        else:
            committed = committed_txn_version(path, run_id)
        if committed is not None and committed >= last_timestep:
            return None
        file = open_run_file(path, run_id, data.schema, compression)
        try:
            file.write(data)
        except BaseException:
            file.abandon()
            raise
        add = close_run_file(file)
    return commit_run_files(path, [add], run_id=run_id, last_timestep=last_timestep, schema=data.schema,
                            metadata=metadata, table=table)


class RunFile:
    """One Parquet file of one run's partition, written chunk by chunk (each chunk as whole row groups,
    with page checksums) before any commit names it; ``close_run_file`` makes its add action.

    Memory stays at the chunk being written: nothing of an earlier chunk is held, so a batch of any
    size costs what one chunk does. A crash before the commit leaves a file no version refers to: no
    reader sees it, vacuum removes it.
    """

    def __init__(self, path: Path, run_id: str, schema: pa.Schema, compression: Compression) -> None:
        directory = f"{PARTITION_COLUMN}={quote(run_id, safe='')}"
        self.run_id = run_id
        self.path = path
        self.rows = 0
        self._file_schema = pa.schema([f for f in schema if f.name != PARTITION_COLUMN])
        self._writer = _StatsWriter(path, directory, f"part-00000-{uuid.uuid4()}-c000.{compression}.parquet",
                                    self._file_schema, "none" if compression == "uncompressed" else compression,
                                    whole_groups=False)

    def write(self, data: pa.Table) -> None:
        """Append ``data`` (rows of this run, the table's schema with its partition column) to the file."""
        _check_one_run(data, self.run_id, self.path)
        if data.num_rows:
            self._writer.write(data.drop_columns([PARTITION_COLUMN]))
            self.rows += data.num_rows

    def abandon(self) -> None:
        """Close and delete the file: no commit will name it (a failed write, a batch given up)."""
        self._writer.abandon()


def open_run_file(path: Path, run_id: str, schema: pa.Schema, compression: Compression = "zstd") -> RunFile:
    """A new data file in ``run_id``'s partition of the table at ``path`` (rows of ``schema``)."""
    with storage_errors("open a data file", path):
        return RunFile(path, run_id, schema, compression)


def close_run_file(file: RunFile) -> AddAction:
    """Finish ``file`` (its footer, its Delta statistics); the add action that commits it.
    On failure the file is deleted and the error raised."""
    try:
        with storage_errors("write a data file", file.path):
            return file._writer.close(file.run_id, data_change=True)
    except BaseException:
        file.abandon()
        raise


def commit_run_files(
    path: Path,
    files: Sequence[AddAction],
    *,
    run_id: str,
    last_timestep: int,
    schema: pa.Schema,
    metadata: dict[str, Any] | None = None,
    table: TableHandle | None = None,
    checkpoint: bool = True,
) -> int | None:
    """Add ``files`` (written by ``open_run_file``) to the table in one commit that records
    ``last_timestep`` for the run (its application transaction); none: the commit records only that.

    Returns the new version, or None when the table had already committed this run up to
    ``last_timestep``: the files are then not added again. They stay where they are, because they may
    be the very files an attempt whose outcome was unclear (a timeout) committed; if not, no version
    refers to them and vacuum removes them.
    ``table``: a handle (``open_handle``) to reuse across commits. It reads only the log entries after
    its version, so a commit by another writer or by an attempt whose outcome was unclear is seen,
    and it writes the append into the log itself (``TableHandle``); without one, delta-rs commits.
    ``schema``: the table's rows, partition column included (the table is created with it if needed).
    ``checkpoint``: False leaves the checkpoint due at this version to the caller (``checkpoint``), to
    write once the commit's latency no longer counts (the live policy does, results_store/compaction.py).
    """
    with storage_errors("commit", path):
        for _ in range(_REOPENS):
            if table is None or table.tail is None:
                break
            try:
                return _append_by_hand(path, table, table.tail, files, run_id=run_id, last_timestep=last_timestep,
                                       metadata=metadata, with_checkpoint=checkpoint)
            except LogChanged:
                table.reopen()  # delta-rs reads the log as it is now: schema, protocol, latest version
        if table is not None:
            delta_table: DeltaTable | None = table.table
            table.table.update_incremental()
        else:
            delta_table = open_table(path)
        committed = delta_table.transaction_version(run_app_id(run_id)) if delta_table is not None else None
        if committed is not None and committed >= last_timestep:
            return None
        if delta_table is None:
            delta_table = _create_partitioned(path, schema)
        before = delta_table.version()
        marker, custom = _marked(metadata)
        delta_table.create_write_transaction(
            list(files),
            mode="append",
            schema=delta_table.schema(),
            partition_by=[PARTITION_COLUMN],
            commit_properties=CommitProperties(
                custom_metadata=custom,
                app_transactions=[Transaction(run_app_id(run_id), last_timestep)],
            ),
            post_commithook_properties=_HOOKS if checkpoint else _HOOKS_NO_CHECKPOINT,
        )
        version = _record(path, before, marker)
        if table is not None:
            table.reopen()  # from the table as this commit left it
        return version


# Reopenings of a handle within one commit before it is left to delta-rs (each follows another
# writer's schema or protocol change, or a log cleaned up behind the handle).
_REOPENS = 3


def _append_by_hand(path: Path, handle: TableHandle, tail: LogTail, files: Sequence[AddAction], *, run_id: str,
                    last_timestep: int, metadata: dict[str, Any] | None, with_checkpoint: bool) -> int | None:
    """``commit_run_files`` through the handle's log tail; the checkpoint delta-rs would write after it."""
    _, custom = _marked(metadata)
    tail.catch_up()  # first: a log cleaned up behind the handle raises before its old snapshot is asked
    actions = [_add_action(add) for add in files]
    tail.watch(action["path"] for action in actions)  # before the commit: a removal after it is seen
    landed = tail.append(actions, app_id=run_app_id(run_id), txn_version=last_timestep,
                         commit_info=custom, committed=handle.committed(run_id))
    if landed is None:
        tail.unwatch(action["path"] for action in actions)
        return None
    version, data = landed
    handle.unmerged.extend(actions)
    checksums.record_commit(path, version, data)
    if with_checkpoint and (version + 1) % handle.checkpoint_interval == 0:  # where delta-rs' post-commit hook writes one
        checkpoint(path, version)
    return version


def merge_appends(path: Path, handle: TableHandle | None, run_id: str, *, compression: Compression = "zstd",
                  min_files: int = 2) -> dict[str, Any] | None:
    """Merge the files ``handle`` appended by version since its last merge (``handle.unmerged``) into
    one ``merged-…`` file, committed in their place by version; what ``compact_run(select="appended")``
    does, without opening the table or listing its files (delta-rs reads the log for each: 25-30 ms of
    a merge's ~40 at a few hundred versions; ``bench/bench_live.py``). None when it cannot: no
    handle appending by version, fewer than ``min_files`` files it appended, a commit that changed the
    table's metadata, or one that removed some of the files first (``FilesGone``: their rows must not
    come back). The caller then merges through ``compact_run``, which lists what is there.
    """
    if handle is None or handle.tail is None or len(handle.unmerged) < max(min_files, 2):
        return None
    tail = handle.tail
    files = list(handle.unmerged)
    paths = [str(action["path"]) for action in files]
    with storage_errors("compact", path):
        sources = [DataFile(_local_file(path, str(a["path"])), run_id, int(a["size"]), log_path=str(a["path"]))
                   for a in files]
        adds, rows = _rewrite_files(path, run_id, _arrow_schema(handle.table), sources, compression, MERGED_PREFIX)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        removes = [{"path": a["path"], "dataChange": False, "deletionTimestamp": now_ms, "extendedFileMetadata": True,
                    "partitionValues": a["partitionValues"], "size": a["size"]} for a in files]
        _, custom = _marked({"run_id": run_id, "results_store_step": "compact_appended"})
        try:
            version, data = tail.replace([_add_action(add) for add in adds], removes, commit_info=custom)
        except (FilesGone, LogChanged) as refused:  # raised before anything was linked in
            discard_run_files(path, adds)
            handle.forget_unmerged()
            if isinstance(refused, LogChanged):
                handle.reopen()
            return None
        handle.unmerged = handle.unmerged[len(files):]
        tail.unwatch(paths)
        checksums.record_commit(path, version, data)
    return {"numFilesAdded": len(adds), "numFilesRemoved": len(files), "rows": rows, "version": version}


def _local_file(path: Path, log_path: str) -> str:
    """Where a file the log names is on disk: as spelled (the store's own files), or percent-decoded
    (the log spells paths as URIs, and delta-rs writes its files under the decoded names)."""
    local = path / log_path
    return str(local if local.exists() else path / unquote(log_path))


def _add_action(add: AddAction) -> dict[str, Any]:
    """An add action as the Delta log spells it (what delta-rs writes for ``create_write_transaction``)."""
    return {"path": add.path, "partitionValues": dict(add.partition_values), "size": add.size,
            "modificationTime": add.modification_time, "dataChange": add.data_change, "stats": add.stats}


def discard_run_files(path: Path, files: Sequence[AddAction]) -> None:
    """Delete written files that no commit will add (a batch given up, or already committed)."""
    for add in files:  # on disk as their add action names them (the run id percent-encoded)
        (path / add.path).unlink(missing_ok=True)


def _create_partitioned(path: Path, schema: pa.Schema) -> DeltaTable:
    """Create the table (partitioned by run) unless another writer just did."""
    marker, custom = _marked(None)
    try:
        created = DeltaTable.create(str(path), schema, mode="ignore", partition_by=[PARTITION_COLUMN],
                                    configuration=_TABLE_PROPERTIES,
                                    commit_properties=CommitProperties(custom_metadata=custom))
    except Exception:
        # Two runs creating the same table at once: one commit wins, the other opens its result.
        table = open_table(path)
        if table is None:
            raise
        return table
    with contextlib.suppress(ComponentError):  # "ignore" found the table made: its creator records it
        _record(path, -1, marker)
    return created


def _check_one_run(data: pa.Table, run_id: str, path: Path) -> None:
    if data.num_rows and not pc.all(pc.equal(data[PARTITION_COLUMN], run_id)).as_py():
        raise ComponentError("RST-901", f"append to {path}: rows of other runs in a batch of run {run_id!r}",
                             details={"path": str(path)})


def overwrite_run(
    path: Path,
    data: pa.Table | pa.RecordBatchReader,
    *,
    run_id: str,
    last_timestep: int,
    compression: Compression = "zstd",
    metadata: dict[str, Any] | None = None,
) -> int:
    """Replace one run's partition in a single commit; earlier versions stay readable."""
    with storage_errors("overwrite", path):
        marker, custom = _marked(metadata)
        commit = CommitProperties(
            custom_metadata=custom,
            app_transactions=[Transaction(run_app_id(run_id), last_timestep)],
        )
        before = _version_or_none(path)
        if before is not None:
            write_deltalake(str(path), data, mode="overwrite", predicate=f"{PARTITION_COLUMN} = '{_quote(run_id)}'",
                            partition_by=[PARTITION_COLUMN], writer_properties=_writer_properties(compression),
                            commit_properties=commit, post_commithook_properties=_HOOKS)
        else:  # nothing to replace yet; an overwrite with a predicate needs an existing table
            write_deltalake(str(path), data, mode="append", partition_by=[PARTITION_COLUMN],
                            writer_properties=_writer_properties(compression), commit_properties=commit,
                            post_commithook_properties=_HOOKS)
        return _record(path, -1 if before is None else before, marker)


def replace_run_files(
    path: Path,
    files: Sequence[AddAction],
    *,
    run_id: str,
    last_timestep: int,
    schema: pa.Schema,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Replace one run's partition with ``files`` (written by ``open_run_file``) in one commit; its version.

    The commit adds ``files``, removes every data file the run's partition holds now (``dataChange=true``:
    the run's rows change, unlike a compaction's) and records ``last_timestep`` as the run's application
    transaction; earlier versions stay readable. No ``files``: the partition is emptied. A table that does
    not exist yet is created (``schema``: its rows, partition column included) and the files just added.

    Unlike ``overwrite_run`` (delta-rs rewriting a stream of rows: 0.2-0.5 GB more per table of a one-year
    run), nothing is read or rewritten: the files are written chunk by chunk beforehand, in flat memory.
    The caller must be the run's only writer (its lock): the files listed here are the ones removed. A
    concurrent commit to another run's partition that conflicts is retried on the new version, listing
    again. If the call fails, ``files`` are deleted when the commit certainly did not happen; when that
    cannot be told, they stay (no version refers to them unless it landed; vacuum removes them).
    """
    adds = list(files)
    try:
        with storage_errors("replace a run's files", path):
            table = open_table(path)
            if table is None:
                table = _create_partitioned(path, schema)
            attempts = _REPLACE_ATTEMPTS
            while True:
                attempts -= 1
                before = table.version()
                current = table_files(path, version=before).runs([run_id])[0][1]
                now_ms = int(datetime.now(UTC).timestamp() * 1000)
                # The log spells paths percent-encoded and delta-rs encodes what it is given: hand it the decoded path.
                removes = [RemoveAction(unquote(f.log_path), True, now_ms, f.size_bytes, {PARTITION_COLUMN: run_id})
                           for f in current]
                marker, custom = _marked(metadata)
                try:
                    table.create_write_transaction(
                        [*adds, *removes], mode="append", schema=table.schema(), partition_by=[PARTITION_COLUMN],
                        commit_properties=CommitProperties(
                            custom_metadata=custom,
                            app_transactions=[Transaction(run_app_id(run_id), last_timestep)],
                        ),
                        post_commithook_properties=_HOOKS,
                    )
                except CommitFailedError:
                    # Another run's commit conflicted: this one was not written. List the files again on the new version.
                    if attempts <= 0:
                        raise
                    table.update_incremental()
                    continue
                except BaseException:
                    landed = _commit_landed(path, before, marker)
                    if landed:  # it failed after the commit (a post-commit hook): the files are the table's now
                        with contextlib.suppress(Exception):
                            _record(path, before, marker)
                    if landed is not False:
                        adds = []  # committed, or not known: keep them
                    raise
                adds = []  # committed: whatever happens now, they are the table's
                return _record(path, before, marker)
    except BaseException:
        discard_run_files(path, adds)  # nothing refers to them
        raise


# Conflicting commits of other runs retried by ``replace_run_files`` before it gives up (RST-001, transient).
_REPLACE_ATTEMPTS = 3


def _commit_landed(path: Path, before: int, marker: str) -> bool | None:
    """Whether the commit marked ``marker`` is in the log after ``before`` (None: the log cannot be read)."""
    try:
        checksums.find_commit(path, before, marker)
    except ComponentError:  # not in the log (find_commit's only ComponentError)
        return False
    except Exception:
        return None
    return True


def _version_or_none(path: Path) -> int | None:
    table = open_table(path) if table_exists(path) else None
    return None if table is None else table.version()


def write_plain(path: Path, data: pa.Table, *, partitioned: bool = False, merge_schema: bool = False) -> None:
    """Append without an app transaction: for small append-only ledgers (optionally by run_id).

    ``merge_schema``: columns of ``data`` the table lacks are added to it (a ledger that gained a
    nullable column since the table was created); earlier rows read them as null. Only a commit
    that really adds a column changes the table's metadata, so appends still never conflict.
    """
    before = _version_or_none(path)
    marker, custom = _marked(None)
    write_deltalake(str(path), data, mode="append", partition_by=[PARTITION_COLUMN] if partitioned else None,
                    schema_mode="merge" if merge_schema else None,
                    configuration=_TABLE_PROPERTIES if before is None else None,
                    commit_properties=CommitProperties(custom_metadata=custom), post_commithook_properties=_HOOKS)
    with storage_errors("record checksums", path):
        _record(path, -1 if before is None else before, marker)


def delete_run(path: Path, run_id: str) -> dict[str, Any]:
    """Delete one run's rows (a new version; files go only when vacuumed)."""
    return delete_rows(path, f"{PARTITION_COLUMN} = '{_quote(run_id)}'")


def delete_rows(path: Path, predicate: str, *, compression: Compression = "zstd",
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Delete the rows matching a SQL ``predicate`` (a new version; files rewritten or removed, kept until vacuum)."""
    with storage_errors("delete", path):
        table = open_table(path)
        if table is None:
            return {}
        before = table.version()
        marker, custom = _marked(metadata)
        metrics = table.delete(predicate, writer_properties=_writer_properties(compression),
                               commit_properties=CommitProperties(custom_metadata=custom), post_commithook_properties=_HOOKS)
        if int(metrics.get("num_deleted_rows") or 0) or int(metrics.get("num_removed_files") or 0):
            metrics["version"] = _record(path, before, marker)
        return metrics


def _quote(value: str) -> str:
    return value.replace("'", "''")


def read(
    path: Path,
    *,
    run_id: str | None = None,
    version: int | None = None,
    columns: list[str] | None = None,
    filter: pads.Expression | None = None,
) -> pa.Table:
    """Read a table (optionally one run's partition, at a past version).

    Page checksums are verified where the files have them: a damaged page fails the read as RST-005
    (corruption, never retried) instead of decoding into wrong values or a retried RST-001.
    """
    with storage_errors("read", path):
        table = open_table(path, version)
        if table is None:
            raise ComponentError("RST-302", f"no Delta table at {path}", details={"path": str(path)})
        partitions = [(PARTITION_COLUMN, "=", run_id)] if run_id is not None else None
        dataset = table.to_pyarrow_dataset(file_pruning_predicate=partitions)
        return dataset.to_table(columns=columns, filter=filter, fragment_scan_options=_VERIFIED_SCAN)


_VERIFIED_SCAN = pads.ParquetFragmentScanOptions(page_checksum_verification=True, pre_buffer=True)


def count_rows(path: Path, *, run_id: str | None = None) -> int:
    """Rows in the table (or one run's partition); 0 when the table does not exist."""
    table = open_table(path)
    if table is None:
        return 0
    partitions = [(PARTITION_COLUMN, "=", run_id)] if run_id is not None else None
    return int(table.to_pyarrow_dataset(file_pruning_predicate=partitions).count_rows())


def version(path: Path) -> int | None:
    table = open_table(path)
    return None if table is None else table.version()


def history(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    table = open_table(path)
    return [] if table is None else table.history(limit)


CompactSelect = Literal["all", "appended", "uncompacted"]


def compact_run(path: Path, run_id: str, *, compression: Compression = "zstd", min_files: int = 2,
                select: CompactSelect = "all", output: Literal["compacted", "merged"] = "compacted",
                before_us: int | None = None) -> dict[str, Any]:
    """Merge one run's files into one (or a few of ``TARGET_FILE_BYTES``) once ``min_files`` are selected.

    ``select``: every file of the run (a backtest's finalize), only its appends (``appended``, the live
    run's merge past a file-count threshold), or everything but earlier final compactions
    (``uncompacted``, a live day's compaction). ``output`` names the new files' tier. ``before_us``:
    only files whose rows are all older than this (µs since the epoch; the days that are over).

    Rows are streamed file by file in the order the run wrote them (flat memory; a run appended in
    timestep order stays in it, so row-group statistics keep pruning) and written with pyarrow
    with page checksums; the new files and the removal of the old ones are one commit with
    ``dataChange=false``, as Delta optimize makes: readers of any version see the same rows.
    """
    with storage_errors("compact", path):
        table = open_table(path)
        if table is None:
            return {"numFilesAdded": 0, "numFilesRemoved": 0}
        listed = table_files(path, version=table.version())
        files = listed.runs([run_id])[0][1]
        if select == "appended":
            files = [f for f in files if not Path(f.path).name.startswith((MERGED_PREFIX, COMPACTED_PREFIX))]
        elif select == "uncompacted":
            files = [f for f in files if not Path(f.path).name.startswith(COMPACTED_PREFIX)]
        if before_us is not None:  # files of no rows belong to no day: they go with any
            files = [f for f in files if f.num_records == 0
                     or (f.max_timestamp_us is not None and f.max_timestamp_us < before_us)]
        if len(files) < max(min_files, 1) or (len(files) == 1 and select != "all"):
            return {"numFilesAdded": 0, "numFilesRemoved": 0}
        adds, rows = _rewrite_files(path, run_id, listed.schema, files, compression, output)
        _commit_replacement(table, path, run_id, adds, files, step=f"compact_{select}")
        return {"numFilesAdded": len(adds), "numFilesRemoved": len(files), "rows": rows}


def _rewrite_files(path: Path, run_id: str, schema: pa.Schema, files: Sequence[DataFile], compression: Compression,
                   prefix: str) -> tuple[list[AddAction], int]:
    """Stream ``files`` (in order) into new files of the run's partition; their add actions and the rows."""
    directory = f"{PARTITION_COLUMN}={quote(run_id, safe='')}"
    file_schema = pa.schema([f for f in schema if f.name != PARTITION_COLUMN])
    codec = "none" if compression == "uncompressed" else compression
    adds: list[AddAction] = []
    total = 0
    writer: _StatsWriter | None = None
    try:
        for source in files:
            # Row group by row group: 3.5x faster than iter_batches on a year of raw payloads, and
            # one row group (<= ROW_GROUP_ROWS rows) in memory at a time.
            reader = pq.ParquetFile(source.path)
            for index in range(reader.metadata.num_row_groups):
                if not reader.metadata.row_group(index).num_rows:
                    continue  # an empty file's empty row group: nothing to carry over
                group = reader.read_row_group(index)
                if writer is None:
                    writer = _StatsWriter(path, directory, f"{prefix}-{uuid.uuid4()}.{compression}.parquet", file_schema,
                                          codec)
                writer.write(_conform(group, file_schema))
                total += group.num_rows
                if writer.bytes_written() >= TARGET_FILE_BYTES:
                    adds.append(writer.close(run_id))
                    writer = None
        if writer is not None:
            adds.append(writer.close(run_id))
            writer = None
    except BaseException:
        if writer is not None:
            writer.abandon()
        for add in adds:  # written but never committed: no version refers to them
            (path / add.path).unlink(missing_ok=True)
        raise
    return adds, total


def _conform(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """``batch`` with ``schema``'s columns in its order: columns a file predates (a schema that gained a
    nullable column since) become nulls."""
    columns = []
    for target in schema:
        if target.name in batch.schema.names:
            column = batch.column(target.name)
            columns.append(column if column.type == target.type else column.cast(target.type))
        else:
            columns.append(pa.nulls(batch.num_rows, target.type))
    return pa.Table.from_arrays(columns, schema=schema)


class _StatsWriter:
    """One Parquet file of a compaction: whole row groups, page checksums, and its Delta statistics,
    folded from the row groups' own Parquet statistics once it is written (the columns written
    without them, the payloads, are computed as rows go through)."""

    def __init__(self, path: Path, directory: str, name: str, schema: pa.Schema, codec: str, *,
                 whole_groups: bool = True) -> None:
        """``whole_groups``: buffer rows into row groups of ROW_GROUP_ROWS (a compaction); without it
        each ``write`` goes to the file at once, as row groups of at most that size (a streamed append:
        holding a remainder would keep the whole chunk it slices alive)."""
        self.new_directory = not (path / directory).is_dir()
        if self.new_directory:
            (path / directory).mkdir(parents=True, exist_ok=True)
        self.whole_groups = whole_groups
        self.rel = f"{directory}/{name}"
        self.file = path / directory / name
        self.sink = pa.OSFile(str(self.file), "wb")
        # No page index: readers prune by row group (the appends have none either); it cost ~20% of a rewrite.
        self.writer = pq.ParquetWriter(self.sink, schema, compression=codec, write_page_checksum=PAGE_CHECKSUMS,
                                       write_statistics=_statistics_columns(schema))
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.stats = _Stats(schema)
        self.computed = [n for n in self.stats.names if n in NO_PARQUET_STATISTICS]

    def write(self, part: pa.Table) -> None:
        self.stats.add(part, columns=self.computed)
        if not self.whole_groups:
            self.writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
            return
        self.pending.append(part)
        self.pending_rows += part.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush(whole_groups=True)

    def _flush(self, *, whole_groups: bool = False) -> None:
        """Write what is pending; with ``whole_groups``, only whole row groups (the rest waits)."""
        if not self.pending_rows:
            return
        merged = pa.concat_tables(self.pending)
        cut = self.pending_rows - self.pending_rows % ROW_GROUP_ROWS if whole_groups else self.pending_rows
        if cut:
            self.writer.write_table(merged.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
        self.pending, self.pending_rows = ([merged.slice(cut)], self.pending_rows - cut) if cut < self.pending_rows \
            else ([], 0)

    def bytes_written(self) -> int:
        return int(self.sink.tell())

    def close(self, run_id: str, *, data_change: bool = False) -> AddAction:
        """The file's add action: ``data_change`` for new rows (an append), not for rows moved (a compaction)."""
        self._flush()
        self.writer.close()
        self.sink.close()
        # On disk, and named there, before any commit refers to it (results_store/durable_files.py).
        durable_files.sync_file(self.file)
        durable_files.sync_dir(self.file.parent)
        if self.new_directory:
            durable_files.sync_dir(self.file.parent.parent)
        self.stats.fold_parquet(self.file, skip=self.computed)
        stat = self.file.stat()
        return AddAction(self.rel, stat.st_size, {PARTITION_COLUMN: run_id}, int(stat.st_mtime * 1000), data_change,
                         json.dumps(self.stats.to_json()))

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            self.sink.close()
        self.file.unlink(missing_ok=True)


# Longer strings are cut in the statistics (a JSON payload would otherwise be copied into the log
# twice per file): the minimum as its prefix, the maximum as its prefix and U+10FFFF, still bounds.
STATS_STRING_CHARS = 32


class _Stats:
    """Delta file statistics (records; min, max and nulls of every column), gathered batch by batch.

    Every column gets its min and max, or none does: delta-rs turns a column missing from
    ``minValues`` into a pyarrow guarantee ``col >= null``, which drops the file from any scan
    filtered on that column (a quarantine read by ``result_type`` found nothing in files whose
    statistics covered only ``timestep``). A column that cannot have them (a nested type, a
    non-finite float) therefore leaves the file with its record count only: never pruned, never lost.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.names = [f.name for f in schema if f.name != PARTITION_COLUMN]
        self.usable = all(_statable(schema.field(n).type) for n in self.names)
        self.rows = 0
        self.low: dict[str, Any] = {}
        self.high: dict[str, Any] = {}
        self.nulls: dict[str, int] = dict.fromkeys(self.names, 0)

    def add(self, data: pa.Table, columns: Sequence[str] | None = None) -> None:
        """Count ``data``'s rows and fold the min, max and nulls of ``columns`` (default: all) into the file's."""
        if columns is None:
            self.rows += data.num_rows
        if not data.num_rows:
            return
        for name in self.names if columns is None else columns:
            column = data.column(name)
            self.nulls[name] += column.null_count
            if not self.usable or column.null_count == len(column):
                continue
            low, high = (v.as_py() for v in pc.min_max(column).values())
            self._fold(name, low, high)

    def _fold(self, name: str, low: Any, high: Any) -> None:
        if isinstance(low, float) and not (math.isfinite(low) and math.isfinite(high)):
            self.usable = False
            return
        if name not in self.low or low < self.low[name]:
            self.low[name] = low
        if name not in self.high or high > self.high[name]:
            self.high[name] = high

    def fold_parquet(self, file: Path, *, skip: Sequence[str]) -> None:
        """Take the rows and the other columns' min, max and nulls from a written file's row-group statistics.

        A column whose row groups carry no min/max (a value longer than Parquet's statistics limit)
        is read back from the file and computed.
        """
        metadata = pq.ParquetFile(file).metadata
        self.rows = metadata.num_rows
        index = {metadata.schema.column(i).name: i for i in range(metadata.num_columns)}
        missing = []
        for name in self.names:
            if name in skip:
                continue
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(index[name]).statistics
                rows = metadata.row_group(group).num_rows
                if stats is None:
                    missing.append(name)
                    break
                self.nulls[name] += stats.null_count
                if stats.has_min_max:
                    self._fold(name, stats.min, stats.max)
                elif stats.null_count < rows:
                    missing.append(name)
                    break
        for name in missing:
            self.nulls[name] = 0
            self.low.pop(name, None)
            self.high.pop(name, None)
            self.add(pq.read_table(file, columns=[name]), columns=[name])

    def to_json(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"numRecords": self.rows}
        if self.usable and self.rows:
            stats.update(minValues={k: _stat(v, upper=False) for k, v in self.low.items()},
                         maxValues={k: _stat(v, upper=True) for k, v in self.high.items()},
                         nullCount=self.nulls)
        return stats


def _statable(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_timestamp(kind)
                or pa.types.is_date(kind))


def _stat(value: Any, *, upper: bool) -> Any:
    """A min/max value as Delta statistics spell it: timestamps as ISO 8601 UTC with 'Z', long strings cut."""
    if isinstance(value, datetime):
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # naive: UTC already
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, str) and len(value) > STATS_STRING_CHARS:
        return value[:STATS_STRING_CHARS] + ("\U0010ffff" if upper else "")
    return value


def _commit_replacement(table: DeltaTable, path: Path, run_id: str, adds: Sequence[AddAction],
                        removed: Sequence[DataFile], *, step: str) -> int:
    """Commit new files that hold exactly the rows of ``removed`` (``dataChange=false``), and record them."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    # The log spells paths percent-encoded and delta-rs encodes what it is given: hand it the decoded path.
    removes = [RemoveAction(unquote(f.log_path), False, now_ms, f.size_bytes, {PARTITION_COLUMN: run_id})
               for f in removed]
    before = table.version()
    marker, custom = _marked({"run_id": run_id, "results_store_step": step})
    try:
        table.create_write_transaction([*adds, *removes], mode="append", schema=table.schema(),
                                       partition_by=[PARTITION_COLUMN],
                                       commit_properties=CommitProperties(custom_metadata=custom),
                                       post_commithook_properties=_HOOKS)
    except BaseException:
        for add in adds:  # the commit did not happen: nothing refers to the new files
            (path / add.path).unlink(missing_ok=True)
        raise
    return _record(path, before, marker)


def checkpoint(path: Path, version: int | None = None) -> int | None:
    """Write a checkpoint of the latest version (or of ``version``) unless it has one, and record it;
    the version, or None. A checkpoint of a past version is safe while others commit: it reads only
    the log up to that version, and its file is one no commit writes or records."""
    with storage_errors("checkpoint", path):
        table = open_table(path, version)
        if table is None:
            return None
        current = table.version()
        name = f"{current:020d}.checkpoint.parquet"
        if (path / checksums.LOG_DIR / name).exists():
            return None
        table.create_checkpoint()
        # Not synced (results_store/durable_files.py): delta-rs writes the checkpoint and then
        # ``_last_checkpoint`` before this could, so a sync would only narrow the window in which a power
        # cut leaves a torn checkpoint named, and the live policy's checkpoints, synced, put a WAL
        # acknowledgement's p99 at 1 snapshot/s over 5 ms in 3 runs of 5 (0 of 4 without).
        if not (path / checksums.LOG_DIR / name).exists():
            return None
        checksums.record_files(path, [f"{checksums.LOG_DIR}/{name}"], kind="checkpoint", version=current)
        return current


def set_log_retention(path: Path, hours: float) -> bool:
    """Keep the table's log files for ``hours`` (``delta.logRetentionDuration``); True when it changed.

    Delta's default is 30 days. A live table gains 1,440 log files a day and delta-rs lists the log
    on every commit (a commit took 22 ms at 100 versions, 45 ms at 1,500), so the log is kept as
    long as time travel needs it and no longer.
    """
    wanted = f"interval {int(hours)} hours"
    with storage_errors("set the log retention", path):
        table = open_table(path)
        if table is None or table.metadata().configuration.get("delta.logRetentionDuration") == wanted:
            return False
        before = table.version()
        marker, custom = _marked({"results_store_step": "log_retention"})
        table.alter.set_table_properties({"delta.logRetentionDuration": wanted},
                                         commit_properties=CommitProperties(custom_metadata=custom),
                                         post_commithook_properties=_HOOKS)
        _record(path, before, marker)
        return True


def cleanup_log(path: Path) -> None:
    """Let delta-rs remove log files past the table's log retention that a checkpoint covers."""
    with storage_errors("clean up the Delta log", path):
        table = open_table(path)
        if table is not None:
            table.cleanup_metadata()


def data_files(path: Path, *, run_id: str | None = None) -> list[str]:
    """The data files of the current version (optionally of one run)."""
    table = open_table(path)
    if table is None:
        return []
    partitions = [(PARTITION_COLUMN, "=", run_id)] if run_id is not None else None
    return list(table.to_pyarrow_dataset(file_pruning_predicate=partitions).files)


# The read side (queries, exports, reports) and a compaction that keeps a run in timestep order.

# Open handles at their latest known version, and the file lists of versions read (a version's files
# never change, so a cached list is exact until the files are vacuumed).
_LATEST: dict[str, DeltaTable] = {}
_FILES: OrderedDict[tuple[str, int], TableFiles] = OrderedDict()
_FILES_CACHED = 256
_READ_LOCK = threading.Lock()
# Row groups of a sorted compaction. One day of a 1-minute run is 1,440-15,840 rows per table: at
# 16k rows a one-day query reads 1-2 row groups, ≤ 3% of a one-year table even with one row per step.
SORTED_ROW_GROUP_ROWS = 16_384


@dataclass(frozen=True)
class TableFiles:
    """The data files of one table version, with the table's Arrow schema (``run_id`` included)."""

    path: Path
    version: int
    schema: pa.Schema
    files: tuple[DataFile, ...]

    def runs(self, run_ids: Sequence[str] | None = None) -> list[tuple[str, list[DataFile]]]:
        """(run_id, its files by first timestep) for ``run_ids`` in the order given (default: every run, sorted)."""
        by_run: dict[str, list[DataFile]] = {}
        for file in self.files:
            by_run.setdefault(file.run_id, []).append(file)
        order = list(dict.fromkeys(run_ids)) if run_ids is not None else sorted(by_run)
        return [(run, sorted(by_run.get(run, []), key=lambda f: (f.min_timestep is None, f.min_timestep or 0)))
                for run in order]


def table_files(path: Path, *, version: int | None = None, as_of: datetime | None = None) -> TableFiles:
    """The data files of the latest version, of ``version``, or of the last version committed at or before ``as_of``.

    The latest version is found through a handle kept open per table and refreshed only when the
    next commit's log file exists: one ``stat`` instead of listing the log, which took 1-5 ms per
    table per query on a one-year run.
    """
    key = str(Path(path).absolute())
    with storage_errors("read", path):
        if as_of is not None:
            version = _version_at(key, as_of)
        elif version is None:
            version = _latest_version(key)
        with _READ_LOCK:
            cached = _FILES.get((key, version))
            if cached is not None:
                _FILES.move_to_end((key, version))
                return cached
        table = open_table(Path(key), version)
        if table is None:
            raise ComponentError("RST-302", f"no Delta table at {path}", details={"path": str(path)})
        listed = TableFiles(Path(key), version, _arrow_schema(table), _data_files(table, key))
        with _READ_LOCK:
            _FILES[(key, version)] = listed
            while len(_FILES) > _FILES_CACHED:
                _FILES.popitem(last=False)
        return listed


def _latest_version(key: str) -> int:
    with _READ_LOCK:
        handle = _LATEST.get(key)
        if handle is not None:
            if (Path(key) / "_delta_log" / f"{handle.version() + 1:020d}.json").exists():
                handle.update_incremental()
            return handle.version()
    handle = open_table(Path(key))
    if handle is None:
        raise ComponentError("RST-302", f"no Delta table at {key}", details={"path": key})
    with _READ_LOCK:
        _LATEST[key] = handle
    return handle.version()


def _version_at(key: str, as_of: datetime) -> int:
    table = open_table(Path(key))
    if table is None:
        raise ComponentError("RST-302", f"no Delta table at {key}", details={"path": key})
    try:
        table.load_as_version(as_of)
    except Exception as exc:  # deltalake raises a bare DeltaError for a time before the first commit
        raise ComponentError("RST-302", f"{key} has no version committed at or before {as_of.isoformat()}",
                             details={"path": key, "as_of": as_of.isoformat()}) from exc
    return table.version()


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    protocol = table.protocol()
    features = set(protocol.reader_features or ())
    if features & {"deletionVectors", "columnMapping"}:
        # Files alone do not say which rows are live or what columns are called: not this reader's job.
        raise ComponentError("RST-006", f"table uses reader features {sorted(features)} this reader does not support")
    return pa.schema(table.schema().to_arrow())


def _data_files(table: DeltaTable, key: str) -> tuple[DataFile, ...]:
    actions = pa.table(table.get_add_actions(flatten=True))
    names = set(actions.column_names)

    def column(name: str) -> list[Any]:
        return actions.column(name).to_pylist() if name in names else [None] * actions.num_rows

    def micros(name: str) -> list[int | None]:
        if name not in names:
            return [None] * actions.num_rows
        values: list[int | None] = actions.column(name).cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_pylist()
        return values

    files = []
    for log_path, size, records, run, step_lo, step_hi, ts_lo, ts_hi in zip(
            column("path"), column("size_bytes"), column("num_records"), column(f"partition.{PARTITION_COLUMN}"),
            column("min.timestep"), column("max.timestep"), micros("min.timestamp"), micros("max.timestamp"),
            strict=True):
        files.append(DataFile(_local_file(Path(key), log_path), str(run), int(size), records, step_lo, step_hi,
                              ts_lo, ts_hi, log_path))
    return tuple(files)


def compact_run_sorted(
    path: Path,
    run_id: str,
    *,
    order_by: Sequence[str] = ("timestep",),
    compression: Compression = "zstd",
    row_group_rows: int = SORTED_ROW_GROUP_ROWS,
    force: bool = False,
) -> dict[str, Any]:
    """Rewrite one run's files as one file in ``order_by`` order, row groups of ``row_group_rows``.

    A run already in one sorted file is left alone unless ``force`` (e.g. to change its row groups).

    Delta ``optimize`` (``compact_run``) interleaves the files it merges: a compacted one-year run
    had row groups spanning 15,000-45,000 timesteps each, so min/max statistics could not skip
    them and a one-day query read most of the run. This rewrite streams the run window by window
    in timestep order (flat memory) and commits the new file and the removal of the old ones in
    one commit with ``dataChange=false``, as optimize does: readers of any version see the same rows.
    """
    with storage_errors("compact", path):
        table = open_table(path)
        if table is None:
            return {"numFilesAdded": 0, "numFilesRemoved": 0}
        listed = table_files(path, version=table.version())
        files = listed.runs([run_id])[0][1]
        if not files or (len(files) == 1 and _already_sorted(files[0]) and not force):
            return {"numFilesAdded": 0, "numFilesRemoved": 0}
        directory = f"{PARTITION_COLUMN}={quote(run_id, safe='')}"
        name = f"part-00000-{uuid.uuid4()}-c000.{compression}.parquet"
        target = path / directory / name
        file_schema = pa.schema([f for f in listed.schema if f.name != PARTITION_COLUMN])
        rows = 0
        stats = _Stats(file_schema)
        pending: list[pa.Table] = []
        pending_rows = 0
        with pq.ParquetWriter(target, file_schema, compression="none" if compression == "uncompressed" else compression,
                              write_page_index=True, write_page_checksum=PAGE_CHECKSUMS,
                              write_statistics=_statistics_columns(file_schema)) as writer:
            for window in read_ordered([(run_id, files)], listed.schema, order_by=order_by):
                part = window.drop_columns([PARTITION_COLUMN])
                stats.add(part)
                rows += part.num_rows
                pending.append(part)
                pending_rows += part.num_rows
                # Whole row groups only, so that every row group but the last has row_group_rows rows.
                if pending_rows >= row_group_rows:
                    merged = pa.concat_tables(pending)
                    cut = pending_rows - pending_rows % row_group_rows
                    writer.write_table(merged.slice(0, cut), row_group_size=row_group_rows)
                    pending, pending_rows = [merged.slice(cut)], pending_rows - cut
            if pending_rows:
                writer.write_table(pa.concat_tables(pending), row_group_size=row_group_rows)
        stat = target.stat()
        add = AddAction(f"{directory}/{name}", stat.st_size, {PARTITION_COLUMN: run_id}, int(stat.st_mtime * 1000),
                        False, json.dumps(stats.to_json()))
        _commit_replacement(table, path, run_id, [add], files, step="compact_sorted")
        return {"numFilesAdded": 1, "numFilesRemoved": len(files), "rows": rows}


def _already_sorted(file: DataFile) -> bool:
    """A file whose row groups follow each other in timestep order (the store's appends, a sorted compaction)."""
    index = file_index(file)
    return bool((index.step_min[1:] >= index.step_max[:-1]).all())


# Streaming reads for the audit: a run's partition scanned window by window, never read whole.

def run_dataset(path: Path, run_id: str, *, dictionary_columns: Sequence[str] = ()) -> pads.Dataset:
    """One run's partition (current version) as a pyarrow dataset, to scan by row group, batch or filter.

    ``dictionary_columns``: string columns to read as dictionary arrays, as Parquet stores them
    (low-cardinality names such as venue or metric: no string per row is built). Errors while
    scanning come from pyarrow (a file that cannot be decoded) and are the caller's to classify.
    """
    with storage_errors("read", path):
        table = open_table(path)
        if table is None:
            raise ComponentError("RST-302", f"no Delta table at {path}", details={"path": str(path)})
        options = pads.ParquetReadOptions(dictionary_columns=set(dictionary_columns)) if dictionary_columns else None
        return table.to_pyarrow_dataset(file_pruning_predicate=[(PARTITION_COLUMN, "=", run_id)],
                                        parquet_read_options=options)

