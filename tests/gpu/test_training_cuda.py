"""Fine-tuning on GPUs: an fp16 step with the gradient scaler against the CPU's float32 step, skipped steps and the
schedule, bf16 (or its fp16 fallback), a 2-process NCCL DDP run, a single process on ``cuda:1``, and finetune.py end to
end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.gpu.common import gpu, two_gpus
from tests.gpu.tiny_model import EMBED_DIM, tiny_encoder, uint8_images
from tests.support.finetuning import finetune_args, run_finetune
from tests.support.world import MODEL, World
from tsvmerge.models.finetuning_protocol import Hyperparameters
from tsvmerge.training.distributed import DistContext, Launch, launch_local, process_group
from tsvmerge.training.loop import (
    Classifier,
    TrainSettings,
    cosine_with_warmup,
    lr_factor,
    optimizer_step,
    train,
    trainable_parameters,
)
from tsvmerge.training.reproducibility import weights_fingerprint
from tsvmerge.utils.device import autocast_precision

pytestmark = gpu

REPO = Path(__file__).resolve().parents[2]
CLASSES = 5
LR = 1e-3


def classifier(seed: int = 0) -> tuple[Classifier, list[torch.nn.Parameter]]:
    """The tiny encoder and a small frozen linear head (small weights: fp16 gradients stay far from overflow)."""
    encoder = tiny_encoder(seed)
    head = torch.nn.Linear(EMBED_DIM, CLASSES)
    with torch.no_grad():
        head.weight.copy_(0.1 * torch.randn(CLASSES, EMBED_DIM, generator=torch.Generator().manual_seed(seed)))
        head.bias.zero_()
    head.requires_grad_(False)
    params, _ = trainable_parameters(encoder)
    return Classifier(encoder, head), params


def dataset(n: int = 32) -> TensorDataset:
    images = uint8_images(n, seed=3).float().div(255)
    labels = torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(4))
    return TensorDataset(images, labels)


def settings(precision: str, max_steps: int, batch_size: int = 8) -> TrainSettings:
    hp = Hyperparameters(lr=LR, weight_decay=0.1, batch_size=batch_size, warmup_steps=1)
    return TrainSettings(hp, epochs=1, max_steps=max_steps, precision=precision, progress=False)


def visual_weights(model: Classifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.encoder.state_dict().items()
            if k.startswith("model.visual.")}


def test_one_fp16_step_with_the_scaler_matches_the_cpu_step() -> None:
    """AdamW's first step moves each weight by about ±lr whatever the gradient's scale, so fp16 and float32 agree on
    nearly every weight; a step the scaler skips must leave the weights and the schedule untouched."""
    start, _ = classifier()
    initial = visual_weights(start)
    cpu_model = copy.deepcopy(start)
    cpu_params, _ = trainable_parameters(cpu_model.encoder)
    train(DistContext(device=torch.device("cpu")), cpu_model, cpu_params, dataset(), settings("fp32", 1))
    gpu_model = copy.deepcopy(start)
    gpu_params, _ = trainable_parameters(gpu_model.encoder)
    ctx = DistContext(device=torch.device("cuda", torch.cuda.current_device()))
    outcome = train(ctx, gpu_model, gpu_params, dataset(), settings("fp16", 1))
    assert outcome.steps == 1
    moved_cpu, moved_gpu = visual_weights(cpu_model), visual_weights(gpu_model)
    if outcome.skipped_steps:  # inf / nan gradients at the first scale: nothing may have changed
        assert all(torch.equal(moved_gpu[k], initial[k]) for k in initial)
        assert outcome.lr == pytest.approx(LR * lr_factor(0, 1, 32 // 8))  # the schedule did not move
        return
    assert all(torch.isfinite(moved_gpu[key]).all() for key in initial)
    # Over the whole tower: a few entries have a zero gradient up to round-off (the key part of the attention input
    # bias), which Adam turns into a ±lr step of either sign on both devices.
    step_cpu = torch.cat([(moved_cpu[key] - initial[key]).flatten() for key in initial])
    step_gpu = torch.cat([(moved_gpu[key] - initial[key]).flatten() for key in initial])
    agree = ((step_gpu - step_cpu).abs() <= 0.25 * LR).float().mean().item()
    assert agree >= 0.9, f"only {agree:.1%} of the weights moved as on the CPU"


def test_skipped_steps_do_not_advance_the_schedule_on_cuda() -> None:
    weight = torch.nn.Parameter(torch.ones(8, device="cuda"))
    optimizer = torch.optim.AdamW([weight], lr=LR)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=4, total_steps=10)
    scaler = torch.amp.GradScaler("cuda")
    for gradient, expect_step in ((float("nan"), False), (1.0, True), (float("inf"), False), (1.0, True)):
        scaler.scale((weight * gradient).sum()).backward()
        before = weight.detach().clone()
        assert optimizer_step(optimizer, scaler, scheduler, [weight], 1.0) is expect_step
        assert torch.equal(weight.detach(), before) is not expect_step
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == pytest.approx(LR * lr_factor(2, 4, 10))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_keeps_the_schedule_in_step(precision: str) -> None:
    """Several steps in bf16 (fp16 on GPUs without bfloat16) or fp16: finite weights, and the learning rate is that of
    the steps really taken."""
    model, params = classifier()
    ctx = DistContext(device=torch.device("cuda", torch.cuda.current_device()))
    outcome = train(ctx, model, params, dataset(64), settings(precision, 6))
    assert outcome.steps == 6 and outcome.skipped_steps < 6
    taken = outcome.steps - outcome.skipped_steps
    assert outcome.lr == pytest.approx(LR * lr_factor(taken, 1, 64 // 8))  # 8 steps in the epoch's schedule
    assert all(torch.isfinite(v).all() for v in visual_weights(model).values())
    if precision == "bf16" and autocast_precision(ctx.device, "bf16", announce=False) == "bf16":
        assert outcome.skipped_steps == 0  # bf16 needs no scaler


def _ddp_rank(launch: Launch, out: str) -> None:
    """Spawn target: one NCCL rank trains the tiny classifier and reports its device and weights."""
    with process_group(launch, "cuda") as ctx:
        model, params = classifier()
        outcome = train(ctx, model, params, dataset(32), settings("bf16", 3, batch_size=8))
        total = ctx.all_reduce_sum([1.0]).item()
        record = {"rank": ctx.rank, "device": str(ctx.device), "current": torch.cuda.current_device(),
                  "backend": ctx.backend, "steps": outcome.steps, "ranks_counted": total,
                  "sha256": weights_fingerprint(model.encoder)}
        Path(out, f"rank{ctx.rank}.json").write_text(json.dumps(record))


@two_gpus
def test_two_nccl_ranks_train_identical_replicas(tmp_path: Path) -> None:
    launch_local(_ddp_rank, (str(tmp_path),), 2)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["device"] for r in records] == ["cuda:0", "cuda:1"] and [r["current"] for r in records] == [0, 1]
    assert {r["backend"] for r in records} == {"nccl"} and all(r["ranks_counted"] == 2 for r in records)
    assert all(r["steps"] == 3 for r in records) and records[0]["sha256"] == records[1]["sha256"]


_CUDA1_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from tsvmerge.training.distributed import Launch, process_group
    from tsvmerge.utils.memory import MemoryMonitor

    with process_group(Launch(), "cuda:1") as ctx, MemoryMonitor(device=ctx.device) as monitor:
        data = TensorDataset(torch.randn(16, 3), torch.arange(16))
        for images, _ in DataLoader(data, batch_size=4, pin_memory=True):
            images.to(ctx.device, non_blocking=True).sum().item()
        torch.randn(4).pin_memory()
    has_context = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    print(json.dumps({"device": str(ctx.device), "peak": monitor.report.peak_cuda_bytes,
                      "gpu0_context": None if has_context is None else bool(has_context(0))}))
""")


@two_gpus
def test_a_process_on_cuda_1_opens_no_context_on_gpu_0() -> None:
    """Pinned memory and DataLoader pin threads follow the current GPU, which a run on cuda:1 makes its own."""
    done = subprocess.run([sys.executable, "-c", _CUDA1_SCRIPT], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device"] == "cuda:1" and result["peak"] > 0
    assert result["gpu0_context"] in (False, None)


def _on(args: list[str], device: str) -> list[str]:
    args = list(args)
    args[args.index("--device") + 1] = device
    return args


def test_finetune_py_on_a_gpu(ft_world: World, tmp_path: Path) -> None:
    """finetune.py end to end on the current GPU: bf16 (or its fp16 fallback), evaluation, run record."""
    assert run_finetune(_on(finetune_args(ft_world, tmp_path, datasets=["MNIST"]), "cuda")) == 0
    record = json.loads((tmp_path / "results" / "finetuning" / MODEL / "MNISTVal.json").read_text())
    assert record["ranks"][0]["device"].startswith("cuda:") and record["backend"] is None
    assert record["precision"] in ("bf16", "fp16") and record["steps"] == 4
    assert all(0.0 <= value <= 1.0 for value in record["accuracies"].values())


@two_gpus
def test_finetune_py_on_two_gpus_with_nccl(ft_world: World, tmp_path: Path) -> None:
    args = _on(finetune_args(ft_world, tmp_path, "--world-size", "2", datasets=["MNIST"]), "cuda")
    assert run_finetune(args) == 0
    record = json.loads((tmp_path / "results" / "finetuning" / MODEL / "MNISTVal.json").read_text())
    assert record["backend"] == "nccl" and [r["device"] for r in record["ranks"]] == ["cuda:0", "cuda:1"]
    assert record["ranks"][0]["weights_sha256"] == record["ranks"][1]["weights_sha256"]
