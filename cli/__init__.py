"""The ``results-store`` command line (``cli.main``)."""

import os

from store.allocators import ALLOCATOR_ENV

# pyarrow picks its memory pool when it loads, before the store could switch it: see
# store/allocators.py for what this saves. (malloc's arena limit the store sets at run time.)
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ALLOCATOR_ENV["ARROW_DEFAULT_MEMORY_POOL"])
