"""finetune.py end to end on CPU: real 2-process ``gloo`` DDP runs (``--world-size 2`` and ``torchrun``) of a tiny
open_clip model on fixture datasets, compared with one process using the same global batch; resume and crash paths;
main.py merging the produced checkpoints."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.entry_points import REPO, run_main
from tests.support.finetuning import DATASETS, FINETUNE, finetune_args, run_finetune
from tests.support.world import MODEL, World
from tests.training.conftest import load_checkpoint
from tsvmerge.recipes import finetune as recipe
from tsvmerge.training import loop
from tsvmerge.training.distributed import Launch

#: The real worker, kept before any test replaces ``recipe.run_worker``.
REAL_WORKER = recipe.run_worker

#: The key part of the attention input bias has an identically zero gradient (softmax is invariant to adding the same
#: q·b_k to every logit of a query); Adam normalizes its round-off noise (~1e-9) by sqrt(v) + 1e-8, which moves it by
#: up to O(lr) differently in runs that sum the same gradients in another order. Every other entry agrees to ~1e-8.
KEY_BIAS = "model.visual.transformer.resblocks.0.attn.in_proj_bias"
ATOL, KEY_BIAS_ATOL = 1e-6, 2e-4


def assert_same_training(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if key == KEY_BIAS:
            q, k, v = got[key].chunk(3)
            q0, k0, v0 = want[key].chunk(3)
            torch.testing.assert_close(torch.cat([q, v]), torch.cat([q0, v0]), rtol=0, atol=ATOL, msg=key)
            torch.testing.assert_close(k, k0, rtol=0, atol=KEY_BIAS_ATOL, msg=f"{key} (key part)")
        else:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=ATOL, msg=key)


def assert_trained(out: Path, dataset: str) -> None:
    """Fine-tuned ≠ zero-shot in the image tower (well above the comparison tolerance); text leftovers untouched."""
    finetuned, zeroshot = load_checkpoint(out, dataset), load_checkpoint(out, dataset, "zeroshot")
    assert finetuned.keys() == zeroshot.keys()
    moved = max((finetuned[k] - zeroshot[k]).abs().max().item() for k in finetuned if k.startswith("model.visual."))
    assert moved > 100 * ATOL
    for key in finetuned:
        if not key.startswith("model.visual."):
            assert torch.equal(finetuned[key], zeroshot[key]), key


def run_record(out: Path, dataset: str) -> dict:
    return json.loads((out / "results" / "finetuning" / MODEL / f"{dataset}Val.json").read_text())


@pytest.fixture(scope="module")
def reference(ft_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, global batch 6 (no process group, no DDP)."""
    out = tmp_path_factory.mktemp("single")
    assert run_finetune(finetune_args(ft_world, out)) == 0
    return out


def test_single_process_output_layout(reference: Path) -> None:
    for d in DATASETS:
        assert_trained(reference, d)
        record = run_record(reference, d)
        assert record["world_size"] == 1 and record["steps"] == 4 and record["backend"] is None
        assert record["ranks"][0]["samples"] == 4 * 6
        assert (reference / "checkpoints" / MODEL / f"head_{d}Val.pt").is_file()  # built from the text tower
    accuracies = json.loads((reference / "results" / "single_task" / MODEL / "nonlinear_ft_accuracies.json")
                            .read_text())
    assert set(accuracies) == {*DATASETS, *(f"{d}Val" for d in DATASETS)}
    assert all(0.0 <= v <= 1.0 for v in accuracies.values())


def test_rerun_skips_finished_tasks(ft_world: World, reference: Path, capsys: pytest.CaptureFixture) -> None:
    paths = [reference / "checkpoints" / MODEL / f"{d}Val" / "nonlinear_finetuned.pt" for d in DATASETS]
    before = [p.stat().st_mtime_ns for p in paths]
    assert run_finetune(finetune_args(ft_world, reference)) == 0
    assert [p.stat().st_mtime_ns for p in paths] == before
    assert capsys.readouterr().out.count("skipped") == len(DATASETS)


def test_gradient_accumulation_matches_the_full_batch(ft_world: World, reference: Path, tmp_path: Path) -> None:
    """One process: 2 forward passes of 3 images per step = one pass of 6."""
    assert run_finetune(finetune_args(ft_world, tmp_path, batch=3, accumulation=2, datasets=["MNIST"])) == 0
    assert_same_training(load_checkpoint(tmp_path, "MNIST"), load_checkpoint(reference, "MNIST"))


def test_two_spawned_ranks_train_like_one_process(ft_world: World, reference: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--world-size 2``: 2 processes (gloo), 3 images each per step, equal the 1-process run with batch 6; then
    main.py merges the checkpoints."""
    assert run_finetune(finetune_args(ft_world, tmp_path, "--world-size", "2", "--checkpoint-every", "2")) == 0
    for d in DATASETS:
        record = run_record(tmp_path, d)
        ranks = record["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and len({r["pid"] for r in ranks}) == 2  # both ranks ran
        assert [r["samples"] for r in ranks] == [4 * 3, 4 * 3] and record["backend"] == "gloo"
        assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # DDP replicas bitwise identical
        assert_trained(tmp_path, d)
        assert_same_training(load_checkpoint(tmp_path, d), load_checkpoint(reference, d))
        assert torch.equal(load_checkpoint(tmp_path, d, "zeroshot")["model.visual.proj"],
                           load_checkpoint(reference, d, "zeroshot")["model.visual.proj"])
        folder = tmp_path / "checkpoints" / MODEL / f"{d}Val"
        assert sorted(p.name for p in folder.glob("checkpoint_*.pt")) == ["checkpoint_2.pt", "checkpoint_4.pt"]
        assert not list(folder.glob(".*.tmp"))

    accuracies = ft_world.ft_accuracies  # positive denominators (those of a tiny run can be 0)
    args = ft_world.main_args("method=TSVM", f"model_location={tmp_path / 'checkpoints'}",
                              f"results_dir={tmp_path / 'results'}", f"ft_accuracies={accuracies}",
                              f"DATASETS=[{','.join(DATASETS)}]", run_dir=tmp_path / "run")
    assert run_main(args, monkeypatch) == 0
    [result] = (tmp_path / "results" / "merging").glob("*.json")
    payload = json.loads(result.read_text())
    assert payload["datasets"] == DATASETS and 0.0 <= payload["test"]["avg_top1"] <= 1.0


def test_task_parallel_trains_each_task_like_one_process(ft_world: World, reference: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """``--task-parallel 2``: each task in its own spawned process gives the checkpoints of the sequential run, and
    the parent records every accuracy in one file and prints one table."""
    assert run_finetune(finetune_args(ft_world, tmp_path, "--task-parallel", "2")) == 0
    pids = set()
    for d in DATASETS:
        record = run_record(tmp_path, d)
        assert record["world_size"] == 1 and record["steps"] == 4
        pids.add(record["ranks"][0]["pid"])
        assert_trained(tmp_path, d)
        assert_same_training(load_checkpoint(tmp_path, d), load_checkpoint(reference, d))
    assert len(pids) == 2 and os.getpid() not in pids  # one process per task, not this one
    accuracy_file = Path("results") / "single_task" / MODEL / "nonlinear_ft_accuracies.json"
    got = json.loads((tmp_path / accuracy_file).read_text())
    want = json.loads((reference / accuracy_file).read_text())
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-9 for k in want)
    out = capsys.readouterr().out
    assert "in 2 processes: MNIST; EuroSAT" in out and out.count("dataset ") == 1  # one table


def test_task_groups_deal_tasks_round_robin() -> None:
    assert recipe.task_groups(["a", "b", "c", "d", "e"], 2) == [("a", "c", "e"), ("b", "d")]
    assert recipe.task_groups(["a", "b"], 4) == [("a",), ("b",)]
    assert recipe.task_groups(["a"], 1) == [("a",)]


def test_task_parallel_with_several_ranks_per_task_is_refused(ft_world: World, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert run_finetune(finetune_args(ft_world, tmp_path, "--task-parallel", "2", "--world-size", "2")) != 0
    assert "cannot be combined with 2 processes per task" in capsys.readouterr().err


def test_torchrun_two_ranks_with_accumulation(ft_world: World, reference: Path, tmp_path: Path) -> None:
    """``torchrun --standalone --nproc_per_node=2``: 1 image per rank per pass, 3 accumulated passes (DDP
    ``no_sync``) = the 1-process run with batch 6."""
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(FINETUNE),
               *finetune_args(ft_world, tmp_path, batch=2, accumulation=3)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    for d in DATASETS:
        record = run_record(tmp_path, d)
        assert record["world_size"] == 2 and [r["samples"] for r in record["ranks"]] == [4 * 3, 4 * 3]
        assert record["ranks"][0]["weights_sha256"] == record["ranks"][1]["weights_sha256"]
        assert_same_training(load_checkpoint(tmp_path, d), load_checkpoint(reference, d))
    assert "fine-tuned top-1" in done.stdout


class InjectedFailure(RuntimeError):
    """What the failing rank of the crash test raises."""


def failing_worker(launch: Launch, cfg: recipe.FinetuneConfig, *, fail_rank: int, fail_step: int) -> list:
    """Spawn target (runs in the child process): rank ``fail_rank`` raises once its learning-rate schedule has been
    advanced ``fail_step`` times, i.e. right after its ``fail_step``-th optimizer step; then the real worker runs."""
    if launch.rank == fail_rank:
        real_schedule = loop.cosine_with_warmup

        def failing_schedule(*args: object, **kwargs: object) -> torch.optim.lr_scheduler.LambdaLR:
            scheduler = real_schedule(*args, **kwargs)
            advance = scheduler.step

            def step() -> None:
                advance()
                if scheduler.last_epoch == fail_step:
                    raise InjectedFailure(f"injected failure on rank {launch.rank} at step {fail_step}")

            scheduler.step = step  # type: ignore[method-assign]
            return scheduler

        loop.cosine_with_warmup = failing_schedule  # this child process only
    return REAL_WORKER(launch, cfg)


def test_a_crashing_rank_ends_the_run(ft_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    """Rank 1 raises at its 2nd optimizer step: the run stops with an error naming it, nothing half-written."""
    monkeypatch.setattr(recipe, "run_worker", functools.partial(failing_worker, fail_rank=1, fail_step=2))
    code = run_finetune(finetune_args(ft_world, tmp_path, "--world-size", "2", datasets=["MNIST"]))
    assert code == 1
    err = capsys.readouterr().err
    assert "rank 1 failed: InjectedFailure" in err and "traceback of rank 1" in err
    assert "injected failure on rank 1 at step 2" in err
    folder = tmp_path / "checkpoints" / MODEL / "MNISTVal"
    assert (folder / "nonlinear_zeroshot.pt").is_file()  # written before training, complete
    assert not (folder / "nonlinear_finetuned.pt").exists()
    assert not [p for p in (tmp_path / "checkpoints").rglob("*") if p.name.endswith(".tmp")]


def test_a_run_leaves_torch_global_state_as_it_found_it(ft_world: World, tmp_path: Path) -> None:
    """In-process fine-tuning seeds its own random streams and shares CPU threads only while it runs."""
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    assert run_finetune(finetune_args(ft_world, tmp_path, "--no-eval", datasets=["MNIST"])) == 0
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)
