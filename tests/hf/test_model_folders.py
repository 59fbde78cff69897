"""Merging Hugging Face model folders: sharded inputs and outputs, loadable by transformers, exact math."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.support.hf_models import finetune, load, make_folders, save, tiny_llama
from tsvmerge.checkpoints.hf_folder import HFModelFolder
from tsvmerge.cli import main
from tsvmerge.merging import TaskVectors, apply_task_vector, merge


def _run(*argv):
    return main(["merge", "--quiet", *argv])


def _state(folder):
    with HFModelFolder(folder) as state:
        return {key: state[key].clone() for key in state}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("llama"))


def test_inputs_are_sharded(folders):
    pre, _ = folders
    assert len(list(pre.glob("model-*.safetensors"))) > 2
    state = HFModelFolder(pre)
    assert "model.embed_tokens.weight" in state and state.config["model_type"] == "llama"


def test_sum_is_theta0_plus_alpha_sum_of_task_vectors(folders, tmp_path):
    pre, fts = folders
    out = tmp_path / "merged"
    assert _run("--method", "sum", "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out", str(out),
                "--alpha", "0.7", "--max-shard-size", "50KB") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size <= 50_000 or len(load_file(p)) == 1 for p in shards)
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    theta0, thetas = _state(pre), [_state(ft) for ft in fts]
    merged = _state(out)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in merged.values())
    assert set(merged) == set(theta0)
    for key, base in theta0.items():
        expected = base + 0.7 * sum(theta[key] - base for theta in thetas)
        torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0)
    model = load(out)
    logits = model(torch.tensor([[1, 5, 7, 9]])).logits
    assert logits.shape == (1, 4, 128) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["TSVM", "ties"])
def test_folder_merge_equals_the_engine_on_plain_state_dicts(folders, tmp_path, method):
    pre, fts = folders
    out = tmp_path / method
    assert _run("--method", method, "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out", str(out),
                "--max-shard-size", "60KB", "--device", "cpu") == 0
    theta0 = _state(pre)
    result = merge(method, TaskVectors(theta0, [_state(ft) for ft in fts]), progress=False)
    expected = apply_task_vector(theta0, result.task_vector, 1.0)
    merged = _state(out)
    assert set(merged) == set(expected)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], atol=1e-6, rtol=0)
    if method == "TSVM":  # decoder LM rules: the embeddings and head are averaged, not put through an SVD
        taus = torch.stack([_state(ft)["lm_head.weight"] - theta0["lm_head.weight"] for ft in fts])
        torch.testing.assert_close(merged["lm_head.weight"], theta0["lm_head.weight"] + taus.mean(0), atol=1e-6,
                                   rtol=0)
    assert load(out)(torch.tensor([[3, 4]])).logits.isfinite().all()


def test_bfloat16_stays_bfloat16_unless_asked(tmp_path):
    pre, fts = make_folders(tmp_path / "in", dtype=torch.bfloat16, num_tasks=2)
    assert _run("--method", "sum", "--pretrained", str(pre), "--finetuned", *map(str, fts),
                "--out", str(tmp_path / "bf16")) == 0
    assert {v.dtype for v in _state(tmp_path / "bf16").values()} == {torch.bfloat16}
    assert load(tmp_path / "bf16").dtype == torch.bfloat16
    assert _run("--method", "sum", "--pretrained", str(pre), "--finetuned", *map(str, fts),
                "--out", str(tmp_path / "f32"), "--dtype", "float32") == 0
    merged = _state(tmp_path / "f32")
    assert {v.dtype for v in merged.values()} == {torch.float32}
    theta0, thetas = _state(pre), [_state(ft) for ft in fts]
    key = "model.layers.0.mlp.up_proj.weight"
    expected = theta0[key].float() + sum(t[key].float() - theta0[key].float() for t in thetas)
    torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0)
    assert json.loads((tmp_path / "f32" / "config.json").read_text()).get("dtype", "float32") == "float32"


def test_tied_embeddings_are_not_invented(tmp_path):
    pre, fts = make_folders(tmp_path / "in", num_tasks=2, tie=True)
    assert "lm_head.weight" not in HFModelFolder(pre)
    assert _run("--method", "TSVM", "--pretrained", str(pre), "--finetuned", *map(str, fts),
                "--out", str(tmp_path / "out")) == 0
    assert "lm_head.weight" not in _state(tmp_path / "out")
    model = load(tmp_path / "out")
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_head_saved_as_a_copy_of_the_embedding_stays_a_copy(tmp_path):
    """Both keys present and equal in every input: the merged head is the merged embedding."""
    from safetensors.torch import save_file

    pre, ft_folders = make_folders(tmp_path / "in", num_tasks=2)
    for folder in [pre, *ft_folders]:
        state = _state(folder)
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
        for shard in folder.glob("model*.safetensors*"):
            shard.unlink()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert _run("--method", "ties", "--pretrained", str(pre), "--finetuned", *map(str, ft_folders),
                "--out", str(tmp_path / "out"), "--max-shard-size", "40KB") == 0
    merged = _state(tmp_path / "out")
    assert torch.equal(merged["lm_head.weight"], merged["model.embed_tokens.weight"])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["lm_head.weight"] == index["model.embed_tokens.weight"]


def test_task_specific_methods_write_one_folder_per_task(folders, tmp_path):
    pre, fts = folders
    out = tmp_path / "tsvc"
    assert _run("--method", "TSVC", "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["task0", "task1", "task2", "tsvmerge_manifest.json"]
    theta0 = _state(pre)
    result = merge("TSVC", TaskVectors(theta0, [_state(ft) for ft in fts]), progress=False)
    expected = apply_task_vector(theta0, result.task_specific_vector(1), 1.0)
    merged = _state(out / "task1")
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], atol=1e-6, rtol=0)
    assert load(out / "task2")(torch.tensor([[1]])).logits.isfinite().all()


def test_added_tokens_stop_with_the_key_and_both_shapes(folders, tmp_path, capsys):
    pre, fts = folders
    bigger = tiny_llama()
    bigger.resize_token_embeddings(136)
    odd = save(finetune(bigger, 9), tmp_path / "added_tokens")
    assert _run("--method", "sum", "--pretrained", str(pre), "--finetuned", str(fts[0]), str(odd),
                "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "model.embed_tokens.weight: [136, 64] here vs [128, 64]" in err
    assert not (tmp_path / "out").exists()


def test_pytorch_bin_folders_are_read_through_the_safe_loader(folders, tmp_path):
    """``pytorch_model-*.bin`` shards with their index, as older save_pretrained wrote them."""
    pre, fts = folders
    ft = _state(fts[0])
    folder = tmp_path / "bin_ft"
    folder.mkdir()
    keys = sorted(ft)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: ft[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text((fts[0] / "config.json").read_text())
    state = HFModelFolder(folder)
    assert set(state) == set(ft) and torch.equal(state["lm_head.weight"], ft["lm_head.weight"])
    out = tmp_path / "out"
    assert _run("--method", "sum", "--pretrained", str(pre), "--finetuned", str(folder), "--out", str(out)) == 0
    torch.testing.assert_close(_state(out)["lm_head.weight"], ft["lm_head.weight"], atol=1e-6, rtol=0)


def test_svd_and_average_key_overrides(folders, tmp_path):
    pre, fts = folders
    out = tmp_path / "out"
    assert _run("--method", "TSVM", "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out", str(out),
                "--average-keys", r"self_attn\.q_proj") == 0
    theta0, thetas = _state(pre), [_state(ft) for ft in fts]
    key = "model.layers.1.self_attn.q_proj.weight"
    mean = torch.stack([t[key] - theta0[key] for t in thetas]).mean(0)
    torch.testing.assert_close(_state(out)[key], theta0[key] + mean, atol=1e-6, rtol=0)
    # The same override as a method setting gives the same model.
    same = tmp_path / "same"
    assert _run("--method", "TSVM", "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out", str(same),
                "--set", r"average_keys=self_attn\.q_proj") == 0
    assert all(torch.equal(_state(out)[k], v) for k, v in _state(same).items())
    assert _run("--method", "TSVM", "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out",
                str(tmp_path / "bad"), "--svd-keys", "(") == 2
    assert _run("--method", "TSVM", "--pretrained", str(pre), "--finetuned", *map(str, fts), "--out",
                str(tmp_path / "both"), "--svd-keys", "q_proj", "--set", "svd_keys=k_proj") == 2
