"""Re-deriving a run's result tables from its ``raw_snapshots``, with new parameters.

Under a new run_id the snapshots are replayed through a fresh ``ResultsStore`` (a new run whose
``parent_run_id`` is the source). In place, each result table's partition for the run is
replaced in one commit (overwrite by predicate), so the previous version stays readable by time
travel; the runs registry records the table versions before and after. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from results_store import delta_tables
from results_store.batch_writer import BatchWriter
from results_store.markdown import markdown_table
from results_store.runs import append_run_record, latest_run
from results_store.store import ResultsStore
from results_store.summary import RunSummary
from schemas.errors import ComponentError
from schemas.modes import ModeConfig, config_hash
from schemas.result_types import ResultType
from schemas.settings import load_settings
from schemas.store_tables import QUARANTINE, QUARANTINE_SCHEMA, RAW_SNAPSHOTS
from schemas.tables import arrow_schema

__all__ = ["OVERRIDABLE", "apply_overrides", "iter_raw_snapshots", "lineage_report", "rederive_run", "rederive_run_async"]

OVERRIDABLE = (
    "result_types", "balance_sheet_assets", "pnl_attribution_types", "delta_tracking_assets",
    "funding_tracking_venues", "dust_tracking_tokens", "leverage_tracking",
)
RERUN_CHUNK = 5_000


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


def iter_raw_snapshots(root: Path, execution_mode: str, run_id: str) -> Iterator[tuple[int, pd.Timestamp, dict[str, Any]]]:
    """The run's accepted snapshots in timestep order, read in batches."""
    path = delta_tables.table_path(root, execution_mode, RAW_SNAPSHOTS)
    table = delta_tables.read(path, run_id=run_id, columns=["timestep", "timestamp", "payload"])
    table = table.sort_by("timestep")
    for batch in table.to_batches(max_chunksize=RERUN_CHUNK):
        steps = batch.column("timestep").to_pylist()
        stamps = batch.column("timestamp").to_pylist()
        for step, stamp, payload in zip(steps, stamps, batch.column("payload").to_pylist(), strict=True):
            yield step, pd.Timestamp(stamp), orjson.loads(payload)


def rederive_run(
    *,
    data_dir: Path,
    execution_mode: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    new_run_id: str | None = None,
    strict: bool = False,
) -> RunSummary:
    """Re-derive ``run_id``'s result tables from its raw snapshots; see the module docstring."""
    root, record, config, settings = _prepare(data_dir, execution_mode, run_id, overrides, strict)
    if new_run_id:
        return asyncio.run(_replay_as_new_run(config, settings, execution_mode, run_id, new_run_id, root))
    return _rederive_in_place(config, settings, execution_mode, run_id, record, root)


async def rederive_run_async(
    *,
    data_dir: Path,
    execution_mode: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    new_run_id: str | None = None,
    strict: bool = False,
) -> RunSummary:
    """:func:`rederive_run` for callers already inside an event loop (async flows)."""
    if not new_run_id:
        return await asyncio.to_thread(rederive_run, data_dir=data_dir, execution_mode=execution_mode,
                                       run_id=run_id, overrides=overrides, strict=strict)
    root, _, config, settings = _prepare(data_dir, execution_mode, run_id, overrides, strict)
    return await _replay_as_new_run(config, settings, execution_mode, run_id, new_run_id, root)


def _prepare(data_dir: Path, execution_mode: str, run_id: str, overrides: dict[str, Any] | None,
             strict: bool) -> tuple[Path, dict[str, Any], ModeConfig, Any]:
    """The source run's record, its config with the overrides applied, and the settings to use."""
    root = load_settings(data_dir=data_dir).root
    record = latest_run(root, execution_mode, run_id)
    if record is None:
        raise ComponentError("RST-302", f"no run {run_id!r} in the {execution_mode} runs registry under {root}")
    config = apply_overrides(ModeConfig.model_validate(orjson.loads(record["config_json"])), overrides)
    settings = load_settings(config, data_dir=data_dir, strict=strict or bool((overrides or {}).get("strict")))
    return root, record, config, settings


async def _replay_as_new_run(config: ModeConfig, settings: Any, execution_mode: str, run_id: str,
                             new_run_id: str, root: Path) -> RunSummary:
    store = ResultsStore(config, execution_mode, data_dir=settings.data_dir, run_id=new_run_id,
                         settings=settings, parent_run_id=run_id,
                         commit_metadata={"rerun_of": run_id})
    async with store:
        for step, stamp, results in iter_raw_snapshots(root, execution_mode, run_id):
            results.setdefault("timestep", step)
            await store.store_timestep_results(stamp, results)
    assert store.summary is not None
    return store.summary


def _rederive_in_place(config: ModeConfig, settings: Any, execution_mode: str, run_id: str,
                       record: dict[str, Any], root: Path) -> RunSummary:
    started = time.perf_counter()
    names = [t.value for t in config.results_store.result_types] + [QUARANTINE]
    all_result_tables = [t.value for t in ResultType]
    paths = {n: delta_tables.table_path(root, execution_mode, n) for n in [*all_result_tables, QUARANTINE]}
    before = {n: delta_tables.version(p) for n, p in paths.items() if delta_tables.table_exists(p)}
    writer = BatchWriter(mode=config, settings=settings, run_id=run_id,
                         table_paths={n: paths[n] for n in names})
    received = quarantined = 0
    last_step = -1
    with tempfile.TemporaryDirectory(prefix="rerun-") as tmp:
        spool = Path(tmp)
        writers: dict[str, pq.ParquetWriter] = {}
        chunk: list[Any] = []

        def flush() -> None:
            nonlocal quarantined
            prepared = writer.prepare(chunk)
            quarantined += prepared.quarantined
            for name in names:
                table = prepared.tables[name]
                if name not in writers:
                    (spool / name).mkdir()
                    writers[name] = pq.ParquetWriter(spool / name / "part.parquet", table.schema)
                writers[name].write_table(table)
            chunk.clear()

        for step, stamp, results in iter_raw_snapshots(root, execution_mode, run_id):
            chunk.append((step, stamp.value // 1000, stamp, results, 0.0))
            received += 1
            last_step = step
            if len(chunk) >= RERUN_CHUNK:
                flush()
        if chunk:
            flush()
        for w in writers.values():
            w.close()
        writer.close()
        if received == 0:
            raise ComponentError("RST-302", f"run {run_id!r} has no raw snapshots to re-derive from")
        meta = {"run_id": run_id, "rerun": "in_place", "config_hash": config_hash(config)}
        after: dict[str, int] = {}
        for name in names:
            schema = QUARANTINE_SCHEMA if name == QUARANTINE else arrow_schema(name)
            reader = pads.dataset(spool / name, format="parquet", schema=schema).scanner().to_reader()
            after[name] = delta_tables.overwrite_run(paths[name], reader, run_id=run_id,
                                                     last_timestep=last_step, metadata={**meta, "table": name})
    for name in set(all_result_tables) - set(names):
        if delta_tables.count_rows(paths[name], run_id=run_id):
            delta_tables.delete_run(paths[name], run_id)
            version = delta_tables.version(paths[name])
            if version is not None:
                after[name] = version
    rows = {n: delta_tables.count_rows(paths[n], run_id=run_id) for n in names}
    append_run_record(
        root, execution_mode, run_id=run_id, mode=config.mode, status="finished",
        config_json=config.redacted(), config_hash=config_hash(config),
        started_at=pd.Timestamp(record["started_at"]).to_pydatetime(), finished_at=datetime.now(UTC),
        parent_run_id=record.get("parent_run_id") or None, row_counts=rows,
        table_versions={"before": before, "after": after},
        note=f"rerun in place: result_types={[t.value for t in config.results_store.result_types]}",
    )
    elapsed = time.perf_counter() - started
    return RunSummary(
        run_id=run_id, mode=config.mode, execution_mode=execution_mode, timesteps_received=received,
        timesteps_written=received, rows=rows, commits=dict.fromkeys(after, 1), quarantined=quarantined,
        elapsed_s=elapsed, throughput=received / elapsed if elapsed else 0.0,
        table_paths={n: str(paths[n]) for n in names}, table_versions=after,
        parent_run_id=record.get("parent_run_id") or None,
    )


def lineage_report(run_id: str, summary: RunSummary, source: dict[str, Any] | None, record: dict[str, Any] | None,
                   overrides: dict[str, Any]) -> str:
    """Markdown: what was rerun, with which overrides, and each table's version before and after."""
    versions = (record or {}).get("table_versions") or {}
    # In place the registry records {"before": ..., "after": ...}; a new run records its versions flat.
    before: dict[str, Any] = versions.get("before", {}) if "after" in versions else {}
    after: dict[str, Any] = versions.get("after", versions)
    rows = [{"table": name, "version before": before.get(name), "version after": after.get(name),
             "rows": summary.rows.get(name)}
            for name in sorted(set(before) | set(after) | set(summary.rows))]
    lines = [
        f"# Rerun of `{run_id}`",
        "",
        f"- written as: `{summary.run_id}` "
        + (f"(a new run; parent `{run_id}`)" if summary.run_id != run_id else "(new versions of the same run)"),
        f"- lineage: `{(record or {}).get('parent_run_id') or '—'}` → `{summary.run_id}`",
        f"- source run: mode `{(source or {}).get('mode')}`, config `{str((source or {}).get('config_hash'))[:12]}`",
        f"- overrides: {', '.join(f'{k}={v}' for k, v in overrides.items()) or 'none'}",
        f"- snapshots re-derived: {summary.timesteps_received:,}; quarantined rows: {summary.quarantined:,}",
        "",
        markdown_table(rows),
        "",
        "Earlier versions stay readable: `results-store show RUN_ID --table TABLE --version N`.",
    ]
    return "\n".join(lines)
