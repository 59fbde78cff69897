"""Our TSV-M beside the plain algorithm of ``reference_tsvm.py`` on the task vectors of a benchmark: the plain
algorithm timed on every matrix TSV-M decomposes, both measured against the float64 definition."""

from __future__ import annotations

import re

import torch
from reference_tsvm import Comparison, compare, with_threads

from tsvmerge.merging import TaskVectors, build_method
from tsvmerge.merging.parallel import default_workers


def plain_comparison(tasks: TaskVectors, svd: str | None, accuracy_keys: str | None) -> Comparison:
    """Our merged entries are computed in this process by the TSVM method, as a merge computes them: with one BLAS
    thread per entry when the merge runs several workers (float32 LAPACK's choices near a noise-floor cut depend on
    the thread count). ``accuracy_keys`` (a regular expression) limits the float64 check to the matching entries."""
    method = build_method("TSVM", {"svd": svd} if svd else None)
    method.prepare(tasks)
    threads = 1 if default_workers(torch.device("cpu")) > 1 else torch.get_num_threads()
    keys = [key for key in tasks.keys if tasks.rules.uses_svd(key, tasks.shape(key)) and tasks.entry(key).changed]
    pattern = re.compile(accuracy_keys) if accuracy_keys else None
    done: list[str] = []

    def progress(key: str) -> None:
        done.append(key)
        print(f"\r  plain baseline: {len(done)}/{len(keys)} matrices", end="", flush=True)

    result = compare(((key, lambda key=key: tasks.entry(key).deltas()) for key in keys),
                     with_threads(threads, lambda key: method.merge_entry(tasks.entry(key)).task_vector),
                     accuracy=lambda key: pattern is None or bool(pattern.search(key)), progress=progress)
    print()
    return result
