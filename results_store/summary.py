"""What a finished (or stopped) run reports: rows, commits, quarantine, throughput, paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RunSummary"]


@dataclass
class RunSummary:
    """Figures of one run through the store, for the CLI, Prefect artifacts and the registry."""

    run_id: str
    mode: str
    execution_mode: str
    timesteps_received: int = 0
    timesteps_skipped: int = 0
    timesteps_written: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    commits: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    elapsed_s: float = 0.0
    throughput: float = 0.0
    table_paths: dict[str, str] = field(default_factory=dict)
    table_versions: dict[str, int] = field(default_factory=dict)
    data_files: dict[str, int] = field(default_factory=dict)
    parent_run_id: str | None = None
    status: str = "finished"
    # A snapshot file's lines (``results_store.file_ingest``): read = written + quarantined + refused.
    file_lines: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per table: rows of this run, commits made now, version, data files."""
        return [
            {
                "table": name,
                "rows": self.rows.get(name, 0),
                "commits": self.commits.get(name, 0),
                "version": self.table_versions.get(name),
                "data_files": self.data_files.get(name),
            }
            for name in sorted(self.table_paths)
        ]

    def to_markdown(self) -> str:
        lines = [
            f"# Run `{self.run_id}` — {self.mode} ({self.execution_mode}): {self.status}",
            "",
            f"- timesteps received: {self.timesteps_received:,} "
            f"(skipped as already committed: {self.timesteps_skipped:,})",
            f"- quarantined rows: {self.quarantined:,}",
            f"- elapsed: {self.elapsed_s:.2f} s, throughput: {self.throughput:,.0f} timesteps/s",
        ]
        if self.file_lines:
            f = self.file_lines
            lines.append(f"- file lines read: {f['read']:,} = written {f['written']:,} + quarantined "
                         f"{f['quarantined']:,} + refused {f['refused']:,}")
        if self.parent_run_id:
            lines.append(f"- parent run: `{self.parent_run_id}`")
        lines += ["", "| table | rows | commits | version | data files | path |", "|---|---:|---:|---:|---:|---|"]
        for row in self.table_rows():
            lines.append(
                f"| {row['table']} | {row['rows']:,} | {row['commits']} | {row['version']} | "
                f"{row['data_files']} | `{self.table_paths[row['table']]}` |"
            )
        return "\n".join(lines)
