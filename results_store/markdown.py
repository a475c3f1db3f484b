"""Markdown and artifact-key helpers for the reports the flows publish (pure functions, no Prefect)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["artifact_key", "markdown_table"]


def artifact_key(*parts: str) -> str:
    """An artifact key from free text: Prefect allows lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A list of same-keyed dicts as a GitHub markdown table (empty string for no rows)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
