"""``tsvmerge merge --calibration FILE --model NAME`` on CLIP checkpoints: the parity interface of SPEC_ESM E3 and
SPEC_REGMEAN R3, and every bad calibration input refused with one message, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.merging import reference_esm as ref_esm
from tests.merging import reference_regmean as ref_regmean
from tsvmerge.checkpoints.state_dict import open_state_dict, save_state_dict
from tsvmerge.cli import main
from tsvmerge.models.encoder import ImageEncoder
from tsvmerge.models.factory import ModelSpec, create_clip

CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16,
                                          "patch_size": 8},
          "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}


def _encoder() -> ImageEncoder:
    spec = ModelSpec(name="tiny", arch="tsvmerge-calibration-tiny", quick_gelu=True, pretrained=None,
                     open_clip_config=CONFIG)
    torch.manual_seed(0)
    return ImageEncoder(create_clip(spec, load_pretrained=False)[0]).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("calibration_cli")
    model_yaml = root / "tiny.yaml"
    model_yaml.write_text(yaml.safe_dump({"name": "tiny", "arch": "tsvmerge-calibration-tiny", "quick_gelu": True,
                                          "pretrained": None, "open_clip_config": CONFIG}))
    theta0 = _encoder().state_dict()
    save_state_dict(theta0, root / "zs.pt")
    generator = torch.Generator().manual_seed(1)
    finetuned = []
    for t in range(4):  # 4 tasks, 8 images of 5 tokens: k ≤ the rank of X·ΔWᵀ everywhere (SPEC_ESM E9)
        state = {k: v + 0.02 * torch.randn(v.shape, generator=generator) if k.startswith("model.visual") else v
                 for k, v in theta0.items()}
        save_state_dict(state, root / f"ft{t}.pt")
        finetuned.append(root / f"ft{t}.pt")
    images = {str(t): torch.randn(8, 3, 16, 16, generator=generator) for t in range(4)}
    torch.save(images, root / "images.pt")
    return {"root": root, "yaml": model_yaml, "zs": root / "zs.pt", "ft": finetuned, "images": images,
            "file": root / "images.pt"}


def _merge(world: dict, method: str, out: Path, *extra: str) -> int:
    return main(["merge", "--quiet", "--method", method, "--model", str(world["yaml"]), "--pretrained",
                 str(world["zs"]), "--finetuned", *map(str, world["ft"]), "--out", str(out), *extra])


def _activations(world: dict) -> list[dict[str, np.ndarray]]:
    """Each task's inputs to every linear map, captured independently of tsvmerge's hooks: the blocks run by hand
    in float64 on the fine-tuned weights."""
    out = []
    for t, path in enumerate(world["ft"]):
        encoder = _encoder().double()
        encoder.load_state_dict({k: v.double() if v.is_floating_point() else v
                                 for k, v in torch.load(path, weights_only=True).items()})
        visual = encoder.model.visual
        x = world["images"][str(t)].double()
        acts = {}
        with torch.no_grad():
            x = visual.conv1(x).reshape(x.shape[0], visual.conv1.out_channels, -1).permute(0, 2, 1)
            cls = visual.class_embedding.expand(x.shape[0], 1, -1)
            x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
            for i, block in enumerate(visual.transformer.resblocks):
                p = f"model.visual.transformer.resblocks.{i}."
                h = block.ln_1(x)
                acts[p + "attn.in_proj_weight"] = h.reshape(-1, h.shape[-1]).numpy()
                context = ref_regmean.attention_context(h.numpy(), block.attn.in_proj_weight.numpy(),
                                                        block.attn.in_proj_bias.numpy(), block.attn.num_heads)
                acts[p + "attn.out_proj.weight"] = context.reshape(-1, context.shape[-1])
                x = x + block.attn(h, h, h, need_weights=False)[0]
                h = block.ln_2(x)
                acts[p + "mlp.c_fc.weight"] = h.reshape(-1, h.shape[-1]).numpy()
                a = block.mlp.gelu(block.mlp.c_fc(h))
                acts[p + "mlp.c_proj.weight"] = a.reshape(-1, a.shape[-1]).numpy()
                x = x + block.mlp.c_proj(a)
        out.append(acts)
    return out


def _task_vectors(world: dict) -> tuple[dict, list[dict[str, np.ndarray]]]:
    theta0 = torch.load(world["zs"], weights_only=True)
    tvs = []
    for path in world["ft"]:
        ft = torch.load(path, weights_only=True)
        tvs.append({k: (ft[k].double() - theta0[k].double()).numpy() for k in theta0 if theta0[k].is_floating_point()})
    return theta0, tvs


def test_esm_from_a_calibration_file_matches_the_reference(world: dict, tmp_path: Path) -> None:
    """SPEC_ESM E8: every entry within 1e-3 relative of the float64 reference on the same images; none missing."""
    assert _merge(world, "esm", tmp_path / "esm.pt", "--calibration", str(world["file"])) == 0
    merged = open_state_dict(tmp_path / "esm.pt")
    theta0, tvs = _task_vectors(world)
    acts = _activations(world)
    esd = [{k: v for k, v in a.items() if ref_esm.key_class(k, tvs[0][k].shape) == "esd"} for a in acts]
    expected = ref_esm.esm_merge(tvs, esd)
    assert set(expected) == {k for k in theta0 if theta0[k].is_floating_point()}
    for key, value in expected.items():
        got = merged[key].double() - theta0[key].double()
        error = float(np.linalg.norm(got.numpy() - value) / max(np.linalg.norm(value), 1e-12))
        assert error < 1e-3, (key, error)


def test_regmean_from_a_calibration_file_matches_the_reference(world: dict, tmp_path: Path) -> None:
    """SPEC_REGMEAN R6: every entry within 1e-4 relative of the float64 reference on the same images."""
    assert _merge(world, "regmean", tmp_path / "regmean.pt", "--calibration", str(world["file"])) == 0
    merged = open_state_dict(tmp_path / "regmean.pt")
    theta0, tvs = _task_vectors(world)
    grams = [{k: ref_regmean.gram(x) for k, x in a.items()} for a in _activations(world)]
    expected = ref_regmean.regmean_merge(tvs, grams)
    for key, value in expected.items():
        got = merged[key].double() - theta0[key].double()
        floor = 2.0**-24 * float(merged[key].double().norm()) / max(np.linalg.norm(value), 1e-12)
        error = float(np.linalg.norm(got.numpy() - value) / max(np.linalg.norm(value), 1e-12))
        assert error < 1e-4 + floor, (key, error)


@pytest.mark.parametrize("content, message", [
    ({"0": "x", "1": "x", "2": "x"}, "no samples for task"),
    ({"0": "x", "1": "x", "2": "x", "3": "x", "4": "x"}, "name no task"),
    ({"0": "x", "1": "x", "2": "x", "3": torch.randn(5, 3, 8, 8)}, "expected images of shape"),
    ({"0": "x", "1": "x", "2": "x", "3": torch.zeros(5, 3, 16, 16, dtype=torch.int64)}, "preprocessed float images"),
    ({"0": "x", "1": "x", "2": "x", "3": torch.full((5, 3, 16, 16), float("nan"))}, "NaN"),
    ({"0": "x", "1": "x", "2": "x", "3": torch.zeros(0, 3, 16, 16)}, "zero samples"),
])
def test_bad_calibration_files_are_refused(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           content: dict, message: str) -> None:
    good = torch.randn(4, 3, 16, 16)
    path = tmp_path / "bad.pt"
    torch.save({k: good if isinstance(v, str) else v for k, v in content.items()}, path)
    out = tmp_path / "out.pt"
    assert _merge(world, "esm", out, "--calibration", str(path)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_calibration_options_must_fit_the_method(world: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.pt"
    assert _merge(world, "TSVM", out, "--calibration", str(world["file"])) == 2
    assert "would ignore it" in capsys.readouterr().err
    assert _merge(world, "regmean", out) == 2
    assert "merges with data" in capsys.readouterr().err
    assert main(["merge", "--quiet", "--method", "esm", "--pretrained", str(world["zs"]), "--finetuned",
                 *map(str, world["ft"]), "--out", str(out), "--calibration", str(world["file"])]) == 2
    assert "--model" in capsys.readouterr().err
    assert not out.exists()
