"""``ResultsStore.retrieve_results(query)``: the spec's method is the query library on the store's own run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from results_store.store import ResultsStore
from schemas.errors import ComponentError
from schemas.modes import ModeConfig
from tests.store.conftest import snapshots


async def _stored(tmp_path: Path, mode: ModeConfig, run_id: str, steps: int) -> ResultsStore:
    store = ResultsStore(mode, "backtest", data_dir=tmp_path, run_id=run_id)
    async with store:
        for ts, results in snapshots(mode, steps):
            await store.store_timestep_results(ts, results)
    return store


async def test_it_answers_a_time_range_of_this_run_with_the_columns_asked_for(tmp_path: Path, mn_mode: ModeConfig) -> None:
    other = await _stored(tmp_path, mn_mode, "other", 30)
    store = await _stored(tmp_path, mn_mode, "mine", 120)
    start, end = datetime(2024, 1, 1, 0, 30, tzinfo=UTC), datetime(2024, 1, 1, 1, 0, tzinfo=UTC)
    got = await store.retrieve_results({"result_type": "risk_metrics", "start": start, "end": end,
                                        "columns": ["timestep", "timestamp", "metric", "value"]})
    assert isinstance(got, pd.DataFrame)
    assert list(got.columns) == ["timestep", "timestamp", "metric", "value"]
    assert got["timestep"].min() == 30 and got["timestep"].max() == 59  # end is exclusive, one row per minute
    assert got["timestamp"].min() >= pd.Timestamp(start) and got["timestamp"].max() < pd.Timestamp(end)
    # Another run id is still reachable by naming it.
    theirs = await store.retrieve_results({"result_type": "risk_metrics", "run_id": "other", "output": "arrow"})
    assert isinstance(theirs, pa.Table) and set(theirs["run_id"].to_pylist()) == {other.run_id}


async def test_downsampling_and_the_raw_tables(tmp_path: Path, mn_mode: ModeConfig) -> None:
    store = await _stored(tmp_path, mn_mode, "mine", 120)
    nav = await store.retrieve_results({"result_type": "funding_tracking", "points": 4})
    assert nav["timestamp"].nunique() == 4
    raw = await store.retrieve_results({"result_type": "raw_snapshots", "limit": 5})
    assert raw["timestep"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ComponentError) as failure:
        await store.retrieve_results({"result_type": "no_such_table"})
    assert failure.value.error_code == "RST-302"
