"""The ``results-store`` command line (``cli.main``)."""

import os

# pyarrow picks its memory pool when it loads, before the store could switch it: see
# store/allocators.py for what this saves.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
