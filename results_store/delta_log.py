"""A Delta table's log followed and appended to by version, never by listing it.

delta-rs lists the whole ``_delta_log`` directory three times per commit on a local file system
(to bring a handle up to date, inside the commit, and after it): a local listing enumerates every
entry, however few are new (delta-io/delta-kernel-rs#2335, open). A live table commits every
snapshot, so its commits got slower as its log grew: 13 ms of CPU for a one-file commit at 100
versions, 16 ms at 1,000, 30 ms at 3,000 and 48 ms at 6,000 (``bench/bench_log_growth.py``), and a
live day at one snapshot a second is 86,400 versions.

``LogTail`` follows a log the way a reader of the protocol may: from a version it knows, it reads
``<version + 1>.json`` until there is none. ``append`` writes a blind append (the commitInfo, add
actions and application transaction that delta-rs writes for ``mode="append"``) as the next
version with put-if-absent, a hard link to a file already complete, which is how the local
object store delta-rs uses lands its own commits; a version another writer took first is read
and the append tried as the one after. So a commit's cost no longer depends on the log's length.

A live run's merges go this way too (``replace``): the files its writer appended, rewritten into
one and swapped in with ``dataChange`` false, refused (``FilesGone``) when another commit removed
any of them since they were committed, which the tail sees as it reads the log.

Only these, and only to tables whose protocol asks nothing more of a writer
(reader version 1, writer version 2 at most, no column invariants): the module's caller,
``delta_tables``, sends anything else through delta-rs, and ``LogChanged`` tells it when another
writer changed the table's schema or protocol under it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from results_store import durable_files

__all__ = ["LAST_CHECKPOINT", "LOG_DIR", "FilesGone", "LogChanged", "LogTail", "log_name"]

LOG_DIR = "_delta_log"
LAST_CHECKPOINT = "_last_checkpoint"
# Who wrote the commit, in the commitInfo fields delta-rs fills with its own name.
ENGINE = "results-store"


def log_name(version: int) -> str:
    return f"{version:020d}.json"


class LogChanged(Exception):
    """The tail cannot follow the log by hand past its version: a later commit changed the table's
    metadata or protocol, or the entries after it were cleaned up behind a newer checkpoint (a tail
    left unused past the log's retention). The caller commits through delta-rs and reopens."""

    def __init__(self, path: Path, version: int, why: str) -> None:
        super().__init__(f"{path}: {why} (version {version})")
        self.version = version


class FilesGone(Exception):
    """Files a writer meant to replace were removed by another commit first (``LogTail.replace``)."""

    def __init__(self, path: Path, version: int, why: str) -> None:
        super().__init__(f"{path}: {why} (version {version})")
        self.version = version


@dataclass
class LogTail:
    """One writer's position in a table's log: the last version it has read or written, and the
    application-transaction versions (app id -> version) it has seen; those from before it
    opened come from the snapshot it opened (``known``), and are looked up there on demand."""

    path: Path
    version: int
    partition_by: list[str]
    txns: dict[str, int] = field(default_factory=dict)
    # Files this writer may replace (``watch``), and those of them another commit has removed since.
    _watched: set[str] = field(default_factory=set, repr=False)
    _gone: set[str] = field(default_factory=set, repr=False)

    @property
    def log(self) -> Path:
        return self.path / LOG_DIR

    def catch_up(self) -> list[tuple[int, bytes]]:
        """Read the versions committed after this one, in order; their (version, bytes)."""
        read: list[tuple[int, bytes]] = []
        while True:
            following = self.version + 1
            try:
                data = (self.log / log_name(following)).read_bytes()
            except FileNotFoundError:
                self._check_not_cleaned_up()
                return read
            for line in data.splitlines():
                if not line.strip():
                    continue
                action = orjson.loads(line)
                if "txn" in action:
                    self.txns[str(action["txn"]["appId"])] = int(action["txn"]["version"])
                elif "remove" in action:
                    if self._watched and (path := str(action["remove"]["path"])) in self._watched:
                        self._gone.add(path)
                elif "metaData" in action or "protocol" in action:
                    raise LogChanged(self.path, following, "a commit changed the table's metadata or protocol")
            self.version = following
            read.append((following, data))

    def _check_not_cleaned_up(self) -> None:
        """The next version's file is absent: make sure that is because it is not written yet. Log
        clean-up deletes entries only behind a checkpoint, which ``_last_checkpoint`` names (or a
        newer one), so a checkpoint past this tail's version means the entries it has not read are gone."""
        try:
            pointer = orjson.loads((self.log / LAST_CHECKPOINT).read_bytes())
        except FileNotFoundError:
            return
        except orjson.JSONDecodeError:
            return  # being rewritten by a checkpoint writer: it names a version no newer than what exists
        if int(pointer.get("version", -1)) > self.version:
            raise LogChanged(self.path, int(pointer["version"]), "a checkpoint is newer than the entries read")

    def append(self, adds: Sequence[Mapping[str, Any]], *, app_id: str, txn_version: int,
               commit_info: Mapping[str, Any], committed: int | None) -> tuple[int, bytes] | None:
        """Commit ``adds`` (Delta add actions) with the application transaction (``app_id``,
        ``txn_version``) as the next version: its (version, log bytes), or None when the log already
        holds ``app_id`` at ``txn_version`` or later (an earlier attempt landed). ``committed``:
        ``app_id``'s version in the snapshot the tail was opened at (None: none)."""
        lines = [orjson.dumps({"add": add}) for add in adds]
        lines.append(orjson.dumps({"txn": {"appId": app_id, "version": txn_version}}))

        def landed() -> bool:
            seen = self.txns.get(app_id, committed)
            return seen is not None and seen >= txn_version

        version = self._link(lines, commit_info, landed)
        if version is None:
            return None
        self.txns[app_id] = txn_version
        return version

    def watch(self, paths: Iterable[str]) -> None:
        """Note from now on any commit that removes one of ``paths`` (as the log spells them): files
        this writer may replace later (``replace``)."""
        self._watched.update(paths)

    def unwatch(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._watched.discard(path)
            self._gone.discard(path)

    def replace(self, adds: Sequence[Mapping[str, Any]], removes: Sequence[Mapping[str, Any]], *,
                commit_info: Mapping[str, Any]) -> tuple[int, bytes]:
        """Commit ``adds`` in place of ``removes`` (files holding the same rows: ``dataChange`` false
        in both) as the next version; its (version, log bytes).

        Every removed file must be watched (``watch``) since before it was committed: a commit that
        removed one of them first (a delete, a rerun in place, another compaction) raises
        ``FilesGone`` instead, since re-adding its rows would bring back what that commit took out.
        Appends by others in between do not conflict: the rows replaced are the same either way.
        """
        paths = [str(remove["path"]) for remove in removes]
        unwatched = [path for path in paths if path not in self._watched]
        if unwatched:
            raise ValueError(f"{self.path}: replace of files not watched since their commit: {unwatched[:3]}")
        lines = [orjson.dumps({"add": add}) for add in adds] + [orjson.dumps({"remove": r}) for r in removes]

        def refuse() -> bool:
            gone = self._gone.intersection(paths)
            if gone:
                raise FilesGone(self.path, self.version, f"{len(gone)} of the files to replace were removed by "
                                f"another commit, e.g. {sorted(gone)[0]}")
            return False

        version = self._link(lines, commit_info, refuse)
        assert version is not None  # ``refuse`` raises or lets it through
        return version

    def _link(self, actions: list[bytes], commit_info: Mapping[str, Any],
              landed: Callable[[], bool]) -> tuple[int, bytes] | None:
        """Link a log entry of ``actions`` in as the next version, reading any versions committed first;
        None when ``landed()``, asked after each read, says the entry is not needed any more."""
        info = {
            "timestamp": int(time.time() * 1000),
            "operation": "WRITE",
            "operationParameters": {"mode": "Append", "partitionBy": orjson.dumps(self.partition_by).decode()},
            "engineInfo": ENGINE,
            "clientVersion": ENGINE,
            **commit_info,
        }
        data = b"\n".join([orjson.dumps({"commitInfo": info}), *actions]) + b"\n"
        # Complete and on disk before it is linked in: a reader never sees half an entry, and a power cut
        # never leaves an empty one (results_store/durable_files.py). delta-rs names its own staging
        # files so, and the log's readers skip them.
        staged = self.log / f"_commit_{uuid.uuid4()}.json.tmp"
        try:
            durable_files.write_synced(staged, data)
            while True:
                self.catch_up()
                if landed():
                    return None
                target = self.version + 1
                try:
                    os.link(staged, self.log / log_name(target))
                except FileExistsError:
                    continue  # another writer took it: read its entry, try the one after
                self.version = target
                durable_files.sync_dir(self.log)  # the new name: the commit is done once it is on disk
                return target, data
        finally:
            staged.unlink(missing_ok=True)
