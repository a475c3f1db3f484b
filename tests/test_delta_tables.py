"""The Delta verbs the store relies on, against real tables: exactly-once appends, partitions, compaction."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from results_store import delta_tables
from schemas.errors import ComponentError


def _rows(run_id: str, steps: range) -> pa.Table:
    return pa.table({"run_id": [run_id] * len(steps), "timestep": list(steps), "value": [float(s) for s in steps]})


def test_an_append_is_a_no_op_once_its_last_timestep_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "t"
    first = delta_tables.append_exactly_once(path, _rows("r1", range(3)), run_id="r1", last_timestep=2)
    again = delta_tables.append_exactly_once(path, _rows("r1", range(3)), run_id="r1", last_timestep=2)
    assert first is not None and again is None
    assert delta_tables.version(path) == first
    assert delta_tables.committed_txn_version(path, "r1") == 2
    assert delta_tables.count_rows(path, run_id="r1") == 3


@pytest.mark.parametrize("run_id", ["plain-1", "a b%c=d", "désk·7"])
def test_any_run_id_reads_back_from_its_own_partition_and_compacts(tmp_path: Path, run_id: str) -> None:
    path = tmp_path / "t"
    delta_tables.append_exactly_once(path, _rows("other", range(2)), run_id="other", last_timestep=1)
    for start in (0, 5, 10):
        delta_tables.append_exactly_once(path, _rows(run_id, range(start, start + 5)), run_id=run_id,
                                         last_timestep=start + 4)
    table = delta_tables.read(path, run_id=run_id)
    assert sorted(table.column("timestep").to_pylist()) == list(range(15))
    assert set(table.column("run_id").to_pylist()) == {run_id}
    delta_tables.compact_run(path, run_id)
    assert len(delta_tables.data_files(path, run_id=run_id)) == 1
    assert delta_tables.count_rows(path, run_id=run_id) == 15 and delta_tables.count_rows(path, run_id="other") == 2


def test_a_batch_holding_rows_of_another_run_is_refused(tmp_path: Path) -> None:
    mixed = pa.concat_tables([_rows("r1", range(2)), _rows("r2", range(2, 3))])
    with pytest.raises(ComponentError) as refused:
        delta_tables.append_exactly_once(tmp_path / "t", mixed, run_id="r1", last_timestep=2)
    assert refused.value.error_code == "RST-901" and "other runs" in str(refused.value)
    assert delta_tables.committed_txn_version(tmp_path / "t", "r1") is None


def test_a_data_file_cut_short_by_a_full_disk_is_removed_not_left_to_hold_space(tmp_path: Path) -> None:
    import numpy as np

    from tests.store.faults import fill, tmpfs

    with tmpfs(tmp_path / "disk", 4) as disk:
        fill(disk, leave_bytes=256 * 1024)
        big = pa.table({"run_id": ["r1"] * 200_000, "timestep": np.arange(200_000, dtype=np.int64),
                        "value": np.random.default_rng(0).random(200_000)})  # ~3 MB: cannot fit
        with pytest.raises(ComponentError) as refused:
            delta_tables.append_exactly_once(disk / "t", big, run_id="r1", last_timestep=199_999)
        assert refused.value.error_code == "RST-004"
        assert list((disk / "t").rglob("*.parquet")) == []
