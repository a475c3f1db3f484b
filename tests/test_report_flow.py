"""The backtest flow ends with the run's report: its bundle on disk, its summary and a link to report.html as artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.backtest_results import backtest_results

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def test_backtest_results_publishes_the_performance_summary_and_a_link_to_the_report(tmp_path: Path) -> None:
    await backtest_results(mode="eth_basis", run_id="flow-rep", start="2024-01-01", end="2024-01-01 12:00",
                           freq="30min", data_dir=str(tmp_path))
    report = tmp_path / "backtest" / "results" / "flow-rep" / "report.html"
    assert report.exists()
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["run-performance-flow-rep", "run-report-flow-rep"])))
    by_key = {str(a.key): a for a in found}
    assert "total return" in str(by_key["run-performance-flow-rep"].data)
    assert report.as_uri() in str(by_key["run-report-flow-rep"].data)
