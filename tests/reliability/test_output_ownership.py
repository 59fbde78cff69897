"""``tsvmerge merge`` never removes or overwrites what it did not write; ambiguous inputs and rules that match
nothing are refused; a run killed mid-write leaves a temporary folder that the next run recognizes and removes.

User files are planted in ``--out``, in ``OUT/task0/``, and a whole ``save_pretrained`` folder is given as
``--out``; each is compared byte for byte afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.reliability.contract import Checkpoints, assert_rejected, snapshot
from tsvmerge import cli
from tsvmerge.checkpoints.output_folders import MANIFEST_NAME, find_stale_temporaries, read_manifest

transformers = pytest.importorskip("transformers")
from tests.support.hf_models import make_folders  # noqa: E402  (needs transformers)

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """θ0 and two fine-tunes as sharded Llama-style model folders (read-only: copy before changing)."""
    return make_folders(tmp_path_factory.mktemp("llama"), num_tasks=2)


def _merge_argv(folders: tuple[Path, list[Path]], method: str, out: Path, *extra: str) -> list[str]:
    pre, fts = folders
    return ["merge", "--quiet", "--device", "cpu", "--method", method, "--pretrained", str(pre),
            "--finetuned", *map(str, fts), "--out", str(out), *extra]


def _rejected(argv: list[str], capsys: pytest.CaptureFixture, *names: str) -> str:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return assert_rejected(code, captured.out, captured.err, "tsvmerge", *names)


# ------------------------------------------------------------------------------------------- who owns --out

def test_out_aimed_at_another_model_folder_is_refused(folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A save_pretrained folder holds only weight files and θ0's file names: it is still not tsvmerge's."""
    other = make_folders(tmp_path / "other", num_tasks=0)[0]
    before = snapshot(tmp_path)
    line = _rejected(_merge_argv(folders, "sum", other), capsys, str(other), "not written by tsvmerge")
    assert "config.json" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("method", ["sum", "TSVC"])
def test_a_previous_merge_is_replaced_and_only_its_files_are_removed(
        method: str, folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "merged"
    assert cli.main(_merge_argv(folders, method, out, "--max-shard-size", "40KB")) == 0
    manifest = read_manifest(out)
    assert manifest is not None and manifest["command"][:2] == ["tsvmerge", "merge"]
    assert [item["argument"] for item in manifest["inputs"]] == [str(folders[0]), *map(str, folders[1])]
    listed = set(manifest["files"])
    assert listed == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    # The user adds files of their own, at the top and (task-specific outputs) inside a task folder.
    planted = [out / "NOTES.md", out / "eval" / "scores.json"]
    if method == "TSVC":
        planted.append(out / "task0" / "my_eval.txt")
    for path in planted:
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"the user's {path.name}")
    user_files = {str(p.relative_to(out)): p.read_bytes() for p in planted}
    # A re-run with one shard instead of several: the old shards go, the user's files stay byte for byte.
    assert cli.main(_merge_argv(folders, method, out, "--alpha", "0.5")) == 0
    capsys.readouterr()
    assert {name: (out / name).read_bytes() for name in user_files} == user_files
    weights = sorted(p.name for p in out.rglob("*.safetensors"))
    assert weights == ["model.safetensors"] * (2 if method == "TSVC" else 1)
    assert not list(out.rglob("*.index.json"))
    manifest = read_manifest(out)
    assert manifest is not None and not set(manifest["files"]) & set(user_files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_user_files_that_the_merge_would_overwrite_are_refused(folders, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "merged"
    assert cli.main(_merge_argv(folders, "TSVC", out)) == 0
    (out / "task5").mkdir()
    (out / "task5" / "config.json").write_text("the user's own config")
    before = snapshot(tmp_path)
    _rejected(_merge_argv(folders, "TSVC", out), capsys, str(out), "task5/config.json")
    assert snapshot(tmp_path) == before


def test_task_folders_without_a_record_are_refused(folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """OUT/task0/ made by the user (no manifest anywhere): nothing is replaced."""
    out = tmp_path / "merged"
    (out / "task0").mkdir(parents=True)
    (out / "task0" / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    _rejected(_merge_argv(folders, "TSVC", out), capsys, str(out), "task0/notes.txt")
    assert snapshot(tmp_path) == before


def test_state_dict_task_folders_keep_user_files(ckpts: Checkpoints, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tsvc"
    assert cli.main(ckpts.merge_argv("TSVC", out)) == 0
    (out / "README.txt").write_text("what these are")
    assert cli.main(ckpts.merge_argv("TSVC", out, finetuned=ckpts.finetuned[:2])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "task0.pt", "task1.pt", MANIFEST_NAME]
    assert (out / "README.txt").read_text() == "what these are"
    (out / "task7.pt").write_bytes(b"the user's own model")
    before = snapshot(tmp_path)
    _rejected(ckpts.merge_argv("TSVC", out), capsys, "task7.pt")
    assert snapshot(tmp_path) == before


def test_a_damaged_manifest_does_not_grant_ownership(folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "merged"
    assert cli.main(_merge_argv(folders, "sum", out)) == 0
    for text in ("not json", json.dumps({"written_by": "tsvmerge", "files": ["../escape.txt"]})):
        (out / MANIFEST_NAME).write_text(text)
        before = snapshot(tmp_path)
        _rejected(_merge_argv(folders, "sum", out), capsys, "not written by tsvmerge")
        assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------- ambiguous inputs

def test_a_folder_with_two_sets_of_weights_is_refused(folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Shards with their index beside a model.safetensors of other weights: from_pretrained loads the latter."""
    import shutil

    from safetensors.torch import save_file

    pre, fts = folders
    mixed = tmp_path / "mixed"
    shutil.copytree(fts[0], mixed)
    save_file({"model.embed_tokens.weight": torch.zeros(128, 64)}, str(mixed / "model.safetensors"))
    line = _rejected(["merge", "--quiet", "--method", "sum", "--pretrained", str(pre), "--finetuned", str(mixed),
                      str(fts[1]), "--out", str(tmp_path / "out")], capsys,
                     "model.safetensors", "model.safetensors.index.json", "from_pretrained would load")
    assert "remove" in line
    (mixed / "model.safetensors").unlink()
    (mixed / "pytorch_model.bin.index.json").write_text((mixed / "model.safetensors.index.json").read_text())
    _rejected(["merge", "--quiet", "--method", "sum", "--pretrained", str(pre), "--finetuned", str(mixed),
               str(fts[1]), "--out", str(tmp_path / "out")], capsys, "pytorch_model.bin.index.json")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ rules that match nothing

@pytest.mark.parametrize(("extra", "names"), [
    (["--svd-keys", "no_such_matrix"], ["--svd-keys", "no_such_matrix", "model.layers.0"]),
    (["--average-keys", "no_such_matrix"], ["--average-keys", "no_such_matrix"]),
    (["--set", "svd_keys=no_such_matrix"], ["no_such_matrix"]),
])
def test_entry_rules_that_match_nothing_are_refused(extra: list[str], names: list[str], folders, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    _rejected(_merge_argv(folders, "TSVM", tmp_path / "out", *extra), capsys, *names)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["sum", "ties", "average"])
def test_entry_rules_for_methods_that_do_not_use_them_are_refused(method: str, ckpts: Checkpoints, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    _rejected(ckpts.merge_argv(method, tmp_path / "m.pt", "--svd-keys", "in_proj"), capsys, "--svd-keys", method)
    _rejected(ckpts.merge_argv(method, tmp_path / "m.pt", "--set", "average_keys=in_proj"), capsys,
              "average_keys", method)
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------------------------- killed mid-write, re-run

_KILLABLE = """
import pathlib, sys, time
from tsvmerge.checkpoints import safetensors_stream
real = safetensors_stream.SafetensorsStreamWriter.write
def write(self, key, value):
    real(self, key, value)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(300)
safetensors_stream.SafetensorsStreamWriter.write = write
from tsvmerge.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_mid_write_then_rerun(folders, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "merged"
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(ready), *_merge_argv(folders, "sum", out)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:] if process.stderr else ""
            assert time.monotonic() < deadline, "the merge never started writing"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        if process.stderr:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".merged.") and leftovers[0].name.endswith(".tmp")
    stale = find_stale_temporaries([tmp_path])
    assert [s.path for s in stale] == leftovers and not stale[0].running
    assert stale[0].destination == out.absolute()
    # tsvmerge doctor lists it (the configuration it checks is the packaged demo's).
    cli.main(["doctor", "--outputs", str(tmp_path), "model=demo"])
    said = capsys.readouterr().out
    assert "temporary folders of interrupted merges (1):" in said and f"{leftovers[0]} (for {out}" in said
    # The next run to the same --out removes it, says so, and writes the folder.
    assert cli.main(_merge_argv(folders, "sum", out)) == 0
    said = capsys.readouterr().out
    assert f"removed {leftovers[0]}" in said
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert read_manifest(out) is not None and (out / "config.json").is_file()


def test_a_stale_temporary_holding_other_files_keeps_them(folders, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "merged"
    leftover = tmp_path / ".merged.0123456789ab.tmp"
    leftover.mkdir()
    (leftover / MANIFEST_NAME).write_text(json.dumps({
        "written_by": "tsvmerge", "files": ["model.safetensors"], "temporary_for": str(out.absolute()),
        "pid": 2**22 + 12345, "host": os.uname().nodename}))
    (leftover / "model.safetensors").write_bytes(b"partial")
    (leftover / "mine.txt").write_text("not tsvmerge's")
    assert cli.main(_merge_argv(folders, "sum", out)) == 0
    assert "also holds files tsvmerge did not write (mine.txt)" in capsys.readouterr().out
    assert sorted(p.name for p in leftover.iterdir()) == ["mine.txt"]
