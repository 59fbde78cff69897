"""Checkpoints of the demo model (``config/model/demo.yaml``) in seconds, for the cluster and wandb tests.

The demo pipeline (``python demo.py``) pre-trains and fine-tunes for minutes; these tests only need files in the
published layout that main.py accepts, so the weights here are random: a randomly initialized demo CLIP stands for
the pre-trained model (``model.pretrained`` points at it), each task's fine-tuned encoder is it plus a small seeded
perturbation of the image tower, and the zero-shot heads are built here once (not by every job of a sweep). The
synthetic tasks' splits are generated into the world's data folder, and a single-task accuracy file gives the
normalized accuracies their denominators.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tests.support.world import perturbed_image_encoder
from tsvmerge.checkpoints import finetuned_checkpoint_path, head_path, zeroshot_checkpoint_path
from tsvmerge.checkpoints.state_dict import save_state_dict
from tsvmerge.data import SYNTHETIC_TASKS, class_synonyms, templates
from tsvmerge.data.datasets.synthetic import generate_all
from tsvmerge.models.factory import ModelSpec, create_clip, get_tokenizer
from tsvmerge.models.heads import save_classification_head
from tsvmerge.models.zeroshot_heads import build_zeroshot_head

MODEL = "demo"
#: The demo model's architecture, read from config/model/demo.yaml (main.py builds the model from that file).
OPEN_CLIP_CONFIG = OmegaConf.to_container(
    OmegaConf.load(Path(__file__).resolve().parents[2] / "config" / "model" / "demo.yaml").open_clip_config)
FT_TEST, FT_VAL = 0.8, 0.5


@dataclass(frozen=True)
class DemoWorld:
    root: Path
    data: Path
    checkpoints: Path
    results: Path
    pretrained: Path
    tasks: tuple[str, ...]

    @property
    def ft_accuracies(self) -> Path:
        return self.results / "single_task" / MODEL / "nonlinear_ft_accuracies.json"

    def main_args(self, *overrides: str) -> list[str]:
        """main.py's command line on this world: the first ``len(tasks)`` synthetic tasks (a benchmark prefix, so a
        Table 2 column), CPU, small batches, a 3-point α grid, no progress bars."""
        return [
            "model=demo", f"model.pretrained={self.pretrained}", f"num_tasks={len(self.tasks)}",
            f"data_location={self.data}", f"model_location={self.checkpoints}", f"results_dir={self.results}",
            f"ft_accuracies={self.ft_accuracies}", "n_eval_points=4", "device=cpu", "num_workers=0",
            "batch_size=256", "eval_cache=none", "progress=false", f"cache_dir={self.root / 'cache'}", *overrides,
        ]


def make_demo_world(root: Path, num_tasks: int = 2) -> DemoWorld:
    tasks = tuple(SYNTHETIC_TASKS[:num_tasks])
    data, checkpoints, results = root / "data", root / "checkpoints", root / "results"
    pretrained = root / "weights" / "demo_clip.pt"
    spec = ModelSpec(name=MODEL, arch="tsvmerge-demo-clip", quick_gelu=False, pretrained=str(pretrained),
                     open_clip_config=OPEN_CLIP_CONFIG)
    torch.manual_seed(0)
    clip, _ = create_clip(spec)
    full = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    pretrained.parent.mkdir(parents=True, exist_ok=True)
    torch.save(full, pretrained)

    theta0 = {f"model.{k}": v for k, v in full.items() if not k.startswith("transformer.")}
    save_state_dict(theta0, zeroshot_checkpoint_path(checkpoints, MODEL, tasks[0]))
    for task in tasks:
        save_state_dict(perturbed_image_encoder(theta0, zlib.crc32(task.encode())),
                        finetuned_checkpoint_path(checkpoints, MODEL, task))

    tokenizer = get_tokenizer(spec, clip)
    for task in tasks:
        save_classification_head(build_zeroshot_head(clip, tokenizer, class_synonyms(task), templates(task)),
                                 head_path(checkpoints, MODEL, task))
    generate_all(data, splits=("val", "test"), tasks=tasks, disable=True)
    accuracies = {name: acc for t in tasks for name, acc in ((t, FT_TEST), (f"{t}Val", FT_VAL))}
    path = results / "single_task" / MODEL / "nonlinear_ft_accuracies.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(accuracies))
    return DemoWorld(root, data, checkpoints, results, pretrained, tasks)
