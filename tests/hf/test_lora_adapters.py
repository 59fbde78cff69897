"""Merging PEFT LoRA adapters: factored results equal the dense merge of the materialized adapters, merged adapters
load with PEFT and give the dense folder's logits, and every bad input is one clear error with nothing written."""

import json

import pytest
import torch

from tests.support.hf_models import load
from tests.support.lora_adapters import make_adapters, materialize, peft
from tsvmerge.checkpoints.hf_folder import HFModelFolder
from tsvmerge.checkpoints.peft_adapter import LoRAFactors, PeftAdapter
from tsvmerge.cli import main
from tsvmerge.merging import available_methods
from tsvmerge.merging.lora import factored_svd, truncate_rank
from tsvmerge.merging.registry import method_class
from tsvmerge.merging.tsv import LowRankFactors


def _run(*argv):
    return main(["merge", "--quiet", *map(str, argv)])


def _state(folder):
    with HFModelFolder(folder) as state:
        return {key: state[key].float().clone() for key in state}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base, folders = make_adapters(root)
    dense = [materialize(base, folder, root / f"dense{i}") for i, folder in enumerate(folders)]
    return base, folders, dense


# ------------------------------------------------------------------------------------------------- reading

def test_adapter_reads_factors_scales_and_saved_modules(adapters):
    base, folders, _ = adapters
    with HFModelFolder(base) as state:
        first = PeftAdapter(folders[0], state)
        key = "model.layers.0.mlp.down_proj.weight"
        factors = first.factors(key)
        assert factors.rank == 2 and factors.scale == pytest.approx(8 / 2)  # rank_pattern: r = 2, alpha 8
        assert first.factors("model.layers.0.self_attn.v_proj.weight").scale == pytest.approx(3 / 4)  # alpha_pattern
        assert first.factors("model.layers.0.self_attn.k_proj.weight") is None
        assert first.saved == ["lm_head.weight"]
        rs = PeftAdapter(folders[2], state).factors("model.layers.1.self_attn.o_proj.weight")
        assert rs.scale == pytest.approx(5 / 3 ** 0.5)  # rsLoRA
        # an untouched entry reads as θ0, a targeted one as θ0 + s·B·A
        assert torch.equal(first["model.norm.weight"], state["model.norm.weight"])
        torch.testing.assert_close(first[key], state[key] + factors.materialize())


def test_factored_svd_is_the_svd_of_the_product():
    g = torch.Generator().manual_seed(0)
    factors = LoRAFactors(torch.randn(50, 6, generator=g), torch.randn(6, 30, generator=g), 0.7)
    U, s, V = factored_svd(factors)
    dense = factors.materialize().double()
    torch.testing.assert_close(s.double(), torch.linalg.svdvals(dense)[:6], rtol=1e-5, atol=0)
    torch.testing.assert_close((U * s) @ V.mT, factors.materialize(), rtol=0, atol=1e-5)
    torch.testing.assert_close(U.mT @ U, torch.eye(6), rtol=0, atol=1e-5)
    # rank-deficient factors: the null components are dropped
    low = LoRAFactors(torch.cat([factors.B[:, :2], factors.B[:, :2]], 1), factors.A[:4], 1.0)
    assert factored_svd(low)[1].numel() == 2


def test_truncate_rank_reports_the_relative_error():
    g = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(40, 5, generator=g))
    V, _ = torch.linalg.qr(torch.randn(30, 5, generator=g))
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    cut, error = truncate_rank(LowRankFactors(U, s, V), 3)
    assert cut.s.numel() == 3
    assert error == pytest.approx((4 + 1) ** 0.5 / float(s.norm()), rel=1e-5)
    torch.testing.assert_close(cut.s, s[:3], rtol=1e-5, atol=0)
    with pytest.raises(ValueError):
        truncate_rank(LowRankFactors(U, s, V), 0)


# ------------------------------------------------------------------------------ factored == dense, per method

def _shared_methods():
    names = []
    for name in available_methods():
        cls = method_class(name)
        if cls.task_specific or cls.calibration is not None or not cls.uses_finetuned:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("method", _shared_methods() + ["regmean"])
def test_every_method_on_adapters_equals_the_dense_merge_of_the_materialized_adapters(adapters, tmp_path, method):
    base, folders, dense = adapters
    extra = ["--set", "tall_lambda=0.4"] if method == "consensus" else []
    if method == "cart":
        extra = ["--set", "prior=0.5", "rank_ratio=0.25"]
    if method == "regmean":  # the same token ids per task through θ0 + ΔW, formed from the factors
        extra = ["--calibration", _tokens(tmp_path, len(folders))]
    out, reference = tmp_path / "from_adapters", tmp_path / "dense"
    assert _run("--method", method, "--pretrained", base, "--finetuned", *folders, "--out", out, "--merge-into-base",
                "--alpha", "0.8", *extra) == 0
    assert _run("--method", method, "--pretrained", base, "--finetuned", *dense, "--out", reference,
                "--alpha", "0.8", *extra) == 0
    ours, theirs, theta0 = _state(out), _state(reference), _state(base)
    assert ours.keys() == theirs.keys()
    for key in ours:
        tau_ours, tau_dense = ours[key] - theta0[key], theirs[key] - theta0[key]
        scale = max(float(tau_dense.norm()), 1e-12)
        assert float((tau_ours - tau_dense).norm()) / scale <= 1e-5 or float(tau_dense.norm()) < 1e-6, key


def _tokens(folder, tasks):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    path = folder / "tokens.safetensors"
    save_file({str(i): torch.randint(0, 128, (6, 16), generator=g) for i in range(tasks)}, str(path))
    return path


def test_esm_refuses_adapters_that_leave_a_decomposed_map_alone(adapters, tmp_path, capsys):
    """ESM's essential subspace of a task that does not change a map is undefined (SPEC_ESM E9): adapters with
    different targets are refused, naming the task and the map; maps no adapter changes are not calibrated."""
    base, folders, _ = adapters
    capsys.readouterr()
    assert _run("--method", "esm", "--pretrained", base, "--finetuned", *folders, "--calibration",
                _tokens(tmp_path, 3), "--out", tmp_path / "refused") == 2
    err = capsys.readouterr().err
    assert "task 'task0' leaves 'model.layers.0.self_attn.k_proj.weight' unchanged" in err, err
    assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------------------------- adapters written out

@pytest.mark.parametrize("method", ["sum", "average", "TSVM", "TSVM_2"])
def test_merged_adapter_loads_with_peft_and_gives_the_dense_folders_logits(adapters, tmp_path, method):
    base, folders, _ = adapters
    adapter_out, full = tmp_path / "adapter", tmp_path / "full"
    assert _run("--method", method, "--finetuned", *folders, "--pretrained", base, "--out", adapter_out,
                "--alpha", "0.9") == 0
    assert _run("--method", method, "--finetuned", *folders, "--pretrained", base, "--out", full,
                "--alpha", "0.9", "--merge-into-base") == 0
    config = json.loads((adapter_out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == ["lm_head"]
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    model = peft.PeftModel.from_pretrained(load(base), adapter_out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, load(full)(ids).logits, rtol=1e-2, atol=1e-3)


def test_sum_adapter_is_the_concatenation_and_tsvm_keeps_every_component_under_the_cut(adapters, tmp_path, capsys):
    base, folders, _ = adapters
    assert _run("--method", "TSVM", "--finetuned", *folders, "--out", tmp_path / "tsvm", "--pretrained", base) == 0
    printed = capsys.readouterr().out
    # q_proj (64 × 64, k = 21 per task): ranks 4 + 8 + 3, all kept
    assert "rank        15  model.layers.*.self_attn.q_proj.weight (2 modules)" in printed
    config = json.loads((tmp_path / "tsvm" / "adapter_config.json").read_text())
    assert config["r"] in (2, 3, 4, 8, 15)


def test_max_rank_truncates_and_prints_the_error(adapters, tmp_path, capsys):
    base, folders, _ = adapters
    out = tmp_path / "capped"
    assert _run("--method", "sum", "--finetuned", *folders, "--pretrained", base, "--out", out,
                "--max-rank", "5") == 0
    printed = capsys.readouterr().out
    assert "rank cap 5: relative error up to" in printed
    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    assert max(t.shape[0] for k, t in saved.items() if "lora_A" in k) <= 5
    # a method without a low-rank result writes a truncated adapter when asked
    assert _run("--method", "ties", "--finetuned", *folders, "--pretrained", base, "--out", tmp_path / "ties",
                "--max-rank", "4") == 0
    assert (tmp_path / "ties" / "adapter_config.json").is_file()


def test_methods_without_a_low_rank_result_write_a_full_model(adapters, tmp_path, capsys):
    base, folders, _ = adapters
    assert _run("--method", "ties", "--finetuned", *folders, "--pretrained", base, "--out", tmp_path / "t") == 0
    assert "no exact low-rank result" in capsys.readouterr().out
    load(tmp_path / "t")  # loads with AutoModelForCausalLM


def test_pretrained_defaults_to_the_adapters_base_model(adapters, tmp_path):
    base, folders, _ = adapters
    copies = []
    for i, folder in enumerate(folders[:2]):
        copy = tmp_path / f"a{i}"
        copy.mkdir()
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base)
        (copy / "adapter_config.json").write_text(json.dumps(config))
        (copy / "adapter_model.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
        copies.append(copy)
    assert _run("--method", "sum", "--finetuned", *copies, "--out", tmp_path / "out") == 0


# ------------------------------------------------------------------------------------------------ bad inputs

def _copy_adapter(folder, dest, config_change=None, tensors=None):
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    config = json.loads((folder / "adapter_config.json").read_text())
    if config_change:
        config.update(config_change)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    state = load_file(folder / "adapter_model.safetensors")
    if tensors:
        tensors(state)
    save_file(state, str(dest / "adapter_model.safetensors"))
    return dest


def _nan(state):
    key = next(k for k in state if "lora_B" in k)
    state[key][0, 0] = float("nan")


def _rank0(state):
    for key in [k for k in state if "q_proj" in k and "layers.0." in k]:
        state[key] = state[key][:0] if "lora_A" in key else state[key][:, :0]


def _wrong_shape(state):
    key = next(k for k in state if "lora_A" in k)
    state[key] = torch.zeros(state[key].shape[0], 7)


@pytest.mark.parametrize("case, expected", [
    ("shape", "is the adapter for another base model"),
    ("bases", "different base models"),
    ("no_config", "no adapter_config.json"),
    ("corrupt_config", "cannot be read as JSON"),
    ("prefix", "PEFT PREFIX_TUNING adapter"),
    ("dora", "DoRA"),
    ("nan", "NaN"),
    ("rank0", "rank 0"),
    ("mixed", "--merge-into-base"),
    ("max_rank", "--max-rank must be at least 1"),
])
def test_bad_adapter_inputs_are_one_clear_error_and_nothing_is_written(adapters, tmp_path, capsys, case, expected):
    base, folders, dense = adapters
    first, second = folders[0], folders[1]
    extra = []
    if case == "shape":
        first = _copy_adapter(folders[0], tmp_path / "bad", tensors=_wrong_shape)
    elif case == "bases":
        first = _copy_adapter(folders[0], tmp_path / "x", {"base_model_name_or_path": "org/one"})
        second = _copy_adapter(folders[1], tmp_path / "y", {"base_model_name_or_path": "org/two"})
    elif case == "no_config":
        first = tmp_path / "bad"
        first.mkdir()
        (first / "adapter_model.safetensors").write_bytes((folders[0] / "adapter_model.safetensors").read_bytes())
    elif case == "corrupt_config":
        first = _copy_adapter(folders[0], tmp_path / "bad")
        (first / "adapter_config.json").write_text("{not json")
    elif case == "prefix":
        first = _copy_adapter(folders[0], tmp_path / "bad", {"peft_type": "PREFIX_TUNING"})
        first_config = json.loads((first / "adapter_config.json").read_text())
        assert first_config["peft_type"] == "PREFIX_TUNING"
    elif case == "dora":
        first = _copy_adapter(folders[0], tmp_path / "bad", {"use_dora": True})
    elif case == "nan":
        first = _copy_adapter(folders[0], tmp_path / "bad", tensors=_nan)
    elif case == "rank0":
        first = _copy_adapter(folders[0], tmp_path / "bad", tensors=_rank0)
    elif case == "mixed":
        second = dense[1]
    elif case == "max_rank":
        extra = ["--max-rank", "0"]
    out = tmp_path / "out"
    argv = ["--method", "sum", "--finetuned", first, second, "--out", out, *extra]
    if case != "no_config":
        argv += ["--pretrained", base]
    capsys.readouterr()
    assert _run(*argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("method", ["TSVC", "tall_mask", "mag_masking"])
def test_task_specific_methods_on_adapters_equal_them_on_the_materialized_adapters(adapters, tmp_path, method):
    base, folders, dense = adapters
    assert _run("--method", method, "--pretrained", base, "--finetuned", *folders, "--out", tmp_path / "ours") == 0
    assert _run("--method", method, "--pretrained", base, "--finetuned", *dense, "--out", tmp_path / "dense") == 0
    theta0 = _state(base)
    for task in range(len(folders)):
        ours, theirs = _state(tmp_path / "ours" / f"task{task}"), _state(tmp_path / "dense" / f"task{task}")
        for key in theirs:
            tau = theirs[key] - theta0[key]
            error = float((ours[key] - theirs[key]).norm()) / max(float(tau.norm()), 1e-12)
            assert error <= 1e-5 or float(tau.norm()) < 1e-6, (task, key, error)


def test_adapters_and_their_base_resolve_from_the_hub_cache_offline(adapters, tmp_path, monkeypatch):
    import shutil

    base, folders, _ = adapters
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"

    def cached(repo_id, folder):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)

    cached("org/base", base)
    for i, folder in enumerate(folders[1:]):
        local = tmp_path / f"lora{i}"
        shutil.copytree(folder, local)
        config = json.loads((local / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "org/base"
        (local / "adapter_config.json").write_text(json.dumps(config))
        cached(f"org/lora{i}", local)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _run("--method", "TSVM", "--finetuned", "org/lora0", "org/lora1", "--out", tmp_path / "hub_out") == 0
    assert _run("--method", "TSVM", "--pretrained", base, "--finetuned", *folders[1:], "--out",
                tmp_path / "local_out") == 0
    from safetensors.torch import load_file

    a = load_file(tmp_path / "hub_out" / "adapter_model.safetensors")
    b = load_file(tmp_path / "local_out" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
