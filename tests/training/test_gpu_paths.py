"""The GPU-facing parts of fine-tuning that a CPU can check: which GPU a rank takes, that a single process on
``cuda:k`` makes it current, that the thread limit and the current GPU are restored, and that steps the fp16 gradient
scaler skips do not advance the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from tests.support.fake_cuda import FakeCuda
from tsvmerge.config import ConfigError
from tsvmerge.models.factory import ModelSpec
from tsvmerge.models.finetuning_protocol import Hyperparameters
from tsvmerge.recipes.finetune import FinetuneConfig
from tsvmerge.training.distributed import Launch, limit_cpu_threads, process_group, rank_gpu, select_device
from tsvmerge.training.loop import cosine_with_warmup, optimizer_step


@pytest.mark.parametrize("local_rank,local_world_size,visible,expected", [
    (0, 1, 1, 0),
    (1, 2, 2, 1),
    (3, 4, 8, 3),  # a node with more GPUs than processes
    (1, 2, 1, 0),  # Slurm --gpus-per-task=1: each rank sees only its own GPU, as cuda:0
    (5, 8, 1, 0),
])
def test_the_gpu_of_a_rank(local_rank: int, local_world_size: int, visible: int, expected: int) -> None:
    assert rank_gpu(local_rank, local_world_size, visible) == torch.device("cuda", expected)


@pytest.mark.parametrize("local_rank,local_world_size,visible", [(2, 4, 2), (1, 2, 0), (0, 3, 2)])
def test_a_rank_without_a_gpu_of_its_own_is_an_error(local_rank: int, local_world_size: int, visible: int) -> None:
    with pytest.raises(RuntimeError, match=f"local rank {local_rank} of {local_world_size} .* no GPU of its own"):
        rank_gpu(local_rank, local_world_size, visible)


def test_select_device_uses_the_local_world_size(fake_cuda: FakeCuda) -> None:
    """Two nodes of 2 GPUs: rank 3 is local rank 1 of 2, not one of 4 processes sharing 2 GPUs."""
    assert select_device("cuda", local_rank=1, local_world_size=2) == torch.device("cuda", 1)
    fake_cuda.count = 1
    assert select_device("auto", local_rank=1, local_world_size=2) == torch.device("cuda", 0)
    assert select_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="names one GPU"):
        select_device("cuda:0", local_rank=1, local_world_size=2)


def test_a_single_process_on_cuda_k_makes_it_current(fake_cuda: FakeCuda) -> None:
    """Pinned-memory and DataLoader pin threads use the current GPU: it must be the run's, not GPU 0."""
    with process_group(Launch(), "cuda:1") as ctx:
        assert ctx.device == torch.device("cuda", 1) and not ctx.distributed
        assert fake_cuda.current == 1 and fake_cuda.initialized
    assert fake_cuda.current == 0  # left as it was found


def test_cpu_thread_limit_is_scoped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with limit_cpu_threads(4) as threads:
            assert threads == torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
        with pytest.raises(KeyError), limit_cpu_threads(2):
            raise KeyError("the work failed")
        assert torch.get_num_threads() == 3
        with limit_cpu_threads(1) as threads:
            assert threads == 3  # one process per node: nothing to share
    finally:
        torch.set_num_threads(before)


def _one_step(scaler: torch.amp.GradScaler, gradient: float) -> tuple[bool, int, float, torch.Tensor]:
    """One optimizer step on a single weight whose gradient is ``gradient``: (stepped, schedule position, lr of the
    next step, weight)."""
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([weight], lr=1e-2, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=4, total_steps=10)
    scaler.scale((weight * gradient).sum()).backward()
    stepped = optimizer_step(optimizer, scaler, scheduler, [weight], max_grad_norm=1.0)
    return stepped, scheduler.last_epoch, optimizer.param_groups[0]["lr"], weight.detach()


def test_a_step_skipped_by_the_gradient_scaler_does_not_advance_the_schedule() -> None:
    stepped, position, lr, weight = _one_step(torch.amp.GradScaler("cpu", init_scale=2.0**10), float("inf"))
    assert not stepped and position == 0 and lr == pytest.approx(1e-2 * 0.25)  # still the first warm-up lr
    assert torch.equal(weight, torch.ones(4))
    stepped, position, lr, weight = _one_step(torch.amp.GradScaler("cpu", init_scale=2.0**10), 1.0)
    assert stepped and position == 1 and lr == pytest.approx(1e-2 * 0.5)
    assert (weight < 1).all()


def test_without_a_scaler_every_step_advances_the_schedule() -> None:
    stepped, position, _, _ = _one_step(torch.amp.GradScaler("cuda", enabled=False), 1.0)
    assert stepped and position == 1


def test_hyperparameters_accept_every_positive_world_size() -> None:
    Hyperparameters(batch_size=8).validate(4)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        Hyperparameters(batch_size=6).validate(4)


@pytest.mark.parametrize("world_size", [0, -1])
def test_finetune_config_rejects_world_sizes_below_one(world_size: int) -> None:
    cfg = FinetuneConfig(model=ModelSpec(name="tiny"), tasks=("MNIST",), hyperparameters=Hyperparameters(),
                         device="cpu", world_size=world_size)
    with pytest.raises(ConfigError, match=f"--world-size must be >= 1, got {world_size}"):
        cfg.validate()


def test_finetune_config_checks_gpus_per_node_not_per_run(fake_cuda: FakeCuda) -> None:
    """torchrun on 2 nodes of 2 GPUs: 4 processes in all, 2 per node, each with its own GPU."""
    cfg = FinetuneConfig(model=ModelSpec(name="tiny"), tasks=("MNIST",), hyperparameters=Hyperparameters(batch_size=8),
                         device="cuda")
    cfg.validate(world_size=4, local_world_size=2)
    with pytest.raises(ConfigError, match="no GPU of its own"):
        cfg.validate(world_size=4, local_world_size=4)
