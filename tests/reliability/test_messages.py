"""Answers that used to mislead (issue 21): each now names the input and says what is wrong with it, in one line.

- ``--config-dir DIR``: a DIR that is not a folder is an error (it was skipped with a warning), and a config.yaml in
  DIR replaces the packaged one (it was never read, although DIR is "searched first");
- a malformed hub id given to ``tsvmerge merge`` is called that, not answered with the help on ViT checkpoints;
- a checkpoint or shard this user may not read is reported as such, not as "truncated or damaged";
- under torchrun, only the process that failed reports its error, not its peers' lost connections.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability.contract import Checkpoints, assert_rejected, no_leftovers
from tests.reliability.test_entry_points import run_script
from tsvmerge.cli import main as cli_main
from tsvmerge.config import compose_config
from tsvmerge.evaluation.run_settings import settings_from_config
from tsvmerge.recipes.configs import config_source

REPO = Path(__file__).resolve().parents[2]
SRC = str(REPO / "src")

# A primary config of main.py other than the packaged one: another model, another method, another number of tasks.
OWN_CONFIG = """\
defaults:
  - main_schema
  - model: ViT-B-16
  - method: TSVM
  - _self_

num_tasks: 14
"""


def script_main(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``<script>.main(args)`` of an argparse entry point (finetune.py, eval_single_task.py)."""
    monkeypatch.setattr(logging.root, "handlers", [])
    return runpy.run_path(str(REPO / script), run_name=Path(script).stem)["main"](args)


@pytest.fixture()
def own_config(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "config.yaml").write_text(OWN_CONFIG)
    return folder


# ------------------------------------------------------------------------------------------------ --config-dir

@pytest.mark.parametrize("kind", ["missing", "file"])
def test_doctor_rejects_config_dir_that_is_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     kind: str) -> None:
    given = tmp_path / "nowhere"
    if kind == "file":
        given.write_text("model: demo\n")
    code = cli_main(["doctor", "--config-dir", str(given)])
    out, err = capsys.readouterr()
    line = assert_rejected(code, out, err, "tsvmerge", str(given), "--config-dir")
    assert ("is a file" if kind == "file" else "does not exist") in line
    assert len(err.strip().splitlines()) == 1, err
    assert out == ""  # no report on the default configuration


def test_doctor_reads_config_yaml_of_config_dir(own_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["doctor", "--config-dir", str(own_config)])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert out.splitlines()[0].startswith("tsvmerge doctor: TSVM on ViT-B-16, 14 tasks"), out


def test_compose_searches_config_dirs_first_in_order(own_config: Path, tmp_path: Path) -> None:
    """config.yaml from the first extra folder that has one; group options from the extra folders before the
    packaged ones, the packaged ones still found."""
    packaged = config_source(REPO / "config")
    settings = settings_from_config(compose_config(packaged.with_extra([own_config]), "config"))
    assert (settings.model.name, settings.method, settings.num_tasks) == ("ViT-B-16", "TSVM", 14)

    other = tmp_path / "other"
    (other / "model").mkdir(parents=True)
    (other / "model" / "ViT-B-16.yaml").write_text("name: ViT-B-16\narch: ViT-B-16\nquick_gelu: false\n")
    (other / "config.yaml").write_text(OWN_CONFIG.replace("num_tasks: 14", "num_tasks: 20"))
    cfg = compose_config(packaged.with_extra([other, own_config]), "config")
    assert cfg.num_tasks == 20 and cfg.model.quick_gelu is False
    cfg = compose_config(packaged.with_extra([own_config, other]), "config")
    assert cfg.num_tasks == 14 and cfg.model.quick_gelu is False  # own_config has no model/: other's is found
    (other / "config.yaml").unlink()  # group options only: still searched before the packaged ones
    cfg = compose_config(packaged.with_extra([other]), "config", ["model=ViT-B-16"])
    assert cfg.num_tasks == 8 and cfg.model.quick_gelu is False
    assert compose_config(packaged, "config", ["model=ViT-B-16"]).model.quick_gelu is True  # packaged, unchanged


def test_main_py_reads_config_yaml_of_config_dir(own_config: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_script("main.py", ["--config-dir", str(own_config), "--cfg", "job"], monkeypatch) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^num_tasks: 14$", out, re.M) and re.search(r"^  name: ViT-B-16$", out, re.M), out + err
    assert re.search(r"^  name: TSVM$", out, re.M), out  # method/TSVM.yaml: from the packaged folder
    assert sys.argv[1:] == ["--config-dir", str(own_config), "--cfg", "job"]  # restored after Hydra's run


def test_main_py_searches_config_dir_first_for_group_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "conf"
    (conf / "method").mkdir(parents=True)
    (conf / "method" / "ties.yaml").write_text("name: ties\nk: 33\n")
    assert run_script("main.py", ["--cfg", "job", "method=ties", "--config-dir", str(conf)], monkeypatch) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^  k: 33(\.0)?$", out, re.M) and re.search(r"^num_tasks: 8$", out, re.M), out + err


@pytest.mark.parametrize("script", ["main.py", "analyze.py", "finetune.py", "eval_single_task.py"])
def test_scripts_reject_missing_config_dir(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Hydra scripts (main.py, analyze.py) run as ``python <script>``, argparse ones through their ``main``."""
    missing = tmp_path / "nowhere"
    if script in ("main.py", "analyze.py"):
        code = run_script(script, ["--config-dir", str(missing), "--cfg", "job"], monkeypatch)
    else:
        code = script_main(script, ["--config-dir", str(missing), "--model", "demo"], monkeypatch)
    out, err = capsys.readouterr()
    assert_rejected(code, out, err, script, str(missing), "does not exist")
    assert len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------- malformed hub ids

@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, an empty hub cache, relative arguments resolved in an empty folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


MALFORMED = ["org/base@", "org/na me", "org//x", "org/name@rev@x", "name@main", "org/na:me"]


@pytest.mark.parametrize("argument", MALFORMED)
@pytest.mark.parametrize("flag", ["--pretrained", "--finetuned"])
def test_malformed_hub_id_is_called_so(ckpts: Checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       offline: None, argument: str, flag: str) -> None:
    out_path = tmp_path / "merged.pt"
    if flag == "--pretrained":
        argv = ckpts.merge_argv("sum", out_path, pretrained=argument)  # type: ignore[arg-type]
    else:
        argv = ckpts.merge_argv("sum", out_path, finetuned=[ckpts.finetuned[0], argument])  # type: ignore[list-item]
    code = cli_main(argv)
    out, err = capsys.readouterr()
    line = assert_rejected(code, out, err, "tsvmerge", repr(argument), "not a local file or folder",
                           "nor a valid hub id", "org/name@revision")
    assert len(err.strip().splitlines()) == 1, err
    assert "How to obtain the checkpoints" not in err
    assert line.count("(") >= 2  # what is wrong with it, then the valid form
    assert not out_path.exists()


@pytest.mark.parametrize("argument", ["missing.pt", "/org/x", "a/b/c", "sub/na me"])
def test_missing_files_keep_the_checkpoint_help(ckpts: Checkpoints, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], offline: None,
                                                argument: str) -> None:
    (Path.cwd() / "sub").mkdir()  # "sub/na me": its folder exists here, so it is a path
    code = cli_main(ckpts.merge_argv("sum", tmp_path / "merged.pt", pretrained=argument))  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert_rejected(code, out, err, "tsvmerge", "does not exist", "How to obtain the checkpoints")
    assert "hub id" not in err


def test_valid_hub_id_not_cached_offline(ckpts: Checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         offline: None) -> None:
    code = cli_main(ckpts.merge_argv("sum", tmp_path / "merged", pretrained="org/base@v1"))  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert_rejected(code, out, err, "tsvmerge", "org/base@v1", "HF_HUB_OFFLINE", "not in the local Hugging Face")
    assert "nor a valid hub id" not in err


# ---------------------------------------------------------------------------------------- unreadable inputs

@pytest.fixture()
def deny(monkeypatch: pytest.MonkeyPatch):
    """``deny(path)``: reading ``path`` fails as it does for a user without read permission (the tests run as root,
    for whom chmod 000 changes nothing): Python's open raises PermissionError; safetensors' reader says "No such
    file or directory", as it really does for EACCES."""
    import safetensors

    denied: set[str] = set()
    real_open, real_safe_open = builtins.open, safetensors.safe_open

    def is_denied(file: object) -> bool:
        return isinstance(file, str | os.PathLike) and os.path.abspath(os.fspath(file)) in denied

    def fake_open(file, *args, **kwargs):
        if is_denied(file):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, *args, **kwargs)

    def fake_safe_open(file, *args, **kwargs):
        if is_denied(file):
            raise FileNotFoundError(f"No such file or directory: {file}")
        return real_safe_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(safetensors, "safe_open", fake_safe_open)
    return lambda path: denied.add(os.path.abspath(path))


def assert_permission_message(code: int, out: str, err: str, path: Path) -> None:
    line = assert_rejected(code, out, err, "tsvmerge", repr(str(path)), "permission denied", "check its permissions")
    assert len(err.strip().splitlines()) == 1, err
    assert "damaged" not in err and "truncated" not in err and "No such file" not in err, line


def _write_checkpoint(ckpts: Checkpoints, suffix: str) -> Path:
    """The second fine-tuned model saved again as ``locked<suffix>`` (safetensors or torch format)."""
    from safetensors.torch import save_file

    target = ckpts.root / f"locked{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in ckpts.fts[1].items()}, str(target))
    else:
        torch.save(ckpts.fts[1], target)
    return target


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_unreadable_state_dict_file(ckpts: Checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str], deny,
                                    suffix: str) -> None:
    target = _write_checkpoint(ckpts, suffix)
    deny(target)
    out_path = tmp_path / "merged.pt"
    code = cli_main(ckpts.merge_argv("sum", out_path, finetuned=[ckpts.finetuned[0], target]))
    out, err = capsys.readouterr()
    assert_permission_message(code, out, err, target)
    assert not out_path.exists() and not no_leftovers(tmp_path)


def test_unreadable_shard_of_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], deny) -> None:
    from tests.support.hf_models import make_folders

    pre, (ft,) = make_folders(tmp_path / "in", num_tasks=1)
    shards = sorted(set(json.loads((ft / "model.safetensors.index.json").read_text())["weight_map"].values()))
    shard = ft / shards[len(shards) // 2]
    deny(shard)
    capsys.readouterr()  # transformers' progress bars
    out_path = tmp_path / "merged"
    code = cli_main(["merge", "--quiet", "--device", "cpu", "--method", "sum", "--pretrained", str(pre),
                     "--finetuned", str(ft), "--out", str(out_path)])
    out, err = capsys.readouterr()
    assert_permission_message(code, out, err, shard)
    assert not out_path.exists() and not no_leftovers(tmp_path)


def test_unreadable_index_of_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.hf_models import make_folders

    pre, (ft,) = make_folders(tmp_path / "in", num_tasks=1)
    index = ft / "model.safetensors.index.json"
    real_read_text = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        if self == index:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    capsys.readouterr()
    out_path = tmp_path / "merged"
    code = cli_main(["merge", "--quiet", "--device", "cpu", "--method", "sum", "--pretrained", str(pre),
                     "--finetuned", str(ft), "--out", str(out_path)])
    out, err = capsys.readouterr()
    assert_permission_message(code, out, err, index)
    assert not out_path.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_chmod_000_checkpoint(ckpts: Checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              suffix: str) -> None:
    target = _write_checkpoint(ckpts, suffix)
    target.chmod(0)
    try:
        code = cli_main(ckpts.merge_argv("sum", tmp_path / "merged.pt", finetuned=[ckpts.finetuned[0], target]))
    finally:
        target.chmod(0o644)
    out, err = capsys.readouterr()
    assert_permission_message(code, out, err, target)


# ------------------------------------------------------------------------------------------ under torchrun

def _poison(folder: Path, key: str) -> None:
    """Make entry ``key`` of a model folder infinite in its shard (the folder's only change)."""
    from safetensors.torch import load_file, save_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = folder / index[key]
    tensors = load_file(shard)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("inf")
    save_file(tensors, str(shard), metadata={"format": "pt"})


# The entries are split in key order: lm_head.weight (first) is merged by rank 0, model.norm.weight (last) by rank 1.
@pytest.mark.parametrize("key", ["model.norm.weight", "lm_head.weight"], ids=["rank1-fails", "rank0-fails"])
def test_torchrun_reports_the_failing_rank_only(tmp_path: Path, key: str) -> None:
    from tests.support.hf_models import make_folders

    pre, (ft,) = make_folders(tmp_path / "in", num_tasks=1)
    _poison(ft, key)
    out_path = tmp_path / "merged"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "tsvmerge", "merge", "--quiet", "--method", "sum", "--pretrained", str(pre),
                          "--finetuned", str(ft), "--max-shard-size", "40KB", "--device", "cpu",
                          "--out", str(out_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    err = run.stderr
    assert run.returncode != 0, err[-3000:]
    errors = [line for line in (run.stdout + err).splitlines() if line.startswith("tsvmerge: error:")]
    assert len(errors) == 1, err[-3000:]
    assert str(ft) in errors[0] and key in errors[0] and "infinite" in errors[0]
    assert "Connection closed" not in err and "No such file" not in err and "tsvmerge: terminated" not in err
    # torchrun prints its own traceback (ChildFailedError, with a summary); none comes from a tsvmerge process.
    assert err.count("Traceback (most recent call last)") <= 1 and "src/tsvmerge" not in err, err[-3000:]
    assert re.search(r"exitcode\s*:\s*2\b", err), err[-3000:]  # the failing process's status, in the summary
    assert not out_path.exists()
    if key == "model.norm.weight":  # rank 0, which owns the temporary folder, removes it after rank 1 failed
        assert not no_leftovers(tmp_path)
    # (When rank 0 fails first, rank 1 may still create the temporary folder again, after rank 0 removed it, to write
    # its shards: recipes.merge's business, not the messages'.)


def test_first_failure_is_settled_through_the_store() -> None:
    """The store protocol itself: the first process to record a failure reports it, the others get its status."""
    import torch.distributed as dist

    from tsvmerge.merging.collective import FAILURE_KEY, ProcessGroupCollective

    def collective(rank: int, store) -> ProcessGroupCollective:
        c = ProcessGroupCollective.__new__(ProcessGroupCollective)
        c.device, c.rank, c.world_size, c._store = torch.device("cpu"), rank, 3, store
        return c

    store = dist.HashStore()
    first, second, third = collective(1, store), collective(0, store), collective(2, store)
    assert first.first_failure(ValueError("bad input"), 2) is None  # the cause: it reports
    assert store.get(FAILURE_KEY) == b"1 2"
    assert second.first_failure(RuntimeError("Connection closed by peer"), 2) == (1, 2)
    assert third.first_failure(FileNotFoundError(errno.ENOENT, "gone", "x"), 2) == (1, 2)
    assert first.first_failure(ValueError("bad input"), 2) is None  # asking again changes nothing
    assert collective(0, None).first_failure(ValueError("x"), 2) is None  # no store: every process reports
