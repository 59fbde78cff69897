"""A tiny world (open_clip model, fixture datasets, published layouts) for fine-tuning tests, and helpers to run
``finetune.py`` in-process (``main(argv)``) or under ``torchrun``."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from tests.evaluation.world import MODEL, World, make_world
from tests.gpu.fake_cuda import FakeCuda

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "finetune.py"
DATASETS = ["MNIST", "EuroSAT"]  # 18 training images each (MNISTVal: 90% of 20; EuroSAT: its train folder)
#: A few optimizer steps, large enough a learning rate to move the weights well above float noise.
TRAINING = ["--epochs", "2", "--max-steps", "4", "--lr", "1e-4", "--warmup-steps", "1", "--no-augment",
            "--seed", "0", "--log-every", "1"]


@pytest.fixture(scope="session")
def ft_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("ft_world"), DATASETS)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """``torch.cuda`` replaced by :class:`tests.gpu.fake_cuda.FakeCuda` (2 GPUs) for the test."""
    return FakeCuda().install(monkeypatch)


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


def load_checkpoint(out: Path, dataset: str, kind: str = "finetuned") -> dict[str, torch.Tensor]:
    path = out / "checkpoints" / MODEL / f"{dataset}Val" / f"nonlinear_{kind}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)
