"""The evaluation forward on a GPU (autocast bf16 / fp16, channels-last, pinned batches) agrees with float32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.gpu.common import gpu, relative_error
from tests.gpu.tiny_model import EMBED_DIM, tiny_encoder, uint8_images
from tsvmerge.data.task_dataset import TaskDataset
from tsvmerge.evaluation.evaluate import EvalSplit, Evaluator, Runtime
from tsvmerge.models.heads import ClassificationHead
from tsvmerge.models.preprocess import InputNormalizer

pytestmark = gpu

NORMALIZE = InputNormalizer((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
CLASSES = 10


def features(runtime: Runtime, images: torch.Tensor) -> torch.Tensor:
    """What :class:`Evaluator` computes before the head, on ``runtime``: float32 features on the CPU."""
    encoder = runtime.prepare_module(copy.deepcopy(tiny_encoder()))
    inputs = NORMALIZE(images, runtime.device)
    if runtime.on_cuda and runtime.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), runtime.autocast():
        return encoder(inputs).float().cpu()


@pytest.mark.parametrize("precision,channels_last,tolerance", [
    ("fp32", False, 1e-2),  # cuDNN convolutions may use TF32
    ("fp32", True, 1e-2),
    ("bf16", True, 5e-2),
    ("fp16", True, 2e-2),
])
def test_gpu_features_match_cpu_float32(precision: str, channels_last: bool, tolerance: float) -> None:
    images = uint8_images(32)
    want = features(Runtime(torch.device("cpu"), "fp32"), images)
    runtime = Runtime(torch.device("cuda"), precision, channels_last)  # type: ignore[arg-type]
    assert runtime.device.index is not None
    got = features(runtime, images)
    assert torch.isfinite(got).all()
    assert relative_error(got, want) <= tolerance


def _split(images: torch.Tensor, labels: torch.Tensor, pin_memory: bool) -> EvalSplit:
    data = TensorDataset(images, labels)
    task = TaskDataset("Fake", lambda: data, lambda: data, lambda: [str(c) for c in range(CLASSES)], batch_size=16)
    return EvalSplit("Fake", task, "memory", batch_size=16, pin_memory=pin_memory)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_evaluator_top1_in_half_precision_channels_last(precision: str) -> None:
    """Labels are the float32 CPU predictions: the GPU's half-precision top-1 only loses borderline images."""
    images = uint8_images(64, seed=1)
    generator = torch.Generator().manual_seed(2)
    head = ClassificationHead(True, torch.randn(CLASSES, EMBED_DIM, generator=generator))
    with torch.no_grad():
        labels = head(features(Runtime(torch.device("cpu"), "fp32"), images)).argmax(1)
    cpu = Evaluator(tiny_encoder(), Runtime(torch.device("cpu"), "fp32"), NORMALIZE, progress=False)
    assert cpu.top1(copy.deepcopy(head), _split(images, labels, False)) == 1.0
    runtime = Runtime(torch.device("cuda"), precision, channels_last=True)  # type: ignore[arg-type]
    evaluator = Evaluator(tiny_encoder(), runtime, NORMALIZE, progress=False)
    split = _split(images, labels, True)
    first = evaluator.top1(copy.deepcopy(head), split)
    assert first >= 0.9
    assert evaluator.top1(copy.deepcopy(head), split) == first  # the cached, pinned pass gives the same answer
