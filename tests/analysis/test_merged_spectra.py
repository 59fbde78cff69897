"""analyze.py analysis=merged_spectra on the tiny world: the spectra of every method's τMT checked against SVDs of
merged vectors computed here, the methods configured by their config/method files, methods without a shared τMT
refused before any checkpoint is read."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from tests.analysis.conftest import analyze_args, run_analyze
from tests.analysis.test_commands import TAG, _assert_figure, _checkpoints, _csv, _out
from tests.support.entry_points import load
from tests.support.world import World
from tsvmerge.analysis.merged_spectra import effective_rank, spectrum_summary
from tsvmerge.analysis.spectra import rank_for_energy
from tsvmerge.merging import EntryMerge, MergeMethod, TaskEntry, register, unregister
from tsvmerge.merging.tsv import components_per_task

IN_PROJ = "model.visual.transformer.resblocks.0.attn.in_proj_weight"
C_FC = "model.visual.transformer.resblocks.0.mlp.c_fc.weight"


def _sums(world: World) -> dict[str, torch.Tensor]:
    """Σ τi of every 2-D entry some task changed."""
    theta0, finetuned = _checkpoints(world)
    return {k: sum(ft[k] - v for ft in finetuned) for k, v in theta0.items()
            if v.is_floating_point() and v.ndim == 2 and any(not torch.equal(ft[k], v) for ft in finetuned)}


def _assert_spectrum(got: list[float], expected: torch.Tensor) -> None:
    """Equal up to float32 SVD round-off, relative to σ1 for the small values."""
    np.testing.assert_allclose(got, expected.tolist(), rtol=1e-4, atol=1e-5 * float(expected[0]))


def test_spectra_of_task_arithmetic_averaging_and_tsvm(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=merged_spectra", "analysis.methods=[sum,average,TSVM]")
    assert run_analyze(args, monkeypatch) == 0
    out = _out(tmp_path, "merged_spectra")
    data = load(out / f"merged_spectra_{TAG}_all.json")
    assert list(data["methods"]) == ["sum", "average", "TSVM"]
    assert data["methods"]["sum"] == {"run_name": "sum_k100", "params": {"k": 100.0}}
    sums = _sums(aworld)
    assert list(data["per_entry"]) == sorted(sums)
    for key, total in sums.items():
        entry = data["per_entry"][key]
        _assert_spectrum(entry["singular_values"]["sum"], torch.linalg.svdvals(total))
        _assert_spectrum(entry["singular_values"]["average"], torch.linalg.svdvals(total / 3))
        rank, tsvm_rank = min(total.shape), 3 * components_per_task(*total.shape, 3)
        assert tsvm_rank < rank  # every entry of the world: TSV-M's τMT is rank-deficient
        tsvm = entry["summary"]["TSVM"]
        assert tsvm["numerical_rank"] == tsvm_rank and entry["summary"]["sum"]["numerical_rank"] == rank
        assert max(entry["singular_values"]["TSVM"][tsvm_rank:]) < 1e-5 * tsvm["sigma_max"]
        assert tsvm["sigma_max_over_min_nonzero"] == pytest.approx(
            entry["singular_values"]["TSVM"][0] / entry["singular_values"]["TSVM"][tsvm_rank - 1])
        for method, values in entry["singular_values"].items():
            s = entry["summary"][method]
            assert s["rank"] == rank and s["sigma_max"] == values[0] and s["sigma_min"] == values[-1]
            assert 1 <= s["effective_rank"] <= rank
            assert s["components_for_energy"] == {str(level): rank_for_energy(torch.tensor(values), level)
                                                  for level in (0.9, 0.95, 0.99)}

    png = out / f"merged_spectra_{TAG}.png"
    _assert_figure(png)
    assert load(png.with_suffix(".json"))["layers"] == [IN_PROJ, C_FC]  # block 0: attention and MLP input
    plotted = _csv(png.with_suffix(".csv"))
    assert len(plotted) == 3 * (32 + 32)  # three methods, rank 32 for both panels
    assert len(_csv(out / f"merged_spectra_{TAG}_summary.csv")) == 3 * len(sums)
    md = (out / f"merged_spectra_{TAG}.md").read_text()
    assert all(label in md for label in ("| Task Arithmetic |", "| Weight averaging |", "| TSV-M |"))
    assert "NaN" not in (out / f"merged_spectra_{TAG}_all.json").read_text()


@dataclass
class _ScaledSum(MergeMethod):
    """A plug-in method: scale · Σ τi."""

    name: ClassVar[str] = "test_scaled_sum"
    scale: float = 1.0

    def merge_entry(self, entry: TaskEntry) -> EntryMerge:
        return EntryMerge(task_vector=self.scale * entry.deltas().sum(0))


@dataclass
class _OwnVectors(_ScaledSum):
    """A plug-in method evaluating each task with its own vector."""

    name: ClassVar[str] = "test_own_vectors"
    task_specific: ClassVar[bool] = True


@pytest.fixture
def plugin_methods(aworld: World, tmp_path: Path) -> Iterator[Path]:
    """The two plug-in methods registered, and a --config-dir whose method/test_scaled_sum.yaml sets scale: 3."""
    conf = tmp_path / "conf"
    shutil.copytree(aworld.conf, conf)
    (conf / "method").mkdir()
    for cls, extra in ((_ScaledSum, "scale: 3\n"), (_OwnVectors, "")):
        register(cls)
        (conf / "method" / f"{cls.name}.yaml").write_text(
            f"defaults:\n  - /schema/method/{cls.name}@_here_\n  - _self_\n{extra}")
    yield conf
    unregister(_ScaledSum.name)
    unregister(_OwnVectors.name)


def _with_config_dir(args: list[str], conf: Path) -> list[str]:
    args = list(args)
    args[args.index("--config-dir") + 1] = str(conf)
    return args


def test_methods_are_configured_by_their_config_files(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, plugin_methods: Path) -> None:
    """The method's parameters are those of its config/method file (scale: 3), not its defaults (1)."""
    args = analyze_args(aworld, tmp_path, "analysis=merged_spectra", "analysis.methods=[test_scaled_sum,sum]",
                        f"analysis.layers=[{C_FC}]")
    assert run_analyze(_with_config_dir(args, plugin_methods), monkeypatch) == 0
    data = load(_out(tmp_path, "merged_spectra") / f"merged_spectra_{TAG}_all.json")
    assert data["methods"]["test_scaled_sum"] == {"run_name": "test_scaled_sum", "params": {"scale": 3.0}}
    for key, total in _sums(aworld).items():
        _assert_spectrum(data["per_entry"][key]["singular_values"]["test_scaled_sum"],
                         3 * torch.linalg.svdvals(total))
    labels = {r["method"]: r for r in _csv(_out(tmp_path, "merged_spectra") / f"merged_spectra_{TAG}.csv")}
    assert set(labels) == {"test_scaled_sum", "sum"}  # a method without a display label is drawn under its name
    assert "| test_scaled_sum |" in (_out(tmp_path, "merged_spectra") / f"merged_spectra_{TAG}.md").read_text()


def test_methods_are_refused_by_their_traits(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, plugin_methods: Path) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=merged_spectra", "analysis.methods=[test_own_vectors]",
                        f"model_location={tmp_path / 'none'}")
    assert run_analyze(_with_config_dir(args, plugin_methods), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "test_own_vectors evaluates each task with its own vector" in err
    assert "Methods with a shared τMT: TSVM" in err and "test_scaled_sum" in err


def test_iso_c_spectrum_is_flat(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With the default methods: Iso-C's every singular value is σ̄, the mean singular value of Σ τi."""
    args = analyze_args(aworld, tmp_path, "analysis=merged_spectra", "analysis.normalize=true",
                        "analysis.layers=[c_fc,visual.proj]")
    assert run_analyze(args, monkeypatch) == 0
    png = _out(tmp_path, "merged_spectra") / f"merged_spectra_{TAG}.png"
    _assert_figure(png)
    data = load(png.with_suffix(".json"))
    assert list(data["methods"]) == ["sum", "TSVM", "iso_c", "iso_cts", "dc_merge"]
    assert data["layers"] == [C_FC, "model.visual.proj"] and data["normalize"] is True
    sums = _sums(aworld)
    everything = load(png.with_name(f"merged_spectra_{TAG}_all.json"))["per_entry"]
    assert list(everything) == sorted(sums)
    for key, entry in everything.items():
        values = np.asarray(entry["singular_values"]["iso_c"])
        assert values.min() >= values.max() * (1 - 1e-4), key
        assert values.mean() == pytest.approx(float(torch.linalg.svdvals(sums[key]).mean()), rel=1e-4)
        assert entry["summary"]["iso_c"]["effective_rank"] == pytest.approx(min(sums[key].shape), rel=1e-4)
    relative = [float(r["sigma_relative"]) for r in _csv(png.with_suffix(".csv")) if r["method"] == "iso_c"]
    assert len(relative) == 32 + 16 and relative == pytest.approx([1.0] * len(relative), rel=1e-4)


def test_summary_of_flat_rank_one_and_zero_spectra() -> None:
    flat = spectrum_summary(torch.tensor([2.0, 2.0, 2.0, 2.0]), (4, 6))
    assert flat["effective_rank"] == pytest.approx(4) and flat["sigma_max_over_min"] == 1
    assert flat["components_for_energy"] == {"0.9": 4, "0.95": 4, "0.99": 4} and flat["numerical_rank"] == 4
    one = spectrum_summary(torch.tensor([3.0, 0.0, 0.0]), (3, 3))
    assert one["effective_rank"] == 1 and one["sigma_max_over_min"] is None and one["numerical_rank"] == 1
    assert one["fraction_for_energy"] == {"0.9": 1 / 3, "0.95": 1 / 3, "0.99": 1 / 3}
    two = spectrum_summary(torch.tensor([4.0, 1.0, 1e-9]), (3, 5))  # the last one is float32 round-off
    assert two["numerical_rank"] == 2 and two["sigma_max_over_min_nonzero"] == 4
    assert two["sigma_max_over_min"] == pytest.approx(4e9)
    assert two["effective_rank"] == pytest.approx(math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2))), rel=1e-6)
    zero = spectrum_summary(torch.zeros(3), (3, 4))
    assert zero["effective_rank"] == 0 and zero["numerical_rank"] == 0 and zero["sigma_max_over_min_nonzero"] is None
    assert effective_rank(torch.zeros(3)) == 0


@pytest.mark.parametrize(("overrides", "message"), [
    (["analysis.methods=[sum,TSVC]"], "TSVC evaluates each task with its own vector: it has no shared τMT"),
    (["analysis.methods=[tall_mask,mag_masking]"], "tall_mask evaluates each task with its own vector"),
    (["analysis.methods=[zeroshot]"], "zeroshot is the pre-trained model itself: its τMT is zero"),
    (["analysis.methods=[sum,nope]"], "unknown method 'nope'. Methods with a shared τMT: TSVM"),
    (["analysis.methods=[sum,TSVM,sum]"], "analysis.methods lists sum more than once"),
    (["analysis.methods=[]"], "analysis.methods must be a non-empty list of method names"),
    (["analysis.max_panels=0"], "analysis.max_panels must be at least 1, got 0"),
    (["analysis.layers=['[']"], "analysis.layers: '[' is not a regular expression"),
    # CART's published λ and rank ratio exist for ViT-B-32 only: its config file must set them for other models
    (["analysis.methods=[sum,cart]"], "analysis.methods: method cart takes its parameters from "
                                      "config/method/cart.yaml: invalid configuration:\n  - cart: prior"),
])
def test_configuration_errors_come_before_any_checkpoint(aworld: World, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        overrides: list[str], message: str) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=merged_spectra", f"model_location={tmp_path / 'none'}",
                        *overrides)
    assert run_analyze(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert message in err and "nonlinear_zeroshot.pt" not in err
    assert not (tmp_path / "results" / "analysis").exists()


def test_unknown_layer_is_named(aworld: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    args = analyze_args(aworld, tmp_path, "analysis=merged_spectra", "analysis.methods=[average]",
                        "analysis.layers=[resblocks.7]")
    assert run_analyze(args, monkeypatch) == 2
    assert "analysis.layers: no 2-D entry matches 'resblocks.7'" in capsys.readouterr().err
