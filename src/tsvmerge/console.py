"""The ``tsvmerge`` command (and ``python -m tsvmerge``): opts in to huge-page allocations, then runs the CLI.

A separate module so that the opt-in happens before torch is imported (:mod:`tsvmerge.cli` imports it), while
importing :mod:`tsvmerge.cli` itself changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from .utils.allocator import cap_heap_retention
    from .utils.huge_pages import enable_huge_pages

    enable_huge_pages()
    cap_heap_retention()  # merges free per-task workspaces thousands of times (src/tsvmerge/utils/allocator.py)
    from .cli import main as cli_main

    return cli_main(argv)
