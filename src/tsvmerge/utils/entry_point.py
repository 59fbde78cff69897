"""The one wrapper every command-line entry point runs its body through.

Whatever goes wrong because of an input (a missing or corrupt file, a bad option, an unwritable output path), the
user sees a single ``<prog>: error: <message>`` line naming the input and exit status 2, never a traceback. An
interrupt (Ctrl-C) exits with 130 and SIGTERM with 143, in both cases after every ``finally`` block and ``except
BaseException`` clean-up of the body has run, so no temporary or half-written file is left behind.

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        return run_main("tsvmerge", lambda: _merge(args))
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import UserError

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "EXIT_USER_ERROR",
    "PeerFailed",
    "Terminated",
    "exit_status",
    "os_error_message",
    "run_main",
    "sigterm_raises",
    "UserError",
]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a process stopped by Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

# What the user can do about an OSError, by errno (anything else: the system's own description suffices).
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space or choose another location",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "choose a location on a writable file system",
    errno.EISDIR: "it is a directory; give a file path",
    errno.ENOTDIR: "a component of the path is a file, not a directory",
}


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM, so that clean-up code runs before it exits.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` handlers do not swallow it.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


class PeerFailed(Exception):
    """This process of a multi-process run stops because another process failed first and reports the error
    itself: :func:`run_main` exits with ``status`` (that process's) and prints nothing, so that the run shows one
    error, not one per process plus the consequences (lost connections, missing temporary files)."""

    def __init__(self, status: int, rank: int) -> None:
        super().__init__(f"process {rank} failed (exit status {status})")
        self.status = status
        self.rank = rank


def exit_status(error: BaseException, user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """The exit status :func:`run_main` gives ``error`` (1 for a bug: Python's status after a traceback);
    ``user_errors``: classes counted as user errors besides :class:`UserError`."""
    if isinstance(error, PeerFailed):
        return error.status
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, Terminated):
        return EXIT_TERMINATED
    if isinstance(error, (UserError, *user_errors)) or (isinstance(error, OSError) and error.filename is not None):
        return EXIT_USER_ERROR
    return 1


def os_error_message(error: OSError) -> str:
    """``<path>: <reason>; <what to do>`` for an OSError that names a file."""
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    reason = error.strerror or str(error)
    hint = _OS_ERROR_HINTS.get(error.errno) if error.errno is not None else None
    return f"{paths}: {reason}" + (f" ({hint})" if hint else "")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread instead of killing the process.

    The previous handler is restored on exit. Outside the main thread (where Python cannot install handlers)
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(prog: str, body: Callable[[], int | None], *,
             user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``body`` and turn what can go wrong into an exit status and one message on stderr.

    - a :class:`~tsvmerge.utils.errors.UserError` (or one of the ``user_errors`` classes a command adds, e.g.
      ``ValueError`` for a bad method parameter) -> ``<prog>: error: <message>``, 2;
    - an OSError naming a file (permission denied, disk full, is a directory) -> that path and the reason, 2;
    - KeyboardInterrupt -> 130; SIGTERM -> 143 (after ``body``'s clean-up ran);
    - :class:`PeerFailed` (another process of the run failed first and reported it) -> its status, silently.

    Any other exception is a bug and propagates with its traceback. ``body``'s return value (``None``: 0) is the
    exit status.
    """
    expected = (UserError, *user_errors)
    try:
        with sigterm_raises():
            status = body()
    except PeerFailed as failed:
        return failed.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except expected as error:
        print(f"{prog}: error: {_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        if error.filename is None:
            raise
        print(f"{prog}: error: {_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if status is None else int(status)


def _message(error: BaseException) -> str:
    # An OSError naming a file gets the system's reason and a hint, unless its class words its own message.
    if isinstance(error, OSError) and error.filename is not None and type(error).__str__ is OSError.__str__:
        return os_error_message(error)
    return str(error).strip() or type(error).__name__
