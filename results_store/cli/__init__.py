"""The ``results-store`` command line (``results_store.cli.main``)."""

import os

from results_store.allocators import ALLOCATOR_ENV

# pyarrow picks its memory pool when it loads, before the store could switch it: see
# store/allocators.py for what this saves. (malloc's arena limit the store sets at run time.)
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ALLOCATOR_ENV["ARROW_DEFAULT_MEMORY_POOL"])
