"""What the store does so that a file it names survives a power cut: its bytes reach the disk
(fsync) before the name that makes it count, and the directory holding that name is synced before
the store reports the write done.

On Linux a new file's data sits in the page cache until writeback; after a power cut a file whose
name survived can be empty (ext4 allocates blocks late). For a Delta table that is a log entry that
does not parse, or one naming a data file that is empty: a table no reader opens. deltalake 1.6's
local store writes and links its files without any fsync (tests/store/test_durable_commits.py
traces it; object_store's ``LocalFileSystem`` can sync only since apache/arrow-rs-object-store#643,
opt-in), so the store syncs what it writes itself and, after a delta-rs commit, what that commit
wrote. Live mode's write-ahead log gives up a snapshot once its commits are reported done, so "done"
must mean on disk. An fsync of a new small file costs ~0.4 ms on these machines; bench/bench_live.py
shows what they add to a live commit.

Checkpoints are not synced: delta-rs writes one and then ``_last_checkpoint`` before the store gets
control, so a sync afterwards would only narrow the window (the kernel's writeback delay, ~30 s) in
which a power cut could leave a torn checkpoint named. ``checksum verify`` names such a checkpoint
(its sha256 is recorded) and ``restore`` puts it back; no commit is lost with it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["sync_dir", "sync_file", "write_synced"]


def sync_file(path: Path | str) -> None:
    """Flush the file's data and metadata to the disk (its name needs ``sync_dir`` of its directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path | str) -> None:
    """Make the names created, renamed or removed in directory ``path`` durable."""
    sync_file(path)  # a directory is opened read-only and fsynced like a file


def write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, on disk before this returns: a file that
    a link or a rename will then name whole."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
