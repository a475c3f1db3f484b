"""The one UTC helper: every timestamp the store takes or writes goes through :func:`to_utc`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

__all__ = ["to_utc"]


def to_utc(value: datetime | str | pd.Timestamp | Any) -> pd.Timestamp:
    """A ``pd.Timestamp`` in UTC; naive input is taken to be UTC already."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
