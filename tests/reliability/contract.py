"""Shared checks of the bad-input contract: exit status, one message naming the input, no traceback, no temporary or
partial file, inputs unchanged, nothing non-finite written."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` (links as ``-> target``, directories as ``/``)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "/"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def error_lines(err: str, prog: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]


def assert_rejected(code: int, out: str, err: str, prog: str, *names: str, status: int = 2) -> str:
    """Exit ``status``, exactly one ``<prog>: error:`` line, naming each of ``names``, and no traceback."""
    assert code == status, f"exit {code}, stderr: {err}"
    assert "Traceback" not in out + err, err
    lines = error_lines(err, prog)
    assert len(lines) == 1, err
    message = err[err.index(lines[0]):]
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return lines[0]


def assert_all_finite(path: Path) -> None:
    """Every floating tensor of the written state dict (or of each task<i>.pt of a folder) is finite."""
    files = sorted(path.glob("*.pt")) if path.is_dir() else [path]
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(file)
        else:
            state = torch.load(file, weights_only=True)
        for key, value in state.items():
            if value.is_floating_point():
                assert torch.isfinite(value.float()).all(), f"{file}: {key} is not finite"


def no_leftovers(folder: Path) -> list[str]:
    """Hidden or temporary files / folders below ``folder`` (what an interrupted write would leave)."""
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.name.startswith(".") or p.name.endswith((".tmp", ".old", ".partial"))]


@dataclass
class Checkpoints:
    """θ0 and three fine-tuned state dicts (the engine tests' tiny CLIP-like keys) as files in ``root``."""

    root: Path
    pretrained: Path
    finetuned: list[Path]
    pre: dict
    fts: list[dict]

    def merge_argv(self, method: str, out: Path | str, *extra: str, finetuned: list[Path] | None = None,
                   pretrained: Path | None = None) -> list[str]:
        files = [str(p) for p in (finetuned if finetuned is not None else self.finetuned)]
        return ["merge", "--quiet", "--device", "cpu", "--method", method,
                "--pretrained", str(pretrained or self.pretrained), "--finetuned", *files, "--out", str(out), *extra]

    def write(self, name: str, state: dict) -> Path:
        path = self.root / name
        torch.save(state, path)
        return path


class Evil:
    """Unpickling this runs ``func(*args)`` under full pickle: the payload a safe loader must refuse."""

    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def malicious_checkpoint(path: Path, marker: Path, writer: str = "torch.save") -> Path:
    """A state dict one of whose entries, unpickled, would create ``marker``."""
    content = {"model.visual.ln_post.weight": torch.zeros(8), "boom": Evil(os.system, (f"touch {marker}",))}
    if writer == "torch.save":
        torch.save(content, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(content, fh)
    return path
