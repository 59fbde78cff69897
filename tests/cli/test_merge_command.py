"""`tsvmerge merge`: the dataset-free command line on state-dict files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.support import spec_reference as ref
from tests.support.checkpoints import deltas, flat, make_checkpoints
from tsvmerge.checkpoints.tall_mask_files import load_tall_masks
from tsvmerge.cli import main

IN_PROJ = "model.visual.transformer.resblocks.0.attn.in_proj_weight"


@pytest.fixture()
def files(tmp_path):
    pre, fts = make_checkpoints(num_tasks=3, seed=1)
    torch.save(pre, tmp_path / "zeroshot.pt")
    paths = []
    for i, ft in enumerate(fts):
        path = tmp_path / f"ft{i}.pt"
        torch.save(ft, path)
        paths.append(str(path))
    return tmp_path, pre, fts, paths


def _run(*argv):
    return main(["merge", "--quiet", *argv])


def test_task_arithmetic_with_alpha(files, capsys):
    tmp, pre, fts, paths = files
    out = tmp / "merged.pt"
    assert _run("--method", "sum", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths,
                "--out", str(out), "--alpha", "0.3") == 0
    merged = torch.load(out, weights_only=True)
    assert set(merged) == set(pre)
    assert torch.allclose(merged[IN_PROJ], pre[IN_PROJ] + 0.3 * deltas(pre, fts, IN_PROJ).sum(0), atol=1e-6)
    assert torch.equal(merged["model.num_batches_tracked"], pre["model.num_batches_tracked"])
    printed = capsys.readouterr().out
    assert "merged 3 tasks with sum" in printed and "peak" in printed


def test_tsvm_to_safetensors_with_sti_report(files, capsys):
    tmp, pre, fts, paths = files
    out = tmp / "merged.safetensors"
    assert _run("--method", "TSVM", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths,
                "--out", str(out), "--svd", "exact", "--report-sti", "--sti-out", str(tmp / "sti.json"),
                "--device", "cpu") == 0
    merged = load_file(out)
    expected = pre[IN_PROJ] + ref.tsvm(list(deltas(pre, fts, IN_PROJ))).float()
    assert torch.allclose(merged[IN_PROJ], expected, atol=1e-5)
    printed = capsys.readouterr().out
    assert "Singular Task Interference" in printed and "model.visual.transformer.resblocks.0" in printed
    sti = json.loads((tmp / "sti.json").read_text())
    assert set(sti["per_entry"]) == {IN_PROJ, "model.visual.transformer.resblocks.0.mlp.c_proj.weight"}
    assert sti["per_entry"][IN_PROJ]["after"] < 1e-4 * sti["per_entry"][IN_PROJ]["before"]


def test_set_passes_method_parameters(files):
    tmp, pre, fts, paths = files
    out = tmp / "ties.pt"
    assert _run("--method", "ties", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths,
                "--out", str(out), "--set", "k=50", "agg=sum") == 0
    merged = torch.load(out, weights_only=True)
    assert not torch.allclose(flat(merged), flat(pre))


def test_iso_cts_merges_published_layout_checkpoints(files, capsys):
    from tests.support import spec_beyond_reference as ref_beyond

    tmp, pre, fts, paths = files
    out = tmp / "iso_cts.pt"
    assert _run("--method", "iso_cts", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths,
                "--out", str(out), "--alpha", "0.5") == 0
    merged = torch.load(out, weights_only=True)
    expected = pre[IN_PROJ].double() + 0.5 * ref_beyond.iso_cts(list(deltas(pre, fts, IN_PROJ)))
    assert ref.relative_error(merged[IN_PROJ] - pre[IN_PROJ], expected - pre[IN_PROJ].double()) < 1e-4
    assert "merged 3 tasks with iso_cts" in capsys.readouterr().out


def test_cart_needs_its_settings_on_unnamed_checkpoints(files, capsys):
    tmp, pre, fts, paths = files
    common = ["--method", "cart", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths]
    assert _run(*common, "--out", str(tmp / "cart.pt")) == 2
    assert "--set prior=2.0 rank_ratio=0.12" in capsys.readouterr().err
    assert not (tmp / "cart.pt").exists()
    assert _run(*common, "--out", str(tmp / "cart.pt"), "--set", "prior=2.0", "rank_ratio=0.5") == 0
    assert torch.load(tmp / "cart.pt", weights_only=True).keys() == pre.keys()


def test_tsvc_writes_one_model_per_task_in_input_order(files, capsys):
    tmp, pre, fts, paths = files
    out = tmp / "tsvc"
    assert _run("--method", "TSVC", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths,
                "--out", str(out)) == 0
    for i in range(3):
        task = torch.load(out / f"task{i}.pt", weights_only=True)
        k = min(pre[IN_PROJ].shape) // 3
        expected = pre[IN_PROJ] + ref.rank_k(fts[i][IN_PROJ] - pre[IN_PROJ], k).float()
        assert torch.allclose(task[IN_PROJ], expected, atol=1e-5)
    assert "storage" in capsys.readouterr().out


def test_tall_mask_outputs_and_published_mask_file(files):
    tmp, pre, fts, paths = files
    out, masks = tmp / "tall", tmp / "TALL_mask_3task.npy"
    assert _run("--method", "tall_mask", "--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths,
                "--out", str(out), "--lambda", "0.3", "--save-masks", str(masks),
                "--names", "CarsVal", "DTDVal", "MNISTVal") == 0
    saved = load_tall_masks(masks, flat(pre).numel())
    assert list(saved) == ["Cars", "DTD", "MNIST"]
    merged_tv = sum(flat(ft) - flat(pre) for ft in fts)
    for i, name in enumerate(saved):
        expected = (flat(pre) - flat(fts[i])).abs() > (flat(pre) + merged_tv - flat(fts[i])).abs() * 0.3
        assert np.array_equal(saved[name], expected.numpy())
        task = torch.load(out / f"task{i}.pt", weights_only=True)
        assert torch.allclose(flat(task), flat(pre) + merged_tv * expected, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--method", "TSVM3"], "unknown method 'TSVM3'; available"),
    (["--method", "sum", "--svd", "exact"], "does not use an SVD"),
    (["--method", "TSVC"], "must be a folder"),
    (["--method", "ties", "--set", "bogus=1"],
     "unknown method ties key bogus; valid method ties keys: name, full_name, svd_keys, average_keys"),
])
def test_errors_are_clear(files, capsys, argv, message):
    tmp, _, _, paths = files
    out = "out.pt" if "TSVC" not in argv else str(tmp / "x.pt")
    code = _run("--pretrained", str(tmp / "zeroshot.pt"), "--finetuned", *paths, "--out", out, *argv)
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_says_how_to_get_one(files, capsys):
    tmp, _, _, paths = files
    code = _run("--method", "sum", "--pretrained", str(tmp / "nope.pt"), "--finetuned", *paths,
                "--out", str(tmp / "o.pt"))
    assert code == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "nik-dim/tall_masks" in err


def test_console_entry_point_lists_methods():
    done = subprocess.run([sys.executable, "-m", "tsvmerge.cli", "methods"],
                          capture_output=True, text=True, check=True)
    names = ("TSVM", "TSVM_2", "TSVC", "ties", "tall_mask", "consensus", "mag_masking", "sum", "average", "zeroshot")
    for name in names:
        assert name in done.stdout
