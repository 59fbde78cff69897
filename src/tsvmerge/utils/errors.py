"""The one base class of every error a user can fix: a missing or corrupt input, a bad option, an unusable output.

Entry points (:func:`tsvmerge.utils.entry_point.run_main`) answer any :class:`UserError` with one line naming the
input and exit status 2, never a traceback; anything else is a bug and keeps its traceback. Each package declares
its own errors as subclasses, usually beside a standard class (``ValueError``, ``FileNotFoundError``) that callers
already catch, so this module needs to know none of them.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by an input; its message names the input and says what to do."""
