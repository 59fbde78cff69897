"""main.py on LoRA adapters: a task folder holding ``adapter/`` (PEFT, trained on the open_clip visual tower) instead
of ``nonlinear_finetuned.pt`` is merged and evaluated exactly as the materialized checkpoint would be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support.entry_points import load, run_main
from tests.support.world import MODEL, World, make_world
from tsvmerge.checkpoints import finetuned_adapter_path, finetuned_checkpoint_path, zeroshot_checkpoint_path
from tsvmerge.checkpoints.peft_adapter import open_task_source
from tsvmerge.checkpoints.state_dict import open_state_dict, save_state_dict
from tsvmerge.merging import TaskVectors, merge

#: open_clip visual-tower modules a PEFT LoRA can target (nn.Linear), as named inside ``clip.visual``
TARGETS = ["transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.0.mlp.c_proj",
           "transformer.resblocks.0.attn.out_proj"]


def _write_adapter(folder: Path, theta0: dict, seed: int, rank: int = 2, alpha: float = 4.0) -> dict:
    """A PEFT adapter folder on ``clip.visual`` (keys ``base_model.model.transformer…``); returns θ0 + ΔW."""
    g = torch.Generator().manual_seed(seed)
    tensors, materialized = {}, {key: value.clone() for key, value in theta0.items()}
    for module in TARGETS:
        weight = theta0[f"model.visual.{module}.weight"]
        A = 0.3 * torch.randn(rank, weight.shape[1], generator=g)
        B = 0.3 * torch.randn(weight.shape[0], rank, generator=g)
        tensors[f"base_model.model.{module}.lora_A.weight"] = A
        tensors[f"base_model.model.{module}.lora_B.weight"] = B
        materialized[f"model.visual.{module}.weight"] = weight + (alpha / rank) * (B @ A)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["c_fc", "c_proj", "out_proj"],
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "base_model_name_or_path": None}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return materialized


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = make_world(tmp_path_factory.mktemp("world"))
    theta0 = dict(open_state_dict(zeroshot_checkpoint_path(world.checkpoints, MODEL)).items())
    for i, dataset in enumerate(world.datasets):
        materialized = _write_adapter(finetuned_adapter_path(world.checkpoints, MODEL, dataset), theta0, seed=i)
        save_state_dict(materialized, finetuned_checkpoint_path(world.checkpoints, MODEL, dataset))
    return world


def _run(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, method: str, adapters: bool) -> dict:
    """One main.py run, on the adapters (the materialized checkpoints moved aside) or on the checkpoints."""
    moved = []
    if adapters:
        for dataset in world.datasets:
            path = finetuned_checkpoint_path(world.checkpoints, MODEL, dataset)
            shutil.move(path, path.with_suffix(".aside"))
            moved.append(path)
    try:
        results = tmp_path / ("adapters" if adapters else "checkpoints")
        args = world.main_args(f"method={method}", f"results_dir={results}", f"ft_accuracies={world.ft_accuracies}",
                               run_dir=results / "run")
        assert run_main(args, monkeypatch) == 0
    finally:
        for path in moved:
            shutil.move(path.with_suffix(".aside"), path)
    files = sorted((results / "merging").glob("*.json"))
    assert len(files) == 1, files
    return load(files[0])


@pytest.mark.parametrize("method", ["TSVM", "sum", "ties"])
def test_adapters_are_merged_and_evaluated_as_their_materialized_checkpoints(world, monkeypatch, tmp_path, method):
    from_adapters = _run(world, monkeypatch, tmp_path, method, adapters=True)
    from_checkpoints = _run(world, monkeypatch, tmp_path, method, adapters=False)
    for field in ("alpha", "alpha_grid", "test", "val", "val_best"):
        assert from_adapters[field] == from_checkpoints[field], field


@pytest.mark.parametrize("method", ["TSVM", "sum", "iso_c", "ties"])
def test_merged_task_vectors_from_adapters_equal_those_of_the_materialized_checkpoints(world, method):
    theta0 = open_state_dict(zeroshot_checkpoint_path(world.checkpoints, MODEL))
    adapters = [open_task_source(finetuned_adapter_path(world.checkpoints, MODEL, d), theta0) for d in world.datasets]
    dense = [open_state_dict(finetuned_checkpoint_path(world.checkpoints, MODEL, d)) for d in world.datasets]
    ours = merge(method, TaskVectors(theta0, adapters, names=world.datasets), progress=False).task_vector
    reference = merge(method, TaskVectors(theta0, dense, names=world.datasets), progress=False).task_vector
    assert ours.keys() == reference.keys()
    for key, tau in reference.items():
        error = float((ours[key] - tau).norm()) / max(float(tau.norm()), 1e-12)
        assert error <= 1e-5, (key, error)
