"""``tsvmerge download <what>``: fetch what a run needs from public hubs into the layouts main.py reads.

Each sub-command lives in its own module exposing ``add_parser(subparsers)``, which registers the sub-command with
``set_defaults(run=<function(args) -> exit status>)``; :mod:`tsvmerge.cli` lists the modules. Nothing here imports
``huggingface_hub`` (or any other client) before a command runs.
"""

from .errors import DownloadError, HubFileNotFoundError, HubUnavailableError, NotEnoughSpaceError

__all__ = ["DownloadError", "HubFileNotFoundError", "HubUnavailableError", "NotEnoughSpaceError"]
