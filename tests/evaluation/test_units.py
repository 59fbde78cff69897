"""Building blocks of the evaluation: α policy, in-place weights, metrics, result files, preprocessing, models."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from tests.support.world import ARCH, OPEN_CLIP_CONFIG
from tsvmerge.evaluation.alpha_search import InPlaceWeights, alpha_grid, alpha_label
from tsvmerge.evaluation.evaluate import EvalSplit, Evaluator, Runtime
from tsvmerge.evaluation.metrics import AccuracyFileError, first_best, load_ft_accuracies, metrics_section
from tsvmerge.evaluation.results import format_table, result_path, result_suffix
from tsvmerge.utils.files import json_safe, write_json
from tsvmerge.evaluation.tracking import Tracker, WandbSettings
from tsvmerge.merging import build_method
from tsvmerge.models.encoder import EncoderWeightsError, ImageEncoder, build_image_encoder, load_encoder_weights
from tsvmerge.models.factory import ModelSpec, create_clip, get_tokenizer
from tsvmerge.models.preprocess import InputNormalizer, split_preprocess
from tsvmerge.models.zeroshot_heads import build_zeroshot_head

TINY = ModelSpec(name="tiny-unit", arch=ARCH, quick_gelu=True, open_clip_config=OPEN_CLIP_CONFIG)


# ------------------------------------------------------------------------------------------------ α policy
def test_alpha_grids() -> None:
    assert alpha_grid(build_method("sum"), 31) == pytest.approx(np.linspace(0, 1, 31)[1:].tolist())
    assert alpha_grid(build_method("TSVM"), 31) == pytest.approx([0.1 * i for i in range(1, 31)])
    assert alpha_grid(build_method("TSVM"), 31, specify_lambda=1.0) == [1.0]
    assert alpha_grid(build_method("consensus", {"tall_lambda": 0.4}), 3) == [0.5, 1.0]
    assert alpha_grid(build_method("zeroshot"), 31) == [0.0]
    for fixed in ("average", "TSVC", "tall_mask", "mag_masking"):
        assert alpha_grid(build_method(fixed), 31, specify_lambda=2.0) == [1.0]
    with pytest.raises(ValueError):
        alpha_grid(build_method("sum"), 1)
    assert alpha_label(np.linspace(0, 3, 31)[3]) == "0.3" and alpha_label(1) == "1.0"


def test_first_best_takes_the_first_maximum() -> None:
    assert first_best([0.1, 0.5, 0.5, 0.2]) == 1
    assert first_best([float("nan"), 0.3]) == 1


def test_in_place_weights() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    theta0 = {k: v.clone() for k, v in module.state_dict().items()}
    weight = module[0].weight
    weights = InPlaceWeights(module)
    tau = {"0.weight": torch.ones(2, 3), "1.bias": torch.full((2,), 2.0)}
    weights.set(tau, 0.5)
    assert module[0].weight is weight, "the module's own tensors are rewritten"
    assert torch.allclose(module[0].weight, theta0["0.weight"] + 0.5)
    assert torch.allclose(module[1].bias, theta0["1.bias"] + 1.0)
    weights.set({"0.bias": torch.ones(2)}, 1.0)  # entries of the previous vector go back to θ0
    assert torch.equal(module[0].weight, theta0["0.weight"]) and torch.equal(module[1].bias, theta0["1.bias"])
    assert torch.allclose(module[0].bias, theta0["0.bias"] + 1)
    weights.reset()
    assert all(torch.equal(module.state_dict()[k], v) for k, v in theta0.items())
    with pytest.raises(KeyError):
        weights.set({"nope": torch.ones(1)})
    with pytest.raises(ValueError):
        weights.set({"0.weight": torch.ones(3, 2)})


def test_in_place_weights_equal_the_merge_engines_model() -> None:
    from tsvmerge.merging import apply_task_vector

    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)
    theta0 = {k: v.clone() for k, v in module.state_dict().items()}
    tau = {"weight": torch.randn(3, 4)}
    weights = InPlaceWeights(module)
    for alpha in (0.1, 0.7, 2.9):
        weights.set(tau, alpha)
        expected = apply_task_vector(theta0, tau, alpha)
        assert all(torch.allclose(module.state_dict()[k], v, rtol=0, atol=1e-6) for k, v in expected.items())


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_section() -> None:
    section = metrics_section({"A": 0.5, "B": 1.0}, {"A": 0.5, "B": 0.8})
    assert section == pytest.approx({"A:top1": 0.5, "A:normalized_top1": 1.0, "B:top1": 1.0,
                                     "B:normalized_top1": 1.25, "avg_top1": 0.75, "avg_normalized_top1": 1.125})


def test_load_ft_accuracies(tmp_path: Path) -> None:
    path = tmp_path / "acc.json"
    with pytest.raises(AccuracyFileError, match="eval_single_task.py"):
        load_ft_accuracies(path, ["A"])
    path.write_text(json.dumps({"A": 0.5, "AVal": 0.0}))
    assert load_ft_accuracies(path, ["A"]) == {"A": 0.5, "AVal": 0.0}
    with pytest.raises(AccuracyFileError, match="no single-task accuracy for B, BVal"):
        load_ft_accuracies(path, ["A", "B", "BVal"])
    with pytest.raises(AccuracyFileError, match=r"fractions in \(0, 1\]"):
        load_ft_accuracies(path, ["AVal"])


def test_published_accuracy_files_cover_every_split() -> None:
    from tsvmerge.data import BENCHMARK_DATASETS

    root = Path(__file__).resolve().parents[2] / "results" / "single_task"
    for model in ("ViT-B-32", "ViT-B-16", "ViT-L-14"):
        splits = [*BENCHMARK_DATASETS, *(f"{d}Val" for d in BENCHMARK_DATASETS)]
        load_ft_accuracies(root / model / "nonlinear_ft_accuracies.json", splits)


# ------------------------------------------------------------------------------------------------ results
def test_result_naming() -> None:
    assert result_suffix(["Cars", "DTD"], True, None) == "valbest"
    assert result_suffix(["MNIST", "Cars"], False, 1.0) == "MNIST-Cars_lambda1"
    long = result_suffix([f"Dataset{i}" for i in range(20)], False, None)
    assert long.startswith("custom") and long.endswith("_valbest") and len(long) < 30
    assert result_path("results", "merging", "ViT-B-32", 8, "TSVM", "valbest") == Path(
        "results/merging/ViT-B-32_8tasks_TSVM_nonlinear_additions_valbest.json")


def test_write_json_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"a": torch.tensor(0.5), "b": np.float32(1.5), "c": (1, 2), "d": float("nan"), "p": path})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 1.5, "c": [1, 2], "d": None, "p": str(path)}

    def failing(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text())["a"] == 0.5, "a failed write leaves the previous file intact"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"], "and no temporary file"


def test_format_table() -> None:
    test = metrics_section({"A": 0.5, "B": 0.25}, {"A": 1.0, "B": 0.5})
    val = metrics_section({"AVal": 0.75, "BVal": 0.5}, {"AVal": 1.0, "BVal": 1.0})
    lines = format_table(test, ["A", "B"], val, {"A": 0.2, "B": 0.6}, title="t").splitlines()
    assert lines[0] == "t" and len(lines) == 1 + 2 + 2 + 2
    assert lines[3].split() == ["A", "50.00", "50.00", "75.00", "0.2"]
    assert lines[-1].split() == ["mean", "37.50", "50.00", "62.50"]
    with_regime = format_table(test, ["A", "B"], val, data_regime="validation (α)").splitlines()
    assert with_regime[-1] == "data used: validation (α)" and with_regime[-2].split()[0] == "mean"
    assert len(with_regime) == len(format_table(test, ["A", "B"], val).splitlines()) + 1
    assert json_safe({1: {2}}) == {"1": [2]}


# ------------------------------------------------------------------------------------------------ tracking
def test_wandb_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail
    tracker = Tracker(WandbSettings())
    tracker.log({"a": 1})
    tracker.finish()
    assert not tracker.enabled
    with pytest.raises(RuntimeError, match="needs the wandb package"):
        Tracker(WandbSettings(mode="offline"))

    calls: list[tuple] = []

    class FakeRun:
        summary: dict = {}

        def log(self, data, step=None):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = Tracker(WandbSettings(mode="offline", group="g"), {"x": Path("p")}, name="n")
    tracker.log({"v": torch.tensor(1.0)}, step=3)
    tracker.summary({"s": 2})
    tracker.finish()
    assert calls[0] == ("init", {"project": "tsvmerge", "entity": None, "group": "g", "mode": "offline",
                                 "name": "n", "config": {"x": "p"}})
    assert calls[1] == ("log", {"v": 1.0}, 3) and calls[-1] == ("finish",) and FakeRun.summary == {"s": 2}


# ------------------------------------------------------------------------------------------------ models
def test_split_preprocess_is_exact() -> None:
    _, preprocess = create_clip(TINY)
    prep = split_preprocess(preprocess)
    assert prep.split
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8))
    cached = prep.pil(image)
    assert cached.dtype == torch.uint8 and cached.shape == (3, 16, 16)
    assert torch.equal(prep.normalize(cached[None], torch.device("cpu"))[0], preprocess(image))
    identity = split_preprocess(lambda x: x)
    assert not identity.split and identity.normalize.mean is None


def test_image_encoder_has_the_published_key_layout() -> None:
    clip, _ = create_clip(TINY)
    encoder = ImageEncoder(clip)
    keys = set(encoder.state_dict())
    assert not any(k.startswith("model.transformer.") for k in keys)
    assert {"model.token_embedding.weight", "model.positional_embedding", "model.ln_final.weight",
            "model.ln_final.bias", "model.text_projection", "model.logit_scale",
            "model.visual.conv1.weight", "model.visual.proj"} <= keys
    assert all(k.startswith("model.") for k in keys)
    assert type(clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    state = {k: v.clone() + 1 for k, v in encoder.state_dict().items()}
    other, _ = build_image_encoder(TINY, state, "ckpt.pt")
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    bad = dict(state)
    bad.pop("model.visual.proj")
    bad["model.extra"] = torch.zeros(1)
    bad["model.logit_scale"] = torch.zeros(2)
    with pytest.raises(EncoderWeightsError) as info:
        load_encoder_weights(encoder, bad, "ckpt.pt", "tiny")
    message = str(info.value)
    assert "model.visual.proj" in message and "model.extra" in message and "model.logit_scale" in message


def test_zeroshot_head_follows_the_spec() -> None:
    torch.manual_seed(0)
    clip, _ = create_clip(TINY)
    tokenizer = get_tokenizer(TINY, clip)
    templates = ["a photo of a {}.", "a {} picture"]
    head = build_zeroshot_head(clip, tokenizer, [["cat"], ["dog", "puppy"]], templates)
    with torch.no_grad():
        rows = []
        for names in (["cat"], ["dog", "puppy"]):
            e = clip.encode_text(tokenizer([t.format(n) for n in names for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
        expected = torch.stack(rows) * clip.logit_scale.exp()
    assert head.normalize is True and torch.allclose(head.weight, expected, atol=1e-6)
    assert torch.equal(head.bias, torch.zeros(2))


# ------------------------------------------------------------------------------------------------ evaluation
class _Images(Dataset):
    def __init__(self, n: int) -> None:
        self.items = [(torch.full((3, 4, 4), i, dtype=torch.uint8), i % 2) for i in range(n)]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.items[i]


class _Task:
    name, cache_id = "Fake", "fake"

    def __init__(self, n: int) -> None:
        self.test_dataset = _Images(n)


def test_memory_split_reads_the_dataset_once() -> None:
    task = _Task(5)
    split = EvalSplit("FakeVal", task, "memory", batch_size=2)  # type: ignore[arg-type]
    first = [(x.clone(), y.clone()) for x, y in split.batches()]
    assert split.cached and task.test_dataset.reads == 5
    second = list(split.batches())
    assert task.test_dataset.reads == 5 and split.preprocess_passes == 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    stream = EvalSplit("Fake", _Task(3), "stream", batch_size=2)  # type: ignore[arg-type]
    list(stream.batches())
    list(stream.batches())
    assert stream.preprocess_passes == 2 and not stream.cached


def test_evaluator_top1() -> None:
    class Encoder(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :2]

    class Head(torch.nn.Module):
        def forward(self, f):  # class 1 when the (normalized) pixel value is odd
            odd = (f[:, 0].round().long() % 2).float()
            return torch.stack([1 - odd, odd], dim=1)

    runtime = Runtime.create("cpu", "bf16")
    assert runtime.describe() == "cpu (float32)"
    evaluator = Evaluator(Encoder(), runtime, InputNormalizer((0.0, 0.0, 0.0), (1 / 255,) * 3), progress=False)
    split = EvalSplit("FakeVal", _Task(7), "memory", batch_size=3)  # type: ignore[arg-type]
    assert evaluator.top1(Head(), split) == 1.0
    assert evaluator.top1(Head(), split) == 1.0 and evaluator.forward_passes == 6


def test_early_stopping_counts_alphas_without_a_strictly_better_score():
    from tsvmerge.evaluation.alpha_search import EarlyStopping

    stopping = EarlyStopping(3)
    # better, equal (1), worse (2), better (reset), worse (1), worse (2), equal (3): stop
    decisions = [stopping.update(score) for score in [0.5, 0.5, 0.4, 0.6, 0.1, 0.2, 0.6]]
    assert decisions == [False, False, False, False, False, False, True]
    never = EarlyStopping(None)
    assert not any(never.update(score) for score in [0.5, 0.4, 0.3, 0.2, 0.1])
