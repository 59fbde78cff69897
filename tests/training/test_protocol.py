"""The published protocol's settings, the learning-rate schedule, the command line and the launch helpers."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from tests.support.finetuning import finetune_args, run_finetune
from tests.support.world import MODEL, World
from tsvmerge.data import BENCHMARK_DATASETS
from tsvmerge.models import finetuning_protocol as protocol
from tsvmerge.training.distributed import detect_launch
from tsvmerge.training.loop import cosine_with_warmup, lr_factor, steps_per_epoch


def test_published_epochs_and_hyperparameters() -> None:
    assert set(protocol.EPOCHS) == set(BENCHMARK_DATASETS)
    assert protocol.EPOCHS["Cars"] == 35 and protocol.EPOCHS["Flowers102"] == 147 and protocol.EPOCHS["PCAM"] == 1
    assert protocol.default_epochs("MNISTVal") == protocol.default_epochs("MNIST") == 5
    hp = protocol.default_hyperparameters("ViT-B-32")
    assert (hp.lr, hp.weight_decay, hp.batch_size, hp.num_grad_accumulation, hp.warmup_steps, hp.max_grad_norm,
            hp.label_smoothing) == (1e-5, 0.1, 128, 1, 500, 1.0, 0.0)
    large = protocol.default_hyperparameters("ViT-L-14")
    assert (large.batch_size, large.num_grad_accumulation, large.effective_batch_size) == (64, 2, 128)
    assert protocol.default_hyperparameters("ViT-L-14", lr=3e-5, batch_size=None).lr == 3e-5
    assert protocol.default_tasks() == protocol.default_tasks("paper") == list(BENCHMARK_DATASETS)
    with pytest.raises(KeyError, match="--epochs"):
        protocol.default_epochs("Unknown")


def test_a_model_config_overrides_the_protocol() -> None:
    from tsvmerge.data import SYNTHETIC_TASKS

    own = {"lr": 1e-3, "batch_size": 64, "warmup_steps": 10, "epochs": {"Digits": 3}}
    assert protocol.check_protocol_overrides(own) == []
    hp = protocol.default_hyperparameters("demo", None, own, lr=2e-3)
    assert (hp.lr, hp.batch_size, hp.warmup_steps, hp.weight_decay) == (2e-3, 64, 10, 0.1)
    assert protocol.default_epochs("DigitsVal", own["epochs"]) == 3 and protocol.default_epochs("MNIST", {}) == 5
    assert protocol.default_tasks("synthetic") == list(SYNTHETIC_TASKS)
    problems = protocol.check_protocol_overrides({"lr": "fast", "batch_size": 6.5, "epochs": {"Digits": 0},
                                                  "momentum": 0.9})
    assert len(problems) == 4 and any("valid keys" in p for p in problems)


def _published_cosine_lr(base_lr: float, warmup: int, steps: int, step: int) -> float:
    """src/utils/utils.py cosine_lr of the published code."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, steps - warmup
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def test_cosine_schedule_matches_the_published_one() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-5)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=5, total_steps=20)
    used = []
    for _ in range(20):
        used.append(optimizer.param_groups[0]["lr"])  # the lr of this optimizer step
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([_published_cosine_lr(1e-5, 5, 20, k) for k in range(20)], rel=1e-12)
    assert lr_factor(0, 0, 10) == 1.0 and lr_factor(3, 5, 5) == pytest.approx(0.8)  # no warm-up; total <= warm-up
    assert steps_per_epoch(9, 3) == 3 and steps_per_epoch(10, 3) == 4


def test_launch_environment() -> None:
    assert detect_launch({}) is None
    launch = detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                            "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert launch is not None and (launch.kind, launch.rank, launch.world_size, launch.local_rank) == ("env", 3, 8, 1)
    assert launch.local_world_size == 4  # the processes of this node, not the 8 of the whole run
    single_node = detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert single_node is not None and single_node.local_world_size == 2  # no LOCAL_WORLD_SIZE: all on this node
    with pytest.raises(ValueError, match="RANK"):
        detect_launch({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="LOCAL_RANK=2 / LOCAL_WORLD_SIZE=2"):
        detect_launch({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"})


@pytest.mark.parametrize("extra,message", [
    (["--world-size", "4"], "multiple of the number of processes"),
    (["--train-dataset", "NotADataset"], "Unknown dataset"),
    (["--precision", "fp32", "--device", "tpu"], "cpu or cuda"),
])
def test_invalid_settings_are_rejected_before_any_work(ft_world: World, tmp_path: Path, extra: list[str],
                                                       message: str, capsys: pytest.CaptureFixture) -> None:
    assert run_finetune([*finetune_args(ft_world, tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("world_size", ["0", "-2"])
def test_world_sizes_below_one_are_a_configuration_error(ft_world: World, tmp_path: Path, world_size: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert run_finetune([*finetune_args(ft_world, tmp_path), "--world-size", world_size]) == 2
    assert re.search(rf"world.size must be (>= 1|at least 1), got {world_size}", capsys.readouterr().err)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_inputs_are_listed(ft_world: World, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = finetune_args(ft_world, tmp_path)
    args[args.index("--data-location") + 1] = str(tmp_path / "no_data")
    args += ["--pretrained", str(tmp_path / "missing.pt")]
    assert run_finetune(args) == 2
    err = capsys.readouterr().err
    assert "Cannot start fine-tuning" in err and "MNIST" in err and "EuroSAT" in err and "missing.pt" in err


def test_train_dataset_flag_spellings(ft_world: World) -> None:
    from tests.support.finetuning import FINETUNE
    from tsvmerge.config import compose_config
    from tsvmerge.recipes import finetune
    from tsvmerge.recipes.configs import config_source

    args = finetune.build_parser().parse_args(["--train-dataset", "MNISTVal,Cars", "--train-dataset", "DTD",
                                               "--ls", "0.1", "--warmup-length", "7", "--model", MODEL,
                                               "--config-dir", str(ft_world.conf)])
    source = config_source(FINETUNE.parent / "config", args.config_dir)
    cfg = finetune.finetune_config(compose_config(source, "finetune", finetune.overrides_from_args(args)))
    assert cfg.tasks == ("MNIST", "Cars", "DTD")
    assert (cfg.hyperparameters.label_smoothing, cfg.hyperparameters.warmup_steps) == (0.1, 7)


def test_the_first_rank_failing_on_its_own_is_reported(tmp_path: Path) -> None:
    import json

    from tsvmerge.training.distributed import _root_cause

    def write(rank: int, kind: str, time: float, communication: bool, terminated: bool = False) -> None:
        (tmp_path / f"rank{rank}.json").write_text(json.dumps({
            "rank": rank, "time": time, "type": kind, "message": f"{kind} on {rank}", "traceback": f"tb {rank}",
            "communication": communication, "terminated": terminated}))

    write(0, "RuntimeError", 1.0, communication=True)  # lost its peer, noticed first
    write(1, "ValueError", 2.0, communication=False)
    write(2, "_Terminated", 3.0, communication=False, terminated=True)
    error = _root_cause(tmp_path, RuntimeError("fallback"))
    assert error.rank == 1 and str(error).startswith("rank 1 failed: ValueError: ValueError on 1")
    assert "rank 0 (RuntimeError) failed as a consequence" in str(error) and "tb 1" in str(error)
    assert "rank 2" not in str(error).split("traceback")[0]


def test_world_sizes_below_one_are_rejected_before_any_division() -> None:
    for world_size in (0, -1):
        with pytest.raises(ValueError, match=f"--world-size must be >= 1, got {world_size}"):
            protocol.Hyperparameters().validate(world_size)
