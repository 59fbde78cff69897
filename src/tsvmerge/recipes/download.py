"""``tsvmerge download``: fetch what main.py reads, into the layouts it reads.

    tsvmerge download checkpoints --model ViT-B-32 --tasks 8       # published checkpoints into models/checkpoints
    tsvmerge download data --benchmark 8 --to data                 # the datasets from hub mirrors into data/

Each kind of file is one sub-command whose body lives with the fetching code of :mod:`tsvmerge.download`
(:mod:`~tsvmerge.download.checkpoints`, :mod:`~tsvmerge.download.data`): its ``add_parser`` registers the flags and
``set_defaults(run=...)`` the function that fetches, checks and reports.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["KINDS", "add_parser"]

#: The sub-commands of ``tsvmerge download``: modules of :mod:`tsvmerge.download`.
KINDS = ("checkpoints", "data")


def add_parser(sub: argparse._SubParsersAction, *, with_kinds: bool = True) -> argparse.ArgumentParser:
    """Register ``tsvmerge download`` and, when ``with_kinds``, its sub-commands. The download modules import the
    dataset registry (and torchvision, seconds of start-up), so the dispatcher leaves them out when the command
    line runs another command."""
    download = sub.add_parser("download", help="fetch what main.py needs into the layouts it reads",
                              description="Fetch published files into the layouts main.py reads.")
    kinds = download.add_subparsers(dest="what", required=True)
    for name in KINDS if with_kinds else ():
        importlib.import_module(f"tsvmerge.download.{name}").add_parser(kinds)
    return download
