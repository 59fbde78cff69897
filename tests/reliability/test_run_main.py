"""``run_main``: the wrapper of every entry point (exit statuses, one message, clean-up before exit)."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from tsvmerge.checkpoints import CheckpointFormatError
from tsvmerge.utils.entry_point import Terminated, run_main, sigterm_raises
from tsvmerge.utils.errors import UserError


def test_status_of_a_normal_body() -> None:
    assert run_main("prog", lambda: None) == 0
    assert run_main("prog", lambda: 3) == 3


def test_user_error_is_one_line(capsys: pytest.CaptureFixture) -> None:
    def body():
        raise CheckpointFormatError("x.pt holds a list, not a state dict")

    assert run_main("prog", body) == 2
    assert capsys.readouterr().err == "prog: error: x.pt holds a list, not a state dict\n"


def test_os_error_names_the_path_and_what_to_do(capsys: pytest.CaptureFixture) -> None:
    def body():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/merged.pt")

    assert run_main("prog", body, user_errors=()) == 2
    err = capsys.readouterr().err
    assert err.startswith("prog: error: /data/merged.pt: No space left on device") and "free some space" in err


def test_errors_that_are_not_the_users_keep_their_traceback() -> None:
    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_main("prog", bug)
    with pytest.raises(OSError):
        run_main("prog", lambda: (_ for _ in ()).throw(OSError("no file name")), user_errors=())


def test_interrupt_exits_130_after_clean_up(capsys: pytest.CaptureFixture) -> None:
    cleaned = []

    def body():
        try:
            raise KeyboardInterrupt
        finally:
            cleaned.append(True)

    assert run_main("prog", body) == 130
    assert cleaned == [True]
    assert "Traceback" not in capsys.readouterr().err


def test_sigterm_exits_143_after_clean_up_and_restores_the_handler(capsys: pytest.CaptureFixture) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def body():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        finally:
            cleaned.append(True)
        return 0

    assert run_main("prog", body) == 143
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is previous
    assert "Traceback" not in capsys.readouterr().err


def test_sigterm_raises_is_a_base_exception_that_except_exception_does_not_swallow() -> None:
    with pytest.raises(Terminated), sigterm_raises():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        except Exception:  # noqa: BLE001 - the point of the test
            pytest.fail("SIGTERM was swallowed")


def test_every_user_facing_error_is_a_user_error() -> None:
    """run_main answers them with one line and status 2 because they derive from UserError, not from a list."""
    from tsvmerge.evaluation.results import ResultFileError
    from tsvmerge.checkpoints import CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError
    from tsvmerge.checkpoints.errors import CheckpointPermissionError
    from tsvmerge.checkpoints.hf_folder import AmbiguousModelFolderError
    from tsvmerge.checkpoints.paths import CheckpointNotFoundError
    from tsvmerge.utils.files import OutputPathError
    from tsvmerge.config import ConfigError
    from tsvmerge.data.errors import DatasetNotFoundError, DatasetTooSmallError
    from tsvmerge.download.data import DownloadError as DataDownloadError
    from tsvmerge.download.errors import DownloadError
    from tsvmerge.evaluation.metrics import AccuracyFileError
    from tsvmerge.evaluation.preflight import MissingInputsError
    from tsvmerge.merging.engine import NonFiniteResultError
    from tsvmerge.models.encoder import EncoderWeightsError
    from tsvmerge.models.factory import PretrainedWeightsError

    for cls in (ResultFileError, CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError,
                CheckpointPermissionError, AmbiguousModelFolderError, CheckpointNotFoundError, OutputPathError,
                ConfigError, DatasetNotFoundError, DatasetTooSmallError, DataDownloadError, DownloadError,
                AccuracyFileError, MissingInputsError, NonFiniteResultError, EncoderWeightsError,
                PretrainedWeightsError):
        assert issubclass(cls, UserError), cls


def test_a_user_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture) -> None:
    def body():
        raise UserError("input 'x' is wrong; give another")

    assert run_main("prog", body) == 2
    assert capsys.readouterr().err == "prog: error: input 'x' is wrong; give another\n"
