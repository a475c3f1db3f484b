"""One mapper from deltalake, pyarrow and OS errors onto the registry: transient ones retried, terminal never."""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake.exceptions import CommitFailedError, SchemaMismatchError

from results_store import delta_tables  # registers deltalake's classes
from results_store.error_map import is_transient, map_error, storage_errors
from schemas.errors import ComponentError


@pytest.mark.parametrize(("exc", "code"), [
    (OSError(errno.ENOSPC, "No space left on device"), "RST-004"),
    (PermissionError(errno.EACCES, "Permission denied"), "RST-004"),
    (OSError(errno.EROFS, "Read-only file system"), "RST-004"),
    (OSError(errno.ENAMETOOLONG, "File name too long"), "RST-004"),
    # delta-rs names the OS error only in its message
    (OSError("Generic LocalFileSystem error: Unable to write: No space left on device (os error 28)"), "RST-004"),
    (OSError(errno.EAGAIN, "Resource temporarily unavailable"), "RST-001"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "RST-001"),
    (TimeoutError("timed out"), "RST-001"),
    (CommitFailedError("Transaction failed: version already exists"), "RST-001"),
    (SchemaMismatchError("Schema error: Invalid data type for Delta Lake"), "RST-006"),
    (pa.ArrowInvalid("Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."),
     "RST-005"),
    (AssertionError("summary is None"), "RST-901"),
    (KeyError("balance_sheet"), "RST-901"),
])
def test_each_failure_gets_its_code_and_only_transient_ones_are_retried(exc, code):
    mapped = map_error(exc, "append", "/data/backtest/balance_sheet")
    assert mapped.error_code == code
    assert mapped.original_exception is exc
    assert "append failed for /data/backtest/balance_sheet" in str(mapped)
    assert is_transient(exc) == (code == "RST-001")


def test_a_real_corrupt_parquet_file_is_corruption_not_a_retried_storage_failure(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"x": list(range(1000))}), path)
    data = bytearray(path.read_bytes())
    data[-12:-8] = b"\xff\xff\xff\x7f"  # footer length points outside the file
    path.write_bytes(bytes(data))
    with pytest.raises(ComponentError) as caught, storage_errors("read", path):
        pq.read_table(path)
    assert caught.value.error_code == "RST-005" and not caught.value.transient


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a filesystem")
def test_a_read_only_mount_is_terminal(tmp_path):
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("this sandbox cannot mount a tmpfs")
    try:
        with pytest.raises(ComponentError) as caught, storage_errors("append", mount):
            delta_tables.write_plain(mount / "t", pa.table({"x": [1]}))
        assert caught.value.error_code == "RST-004", caught.value
    finally:
        subprocess.run(["umount", str(mount)], check=True)
