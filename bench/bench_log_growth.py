"""Log-growth benchmark: what one commit of one small file costs as a table's Delta log grows.

A live table commits every snapshot, so its ``_delta_log`` gains a file per snapshot (86,400 a day
at one a second). Measured at several log lengths, in the same process and on the same table:

- **delta-rs**: the commit as the store made it before ``results_store.delta_log``: a kept
  ``DeltaTable`` brought up to date (``update_incremental``), ``create_write_transaction`` with the
  run's application transaction, no checkpoint (the live policy writes those), the checksum entry;
- **by version**: ``delta_tables.commit_run_files`` through a handle (``open_handle``): the log
  read by version and the append linked in as the next one, the same checksum entry;
- **checkpoint**: one ``delta_tables.checkpoint`` of the latest version, what the live policy writes
  in the background every 10 versions per table (delta-rs opens the table at that version: it lists
  the log too, so this one still grows with it).

Each figure is the process CPU (every thread: delta-rs works on its own) and the wall time per
commit, over ``--commits`` commits; the data file is written before the clock starts. The table is
grown between marks by the cheap path, and both paths commit to the same table at each mark. The log
is checkpointed every 10 versions as a live table's is (by the live policy, in the background: off
the clock here too), so delta-rs replays at most 9 entries after its checkpoint.

Run: ``.venv/bin/python bench/bench_log_growth.py`` (~1 minute; ``--marks 100,1000`` for a quick look).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Transaction  # noqa: E402

from results_store import checksums, delta_tables  # noqa: E402

SCHEMA = pa.schema([("run_id", pa.string()), ("timestep", pa.int64()), ("value", pa.float64())])
NO_HOOKS = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _file(path: Path, run_id: str, step: int) -> delta_tables.FileAction:
    file = delta_tables.open_run_file(path, run_id, SCHEMA)
    file.write(pa.table({"run_id": [run_id], "timestep": [step], "value": [float(step)]}, schema=SCHEMA))
    return delta_tables.close_run_file(file)


def _by_delta_rs(path: Path, table: DeltaTable, add: delta_tables.FileAction, run_id: str, step: int) -> None:
    table.update_incremental()
    before = table.version()
    marker = checksums.commit_marker()
    table.create_write_transaction(
        [add], mode="append", schema=table.schema(), partition_by=[delta_tables.PARTITION_COLUMN],
        commit_properties=CommitProperties(custom_metadata={checksums.COMMIT_MARKER_KEY: marker},
                                           app_transactions=[Transaction(delta_tables.run_app_id(run_id), step)]),
        post_commithook_properties=NO_HOOKS)
    found, data = checksums.find_commit(path, before, marker)
    checksums.record_commit(path, found, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--marks", default="100,1000,3000,6000", help="log lengths (versions) to measure at")
    parser.add_argument("--commits", type=int, default=50, help="commits per path per mark")
    args = parser.parse_args()
    marks = sorted(int(m) for m in args.marks.split(","))

    with tempfile.TemporaryDirectory(prefix="bench-log-growth-") as work:
        path = Path(work) / "t"
        first = _file(path, "grow", 0)
        delta_tables.commit_run_files(path, [first], run_id="grow", last_timestep=0, schema=SCHEMA)
        handle = delta_tables.open_handle(path)
        assert handle is not None and handle.direct
        kept = DeltaTable(str(path))
        step = 0
        print(f"one-file commits, {args.commits} per path per mark (process CPU and wall per commit, ms)")
        print(f"{'log versions':>12}  {'delta-rs cpu':>12} {'wall':>7}  {'by version cpu':>14} {'wall':>7}  {'cpu ratio':>9}"
              f"  {'checkpoint cpu':>14} {'wall':>7}")
        for mark in marks:
            while handle.version < mark:  # grow the log cheaply to the mark, checkpointed as it goes
                step += 1
                delta_tables.commit_run_files(path, [_file(path, "grow", step)], run_id="grow", last_timestep=step,
                                              schema=SCHEMA, table=handle, checkpoint=True)
            figures = []
            for name in ("delta-rs", "by version"):
                adds = [_file(path, name, mark + i) for i in range(args.commits)]
                cpu_s = wall_s = 0.0
                for i, add in enumerate(adds):
                    cpu, wall = _cpu(), time.perf_counter()
                    if name == "delta-rs":
                        _by_delta_rs(path, kept, add, name, mark + i)
                    else:
                        delta_tables.commit_run_files(path, [add], run_id=name, last_timestep=mark + i, schema=SCHEMA,
                                                      table=handle, checkpoint=False)
                    cpu_s += _cpu() - cpu
                    wall_s += time.perf_counter() - wall
                    version = delta_tables.version(path)
                    if version is not None and (version + 1) % delta_tables.CHECKPOINT_INTERVAL == 0:
                        delta_tables.checkpoint(path, version)  # off the clock, as the live policy's
                figures.append((cpu_s * 1000 / args.commits, wall_s * 1000 / args.commits))
            (rs_cpu, rs_wall), (own_cpu, own_wall) = figures
            step += 1  # one more commit, so that the latest version has no checkpoint yet
            delta_tables.commit_run_files(path, [_file(path, "grow", step)], run_id="grow", last_timestep=step,
                                          schema=SCHEMA, table=handle, checkpoint=False)
            cpu, wall = _cpu(), time.perf_counter()
            delta_tables.checkpoint(path, handle.version)
            cp_cpu, cp_wall = (_cpu() - cpu) * 1000, (time.perf_counter() - wall) * 1000
            print(f"{mark:>12,}  {rs_cpu:>12.2f} {rs_wall:>7.2f}  {own_cpu:>14.2f} {own_wall:>7.2f}  "
                  f"{rs_cpu / own_cpu:>8.1f}x  {cp_cpu:>14.2f} {cp_wall:>7.2f}")


if __name__ == "__main__":
    main()
