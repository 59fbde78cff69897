"""Transparent huge pages for torch's CPU allocations: an opt-in of the entry points that merge.

Merging streams one layer's stack of task matrices at a time, so large CPU tensors are allocated and freed hundreds
of times; on 4 KiB pages every allocation pays its page faults again (on a VM that was ~15 % of a TSV-M merge).
torch puts allocations of 2 MiB and more on transparent huge pages when ``THP_MEM_ALLOC_ENABLE=1`` is set before
its first CPU allocation; it changes no result. The entry points that benefit (``tsvmerge merge``, main.py, the
benchmarks) call :func:`enable_huge_pages` first thing; a library import never does. ``THP_MEM_ALLOC_ENABLE=0`` in
the environment opts out.
"""

from __future__ import annotations

import os
import sys

__all__ = ["enable_huge_pages"]

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> bool:
    """Ask torch for huge-page CPU allocations unless the user decided otherwise; True when it will take effect
    (torch not imported yet, so it reads the setting at its first allocation)."""
    os.environ.setdefault(VARIABLE, "1")
    return "torch" not in sys.modules and os.environ[VARIABLE] == "1"
