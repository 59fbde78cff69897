"""Demo checkpoints made with other settings (another seed, an older demo) are moved aside, never reused or
deleted: fine-tuning skips tasks whose checkpoint exists."""

from __future__ import annotations

from pathlib import Path

from tsvmerge.recipes.demo import STAMP_NAME, _set_aside_stale, _write_stamp


def _folder(root: Path) -> Path:
    folder = root / "demo"
    (folder / "DigitsVal").mkdir(parents=True)
    (folder / "DigitsVal" / "nonlinear_finetuned.pt").write_bytes(b"x")
    (folder / "pretrained_clip.safetensors").write_bytes(b"y")
    return folder


def test_same_settings_keep_the_checkpoints(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _write_stamp(folder, {"seed": 0, "pretrain": {"steps": 600}})
    _set_aside_stale(folder, {"seed": 0, "pretrain": {"steps": 600}})
    assert (folder / "DigitsVal" / "nonlinear_finetuned.pt").is_file()


def test_other_settings_or_no_record_move_them_aside(tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path)
    _write_stamp(folder, {"seed": 0})
    _set_aside_stale(folder, {"seed": 1})
    assert not folder.exists()
    moved = tmp_path / "demo.stale-1"
    assert (moved / "DigitsVal" / "nonlinear_finetuned.pt").read_bytes() == b"x"
    assert "moved to" in capsys.readouterr().out
    # Checkpoints without a record (made by an older demo) are moved too, next to the first ones.
    folder = _folder(tmp_path)
    _set_aside_stale(folder, {"seed": 1})
    assert (tmp_path / "demo.stale-2" / "pretrained_clip.safetensors").is_file() and not folder.exists()
    assert not (tmp_path / "demo.stale-2" / STAMP_NAME).exists()


def test_empty_or_missing_folder_is_left_alone(tmp_path: Path) -> None:
    _set_aside_stale(tmp_path / "absent", {"seed": 0})
    (tmp_path / "empty").mkdir()
    _set_aside_stale(tmp_path / "empty", {"seed": 0})
    assert (tmp_path / "empty").is_dir()
