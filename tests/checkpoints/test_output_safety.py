"""Output paths checked before work, atomic files and folders, unreadable and non-finite checkpoints."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from tsvmerge.checkpoints import CheckpointFormatError, open_state_dict
from tsvmerge.checkpoints.errors import CorruptCheckpointError, NonFiniteCheckpointError
from tsvmerge.checkpoints.output_folders import MANIFEST_NAME, OutputRecord, owned_directory
from tsvmerge.utils.files import OutputPathError, atomic_write, check_output_path
from tsvmerge.checkpoints.state_dict import check_finite


def test_atomic_write_removes_its_temporary_file_on_any_interruption(tmp_path: Path) -> None:
    target = tmp_path / "out.pt"

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_errors_name_the_destination_not_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.pt"

    def full(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, full)
    assert info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_owned_directory_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "models"
    with owned_directory(out, OutputRecord()) as folder:
        (folder / "task0.pt").write_text("old")
    with pytest.raises(RuntimeError), owned_directory(out, OutputRecord()) as folder:
        (folder / "task0.pt").write_text("new")
        raise RuntimeError("cut short")
    assert [p.name for p in tmp_path.iterdir()] == ["models"] and (out / "task0.pt").read_text() == "old"
    with owned_directory(out, OutputRecord()) as folder:
        (folder / "task0.pt").write_text("new")
        (folder / "task1.pt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["task0.pt", "task1.pt", MANIFEST_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_check_output_path(tmp_path: Path) -> None:
    source = tmp_path / "in.pt"
    source.write_text("x")
    os.link(source, tmp_path / "hard.pt")
    (tmp_path / "soft.pt").symlink_to(source)
    for alias in ("in.pt", "hard.pt", "soft.pt"):
        with pytest.raises(OutputPathError, match="overwrite that input"):
            check_output_path(tmp_path / alias, label="--out", inputs=[source])
    with pytest.raises(OutputPathError, match="existing directory"):
        check_output_path(tmp_path, label="--out")
    with pytest.raises(OutputPathError, match="is a file"):
        check_output_path(source / "sub" / "out.pt", label="--out")
    with pytest.raises(OutputPathError, match="existing file"):
        check_output_path(source, label="--out", folder=True)
    with pytest.raises(OutputPathError, match="holds the input"):
        check_output_path(tmp_path, label="--out", inputs=[source], folder=True)
    assert check_output_path(tmp_path / "new" / "deeper" / "out.pt") == tmp_path / "new" / "deeper" / "out.pt"
    assert not (tmp_path / "new").exists(), "checking creates nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.pt", "in.pt", "soft.pt"]


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", b"PK\x03\x04truncated zip"])
def test_unreadable_checkpoints(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        open_state_dict(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, CheckpointFormatError) and isinstance(info.value, pickle.UnpicklingError)


def test_check_finite() -> None:
    check_finite(torch.ones(3, dtype=torch.float16), "w", "a.pt")
    check_finite(torch.tensor([1, 2]), "steps", "a.pt")
    check_finite(torch.full((4,), 6e4, dtype=torch.float16), "big", "a.pt")  # large but finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        tensor = torch.zeros(5, dtype=torch.bfloat16)
        tensor[3] = bad
        with pytest.raises(NonFiniteCheckpointError, match=r"a\.pt holds 1 NaN or infinite value\(s\) in 'w'"):
            check_finite(tensor, "w", "a.pt")


def test_owned_directory_errors_name_the_folder_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "models"
    with pytest.raises(OSError) as info, owned_directory(out, OutputRecord()) as folder:
        atomic_write(folder / "task0.pt", lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert info.value.filename == str(out / "task0.pt")
    assert list(tmp_path.iterdir()) == []
