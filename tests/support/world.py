"""A tiny but complete on-disk world in the published layouts, for end-to-end tests of main.py / eval_single_task.py.

- an open_clip architecture small enough for CPU tests (16 px images, 8 px patches, width 32, one layer),
  registered at runtime through a model config ``<root>/conf/model/tiny.yaml`` (``--config-dir <root>/conf``);
- its full CLIP weights as a local file (``model.pretrained``: the text tower of heads that must be built);
- ``<root>/checkpoints/tiny/MNISTVal/nonlinear_zeroshot.pt`` and one ``nonlinear_finetuned.pt`` per task (state
  dicts with the published keys ``model.visual.*``, ``model.token_embedding.weight``, ...);
- ``head_<Dataset>Val.pt`` files for all tasks but the last (whose head the pipeline must build and save);
- fixture datasets under ``<root>/data`` and a single-task accuracy file under ``<root>/results``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from tests.support.data_fixtures import make_dataset_fixture
from tsvmerge.checkpoints import finetuned_checkpoint_path, head_path, zeroshot_checkpoint_path
from tsvmerge.checkpoints.state_dict import save_state_dict
from tsvmerge.data import class_synonyms, get_dataset, templates
from tsvmerge.models.factory import ModelSpec, create_clip, get_tokenizer
from tsvmerge.models.heads import save_classification_head
from tsvmerge.models.zeroshot_heads import build_zeroshot_head

MODEL = "tiny"
ARCH = "tsvmerge-test-tiny-vit"
OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
DATASETS = ["MNIST", "EuroSAT", "DTD"]
#: Single-task accuracies written for the normalized-accuracy denominators.
FT_TEST, FT_VAL = 0.8, 0.5


@dataclass
class World:
    root: Path
    conf: Path
    data: Path
    checkpoints: Path
    results: Path
    pretrained: Path
    spec: ModelSpec
    datasets: list[str]

    @property
    def ft_accuracies(self) -> Path:
        return self.results / "single_task" / MODEL / "nonlinear_ft_accuracies.json"

    def main_args(self, *overrides: str, run_dir: Path | None = None) -> list[str]:
        """Command line of main.py for this world (device cpu, tiny batches, 3 α on the grid)."""
        return [
            "--config-dir", str(self.conf), f"model={MODEL}", f"DATASETS=[{','.join(self.datasets)}]",
            f"data_location={self.data}", f"model_location={self.checkpoints}", f"results_dir={self.results}",
            "n_eval_points=4", "device=cpu", "num_workers=0", "batch_size=8", "progress=false",
            f"cache_dir={self.root / 'cache'}", f"hydra.run.dir={run_dir or self.root / 'runs' / 'default'}",
            *overrides,
        ]


def _char_sum(text: str) -> int:
    return sum(map(ord, text))


def make_world(root: Path, datasets: list[str] | None = None, missing_head: bool = True) -> World:
    datasets = list(datasets or DATASETS)
    conf, data, checkpoints, results = root / "conf", root / "data", root / "checkpoints", root / "results"
    pretrained = root / "weights" / "tiny_clip.pt"
    (conf / "model").mkdir(parents=True, exist_ok=True)
    spec_dict = {"name": MODEL, "arch": ARCH, "quick_gelu": True, "pretrained": str(pretrained),
                 "open_clip_config": OPEN_CLIP_CONFIG, "cache_dir": None}
    (conf / "model" / f"{MODEL}.yaml").write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    spec = ModelSpec(name=MODEL, arch=ARCH, quick_gelu=True, pretrained=str(pretrained),
                     open_clip_config=OPEN_CLIP_CONFIG)

    torch.manual_seed(0)
    clip, preprocess = create_clip(spec)
    full = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    pretrained.parent.mkdir(parents=True, exist_ok=True)
    torch.save(full, pretrained)  # a full CLIP state dict: what open_clip loads for model.pretrained=<file>

    theta0 = {f"model.{k}": v for k, v in full.items() if not k.startswith("transformer.")}
    save_state_dict(theta0, zeroshot_checkpoint_path(checkpoints, MODEL))
    for d in datasets:
        save_state_dict(perturbed_image_encoder(theta0, _char_sum(d)), finetuned_checkpoint_path(checkpoints, MODEL, d))

    for d in datasets:
        make_dataset_fixture(d, data)
    tokenizer = get_tokenizer(spec, clip)
    for d in datasets[:-1] if missing_head else datasets:
        try:
            names = class_synonyms(d)
        except LookupError:
            names = [[c] for c in get_dataset(d, None, data, num_workers=0).classnames]
        save_classification_head(build_zeroshot_head(clip, tokenizer, names, templates(d)),
                                 head_path(checkpoints, MODEL, d))

    accuracies = {}
    for d in datasets:
        accuracies[d], accuracies[f"{d}Val"] = FT_TEST, FT_VAL
    path = results / "single_task" / MODEL / "nonlinear_ft_accuracies.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(accuracies))
    return World(root, conf, data, checkpoints, results, pretrained, spec, datasets)


def perturbed_image_encoder(theta0: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A stand-in fine-tuned checkpoint: ``theta0`` with seeded noise (5% of each tensor's spread) on the image
    encoder's floating-point entries, everything else copied."""
    g = torch.Generator().manual_seed(seed)
    finetuned = {}
    for key, value in theta0.items():
        if key.startswith("model.visual.") and value.is_floating_point():
            scale = 0.05 * (value.std() if value.numel() > 1 else value.abs()).clamp_min(1e-3)
            finetuned[key] = value + scale * torch.randn(value.shape, generator=g)
        else:
            finetuned[key] = value.clone()
    return finetuned
