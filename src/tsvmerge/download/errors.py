"""The user errors of the download commands: each message names the file or place and says what to do.

The CLI reports them as one ``tsvmerge: error: ...`` line with exit status 2, like every other user error
(:func:`tsvmerge.utils.entry_point.run_main`).
"""

from __future__ import annotations

from ..utils.errors import UserError

__all__ = ["CorruptDownloadError", "DownloadError", "HubFileNotFoundError", "HubUnavailableError",
           "NotEnoughSpaceError"]


class DownloadError(UserError):
    """Base class: a download cannot be done or completed."""


class HubUnavailableError(DownloadError):
    """The hub cannot be reached (no network, offline mode with the files not cached, server errors)."""


class HubFileNotFoundError(DownloadError):
    """The repository or a file the run needs does not exist on the hub (or in the cache, for its listing)."""


class NotEnoughSpaceError(DownloadError):
    """The disk lacks the room for the files still to download or copy (checked first), or filled up meanwhile."""


class CorruptDownloadError(DownloadError):
    """A downloaded or placed file cannot be read by the project's safe loaders."""
