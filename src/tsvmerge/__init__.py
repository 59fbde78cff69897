"""tsvmerge: Task Singular Vectors merging (TSV-M, TSV-C) and classic model-merging baselines."""

import os

# Merging streams one layer's stack of task matrices at a time, so large CPU tensors are allocated and
# freed hundreds of times; on 4 KiB pages every allocation pays its page faults again (on a VM that
# was ~15 % of a TSV-M merge). torch puts allocations of 2 MiB and more on transparent huge pages when
# this is set before torch is imported; it changes no result. Export THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
