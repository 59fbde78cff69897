"""The embedded demo end to end (reduced: 4 tasks, short pre-training and fine-tuning): the integration test of
pre-training -> finetune.py -> eval_single_task.py -> main.py for every method -> summary table and chart."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tsvmerge.data import SYNTHETIC_TASKS

REPO = Path(__file__).resolve().parents[2]
METHODS = ("zeroshot", "average", "regmean", "sum", "ties", "tall_mask", "consensus", "TSVM", "iso_c", "iso_cts",
           "dc_merge", "esm", "cart", "TSVC")


def _demo(tmp: Path, *extra: str) -> str:
    command = [sys.executable, "demo.py", "--quick", "--no-progress", f"--data-location={tmp / 'data'}",
               f"--model-location={tmp / 'models' / 'checkpoints'}", f"--results-dir={tmp / 'results'}", *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("demo")
    return tmp, _demo(tmp)


def test_every_step_leaves_its_files(demo_run: tuple[Path, str]) -> None:
    tmp, out = demo_run
    tasks = list(SYNTHETIC_TASKS[:4])
    models = tmp / "models" / "checkpoints" / "demo"
    assert (models / "pretrained_clip.safetensors").is_file()
    for task in tasks:  # the published layout, written by finetune.py
        assert (models / f"{task}Val" / "nonlinear_finetuned.pt").is_file()
        assert (models / f"{task}Val" / "nonlinear_zeroshot.pt").is_file()
        assert (models / f"head_{task}Val.pt").is_file()
    accuracies = json.loads((tmp / "results" / "single_task" / "demo" / "nonlinear_ft_accuracies.json").read_text())
    assert set(accuracies) == {*tasks, *(f"{t}Val" for t in tasks)}
    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
               for p in (tmp / "results" / "merging").glob("*.json")}
    assert set(results) == set(METHODS)
    for method, payload in results.items():
        assert payload["datasets"] == tasks and payload["model"] == "demo", method
        assert 0.0 <= payload["test"]["avg_top1"] <= 1.0
    for command in ("finetune.py --model=demo", "eval_single_task.py --model=demo", "main.py model=demo"):
        assert command in out  # the command lines doing each step by hand, printed before it runs


def test_summary_matches_the_result_files(demo_run: tuple[Path, str]) -> None:
    tmp, out = demo_run
    results = tmp / "results"
    rows = list(csv.DictReader((results / "summary.csv").open()))
    assert [r["method"] for r in rows] == ["zeroshot", "average", "regmean", "sum", "ties", "consensus", "tall_mask",
                                           "TSVM", "iso_c", "iso_cts", "dc_merge", "esm", "cart", "TSVC", "finetuned"]
    ft = json.loads((results / "single_task" / "demo" / "nonlinear_ft_accuracies.json").read_text())
    for row in rows:
        if row["method"] == "finetuned":
            assert float(row["avg_normalized_top1"]) == 1.0
            assert float(row["avg_top1"]) == pytest.approx(sum(ft[t] for t in SYNTHETIC_TASKS[:4]) / 4)
            continue
        payload = json.loads(Path(row["source"]).read_text())
        assert float(row["avg_top1"]) == pytest.approx(payload["test"]["avg_top1"])
        assert float(row["avg_normalized_top1"]) == pytest.approx(payload["test"]["avg_normalized_top1"])
    # The zero-shot row is the pre-trained model itself: the same number whatever α grid.
    zeroshot = next(r for r in rows if r["method"] == "zeroshot")
    assert float(zeroshot["avg_top1"]) > 0.1 + 1e-9  # better than chance (10 classes): genuinely pre-trained
    assert (results / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (results / "summary.md").read_text()
    assert "| TSV-M |" in markdown and "| Fine-tuned" in markdown
    assert markdown.split("\n\n", 1)[1] in out  # the table printed at the end


def test_rerun_reuses_what_is_cached(demo_run: tuple[Path, str]) -> None:
    tmp, _ = demo_run
    out = _demo(tmp)
    assert "(cached)" in out and "merge results: all cached" in out
    assert "pre-training the demo CLIP" not in out and "Launching" not in out


def _to_adapters(models: Path, adapters: Path, materialized: Path, rank: int = 4) -> None:
    """Two copies of the demo's checkpoint folder: in ``adapters`` each task's fine-tuning of the visual tower's
    linear maps becomes a PEFT LoRA adapter (its rank-``rank`` truncation, ``<Task>Val/adapter/``, no
    ``nonlinear_finetuned.pt``); in ``materialized`` the same updates are written into full checkpoints."""
    import re
    import shutil

    from safetensors.torch import save_file

    from tsvmerge.checkpoints.state_dict import open_state_dict, save_state_dict

    shutil.copytree(models, adapters)
    shutil.copytree(models, materialized)
    for task_folder in sorted((models / "demo").glob("*Val")):
        theta0 = dict(open_state_dict(task_folder / "nonlinear_zeroshot.pt").items())
        finetuned = dict(open_state_dict(task_folder / "nonlinear_finetuned.pt").items())
        full, tensors = {key: value.clone() for key, value in theta0.items()}, {}
        for key in theta0:
            found = re.fullmatch(r"model\.visual\.(transformer\.resblocks\.\d+\.(mlp\.c_fc|mlp\.c_proj|attn\.out_proj))"
                                 r"\.weight", key)
            if found is None:
                continue
            U, s, Vh = torch.linalg.svd((finetuned[key] - theta0[key]).double(), full_matrices=False)
            B, A = (U[:, :rank] * s[:rank]).float(), Vh[:rank].float()
            tensors[f"base_model.model.{found[1]}.lora_A.weight"] = A.contiguous()
            tensors[f"base_model.model.{found[1]}.lora_B.weight"] = B.contiguous()
            full[key] = theta0[key] + B @ A
        adapter = adapters / "demo" / task_folder.name / "adapter"
        adapter.mkdir()
        save_file(tensors, str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["c_fc", "c_proj", "out_proj"]}))
        (adapters / "demo" / task_folder.name / "nonlinear_finetuned.pt").unlink()
        save_state_dict(full, materialized / "demo" / task_folder.name / "nonlinear_finetuned.pt")


def test_lora_adapters_on_the_demo_model_merge_and_evaluate_as_their_materialized_checkpoints(
        demo_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from tests.support.entry_points import run_main

    tmp, out = demo_run
    printed = out.split("==> merging and evaluating: TSVM\n$ ", 1)[1].split("\n", 1)[0]
    args = [arg for arg in shlex.split(printed)[2:]  # after `python main.py`
            if not arg.startswith(("model_location=", "results_dir=", "method=", "n_eval_points="))]
    _to_adapters(tmp / "models" / "checkpoints", tmp_path / "adapters", tmp_path / "materialized")
    payloads = {}
    for kind in ("adapters", "materialized"):
        results = tmp_path / f"results_{kind}"
        assert run_main([*args, "method=TSVM", "n_eval_points=3", f"model_location={tmp_path / kind}",
                         f"results_dir={results}",
                         f"ft_accuracies={tmp / 'results' / 'single_task' / 'demo' / 'nonlinear_ft_accuracies.json'}",
                         f"hydra.run.dir={results / 'run'}"], monkeypatch) == 0
        payloads[kind] = json.loads(next((results / "merging").glob("*.json")).read_text())
    for field in ("alpha", "alpha_grid", "test", "val", "val_best"):
        assert payloads["adapters"][field] == payloads["materialized"][field], field
