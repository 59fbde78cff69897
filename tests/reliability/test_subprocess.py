"""`python -m tsvmerge.cli` as a real process: exit status, no traceback, and signals during a write.

The signal cases run the command through a small wrapper script that makes the write stall deterministically: the
state dict is fully written to the temporary file, a "ready" file appears, and the process sleeps until signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.contract import (
    Checkpoints,
    assert_rejected,
    malicious_checkpoint,
    no_leftovers,
    snapshot,
)

REPO = Path(__file__).resolve().parents[2]

STALLING_WRITER = """\
import sys, time
from pathlib import Path

import torch

real_save = torch.save


def stalling_save(obj, path, *args, **kwargs):
    real_save(obj, path, *args, **kwargs)  # the temporary file is complete now
    Path(sys.argv[1]).touch()
    time.sleep(120)


torch.save = stalling_save
from tsvmerge.cli import main

sys.exit(main(sys.argv[2:]))
"""


def _default_signals() -> None:
    """In the child: SIGINT handled as in a terminal, even when the test runner was started in the background
    (where the shell ignores SIGINT and Python would then keep ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONDONTWRITEBYTECODE": "1"}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsvmerge.cli", *argv], capture_output=True, text=True,
                          timeout=120, env=_env(), cwd=REPO)


def test_non_finite_input_in_a_real_process(ckpts: Checkpoints, tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in ckpts.fts[0].items()}
    state["model.visual.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = ckpts.write("diverged.pt", state)
    before = snapshot(tmp_path)
    done = _run(ckpts.merge_argv("sum", tmp_path / "merged.pt", finetuned=[bad, ckpts.finetuned[1]]))
    assert_rejected(done.returncode, done.stdout, done.stderr, "tsvmerge", str(bad), "model.visual.conv1.weight")
    assert snapshot(tmp_path) == before


def test_malicious_pickle_never_runs_in_a_real_process(ckpts: Checkpoints, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = malicious_checkpoint(ckpts.root / "evil.pt", marker, writer="pickle.dump")
    before = snapshot(tmp_path)
    done = _run(ckpts.merge_argv("ties", tmp_path / "merged.pt", finetuned=[ckpts.finetuned[0], bad]))
    assert_rejected(done.returncode, done.stdout, done.stderr, "tsvmerge", str(bad), "refusing")
    assert not marker.exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_write_leaves_no_temporary_file(signum: int, status: int, ckpts: Checkpoints,
                                                        tmp_path: Path) -> None:
    wrapper = tmp_path / "stalling_writer.py"
    wrapper.write_text(STALLING_WRITER)
    ready = tmp_path / "ready"
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(ckpts.root)
    process = subprocess.Popen(
        [sys.executable, str(wrapper), str(ready), *ckpts.merge_argv("sum", out / "merged.pt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
        preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.05)
        assert [p.name for p in out.iterdir()] != [], "the temporary file exists while writing"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, stderr
    assert "Traceback" not in stdout + stderr, stderr
    assert list(out.iterdir()) == [], "neither the output nor a temporary file may remain"
    assert no_leftovers(tmp_path) == []
    assert snapshot(ckpts.root) == before
