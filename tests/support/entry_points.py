"""Run the repository's entry-point scripts in-process (main.py through Hydra's own ``@hydra.main``, or any script
through ``runpy``), so tests can count calls and patch the library; and read the JSON files they write."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "main.py"


def run_script(script: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python <script> <args>`` in this process (so tests can count calls); returns the exit status."""
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python main.py <args>`` in this process; returns the exit status."""
    return run_script(MAIN, args, monkeypatch)


def load(path: Path) -> dict:
    return json.loads(path.read_text())
