"""Exports to files: each format reads back to the same rows and types, and manifest.json vouches for every byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from results_store.cli.main import app
from results_store.drive import run_snapshots
from results_store.export import export_run
from results_store.query import retrieve_results
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode
from schemas.result_types import ResultType

ALL_TABLES = [t.value for t in ResultType]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One usdt_market_neutral run (every result type, events with JSON details) of 2 days at 30 minutes."""
    root = tmp_path_factory.mktemp("export")
    mode = load_mode("usdt_market_neutral")
    run_snapshots(mode, ReferenceEngine(mode, "2024-03-01", "2024-03-03", "30min", seed=5).iter_snapshots(),
                  data_dir=root, run_id="x1")
    return root


def read_back(path: Path, schema: pa.Schema, format: str) -> pa.Table:
    """A file read with the plain readers a downstream tool would use, told only the table's schema."""
    if format == "csv":
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=schema))
    if format == "jsonl":
        return pajson.read_json(path, parse_options=pajson.ParseOptions(explicit_schema=schema))
    if format == "json":
        rows = orjson.loads(path.read_bytes())
        columns = {f.name: pa.array([r[f.name] for r in rows]) for f in schema}
        return pa.table({f.name: columns[f.name].cast(f.type) for f in schema})
    return pq.read_table(path)


@pytest.mark.parametrize("format", ["csv", "jsonl", "json", "parquet"])
def test_each_table_round_trips_with_equal_rows_and_types(root: Path, tmp_path: Path, format: str) -> None:
    manifest = export_run(root, "x1", format, tmp_path)  # type: ignore[arg-type]
    assert sorted(manifest["tables"]) == sorted(ALL_TABLES)
    for table in ALL_TABLES:
        expected = retrieve_results(root, {"result_type": table, "run_id": "x1", "output": "arrow"})
        back = read_back(tmp_path / f"{table}.{format}", expected.schema, format)
        # Same columns, same types (files do not carry Delta's NOT NULL), same rows in the same order.
        assert [(f.name, f.type) for f in back.schema] == [(f.name, f.type) for f in expected.schema], table
        assert back.cast(expected.schema).equals(expected), table
        assert manifest["tables"][table]["rows"] == expected.num_rows > 0


@pytest.mark.parametrize("format", ["csv", "json"])
def test_the_manifest_names_versions_rows_and_checksums_and_the_same_version_gives_the_same_bytes(
        root: Path, tmp_path: Path, format: str) -> None:
    first = export_run(root, "x1", format, tmp_path / "a")  # type: ignore[arg-type]
    second = export_run(root, "x1", format, tmp_path / "b")  # type: ignore[arg-type]
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk == first
    assert {"run_id", "tables", "code_version", "created_at", "execution_mode", "format"} <= set(on_disk)
    for table, entry in on_disk["tables"].items():
        data = (tmp_path / "a" / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data), table
        assert isinstance(entry["version"], int)
        assert second["tables"][table]["sha256"] == entry["sha256"], table
    # No half-written file is left beside the export.
    assert not list((tmp_path / "a").glob("*.partial"))


def test_a_time_range_and_a_table_list_narrow_the_export(root: Path, tmp_path: Path) -> None:
    manifest = export_run(root, "x1", "parquet", tmp_path, tables=["leverage_tracking"],
                          start="2024-03-02T00:00:00Z", end="2024-03-02T12:00:00Z")
    assert list(manifest["tables"]) == ["leverage_tracking"] and manifest["tables"]["leverage_tracking"]["rows"] == 24
    assert pq.read_table(tmp_path / "leverage_tracking.parquet").column("timestep").to_pylist() == list(range(48, 72))


def test_an_unknown_run_or_format_is_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ComponentError) as unknown:
        export_run(root, "nobody", "csv", tmp_path)
    assert unknown.value.error_code == "RST-302"
    with pytest.raises(ComponentError) as bad:
        export_run(root, "x1", "xlsx", tmp_path)  # type: ignore[arg-type]
    assert bad.value.error_code == "RST-201"


def test_the_cli_exports_and_lists_what_it_wrote(root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "x1", "--format", "jsonl", "--out", str(tmp_path),
                                      "--tables", "funding_tracking", "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "funding_tracking" in result.output and (tmp_path / "funding_tracking.jsonl").exists()
    assert (tmp_path / "manifest.json").exists()
