"""The α sweep re-uses one model in memory: no checkpoint is read twice (none during the sweep), every dataset is
built once and every evaluation image is preprocessed once, however many α values are tried."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

import tsvmerge.evaluation.eval_data as eval_data
import tsvmerge.checkpoints.peft_adapter as peft_adapter
import tsvmerge.recipes.merge_and_evaluate as merge_and_evaluate
import tsvmerge.models.encoder as encoder_module
from tests.support.entry_points import load, run_main
from tests.support.world import World
from tsvmerge.evaluation.alpha_search import InPlaceWeights
from tsvmerge.evaluation.evaluate import EvalSplit


@pytest.mark.parametrize("method", ["sum", "tall_mask"])
def test_sweep_reads_checkpoints_once_and_builds_datasets_once(world: World, method: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    opened: Counter[str] = Counter()
    built: Counter[str] = Counter()
    models: list[str] = []
    splits: list[EvalSplit] = []
    torch_loads = {"count": 0, "at_first_update": None}
    updates = {"count": 0}

    real_open, real_get = merge_and_evaluate.open_state_dict, eval_data.get_dataset
    real_create = encoder_module.create_clip
    real_load, real_set, real_init = torch.load, InPlaceWeights.set, EvalSplit.__init__

    def counting_open(path, *a, **k):
        opened[str(path)] += 1
        return real_open(path, *a, **k)

    def counting_get(name, *a, **k):
        built[name] += 1
        return real_get(name, *a, **k)

    def counting_create(spec, **k):
        models.append(spec.name)
        return real_create(spec, **k)

    def counting_load(*a, **k):
        torch_loads["count"] += 1
        return real_load(*a, **k)

    def counting_set(self, *a, **k):
        if torch_loads["at_first_update"] is None:
            torch_loads["at_first_update"] = torch_loads["count"]
        updates["count"] += 1
        return real_set(self, *a, **k)

    def recording_init(self, *a, **k):
        real_init(self, *a, **k)
        splits.append(self)

    monkeypatch.setattr(merge_and_evaluate, "open_state_dict", counting_open)
    monkeypatch.setattr(peft_adapter, "open_state_dict", counting_open)  # the fine-tuned checkpoints' opener
    monkeypatch.setattr(eval_data, "get_dataset", counting_get)
    monkeypatch.setattr(encoder_module, "create_clip", counting_create)
    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(InPlaceWeights, "set", counting_set)
    monkeypatch.setattr(EvalSplit, "__init__", recording_init)

    results = tmp_path / "results"
    args = world.main_args(f"method={method}", "n_eval_points=6", f"results_dir={results}",
                           f"ft_accuracies={world.ft_accuracies}", run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 0
    payload = load(next((results / "merging").glob("*.json")))

    n = len(world.datasets)
    if method == "sum":
        assert len(payload["alpha_grid"]) == 5 and updates["count"] == 5 + 1  # 5 α on val, then test at the best
    else:
        assert updates["count"] == n * 5 + n + 1  # each task: 5 λ on val, its chosen λ on test, final reset
    assert models == [world.spec.name], "one image encoder per run"
    assert set(opened.values()) == {1} and len(opened) == n + 1, opened  # θ0 and each fine-tuned checkpoint
    assert torch_loads["count"] == torch_loads["at_first_update"], "nothing is read from disk once sweeping"
    assert built == Counter({**{d: 1 for d in world.datasets}, **{f"{d}Val": 1 for d in world.datasets}})
    val_splits = [s for s in splits if s.name.endswith("Val")]
    assert len(val_splits) == n and all(s.preprocess_passes == 1 for s in val_splits), \
        "each validation split is preprocessed once and then served from the cache"
