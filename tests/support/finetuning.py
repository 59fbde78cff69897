"""Run ``finetune.py`` in-process (``main(argv)``) on a tiny world (:mod:`tests.support.world`): its command line
(a few optimizer steps on two fixture datasets) and its runner."""

from __future__ import annotations

import runpy
from pathlib import Path

from tests.support.entry_points import REPO
from tests.support.world import MODEL, World

FINETUNE = REPO / "finetune.py"
DATASETS = ["MNIST", "EuroSAT"]  # 18 training images each (MNISTVal: 90% of 20; EuroSAT: its train folder)
#: A few optimizer steps, large enough a learning rate to move the weights well above float noise.
TRAINING = ["--epochs", "2", "--max-steps", "4", "--lr", "1e-4", "--warmup-steps", "1", "--no-augment",
            "--seed", "0", "--log-every", "1"]


def finetune_args(world: World, out: Path, *extra: str, batch: int = 6, accumulation: int = 1,
                  datasets: list[str] = DATASETS) -> list[str]:
    """Command line of finetune.py writing checkpoints to ``out/checkpoints`` and results to ``out/results``."""
    return ["--model", MODEL, "--config-dir", str(world.conf), "--train-dataset", ",".join(datasets),
            "--data-location", str(world.data), "--model-location", str(out / "checkpoints"),
            "--results-dir", str(out / "results"), "--device", "cpu", "--num-workers", "0", "--no-progress",
            "--batch-size", str(batch), "--num-grad-accumulation", str(accumulation), *TRAINING, *extra]


def run_finetune(args: list[str]) -> int:
    module = runpy.run_path(str(FINETUNE), run_name="finetune")
    return module["main"](args)
