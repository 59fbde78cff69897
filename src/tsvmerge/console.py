"""The ``tsvmerge`` command (and ``python -m tsvmerge``): opts in to huge-page allocations, then runs the CLI.

A separate module so that the opt-in happens before torch is imported (:mod:`tsvmerge.cli` imports it), while
importing :mod:`tsvmerge.cli` itself changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from .utils.huge_pages import enable_huge_pages

    enable_huge_pages()
    from .cli import main as cli_main

    return cli_main(argv)
