"""Every registered merge method on CUDA task vectors equals its CPU result (every SVD mode), and a GPU merge's peak
memory does not grow with the number of layers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.gpu.common import GPU_COUNT, gpu, mismatch_fraction, relative_error
from tests.gpu.synthetic import checkpoints
from tsvmerge.merging import MergeResult, TaskVectors, available_methods, merge, method_parameters
from tsvmerge.merging import svd as svd_module
from tsvmerge.utils.memory import MemoryMonitor

pytestmark = gpu

NUM_TASKS = 4
PARAMS: dict[str, dict[str, Any]] = {"consensus": {"tall_lambda": 0.4}}
SVD_MODES = ("exact", "full", "randomized")
#: Methods whose output is selected by thresholds or masks: a summation order may flip a borderline entry.
MASKED = {"ties", "tall_mask", "consensus", "mag_masking"}
#: Largest relative (Frobenius) difference from the CPU per entry, by method and SVD mode. They are about ten times
#: the float32 error of each computation (measured against float64): whitening squares the condition number of the
#: concatenated singular vectors, and the randomized mode takes its Procrustes factor through a Gram matrix.
TOLERANCE = {None: 1e-5, "exact": 1e-4, "full": 1e-4, "randomized": 1e-2}
METHOD_TOLERANCE = {("TSVM_2", "exact"): 0.1, ("TSVM_2", "full"): 0.1, ("TSVM_2", "randomized"): 0.2,
                    ("TSVM_interference_only", "exact"): 1e-2, ("TSVM_interference_only", "full"): 1e-2,
                    ("TSVM_interference_only", "randomized"): 5e-2}


def _cases() -> list[Any]:
    cases = []
    for name in available_methods():
        params = PARAMS.get(name, {})
        if "svd" in method_parameters(name):
            cases += [pytest.param(name, {**params, "svd": mode}, id=f"{name}-{mode}") for mode in SVD_MODES]
        else:
            cases.append(pytest.param(name, params, id=name))
    return cases


@pytest.fixture(scope="module")
def ckpts() -> tuple[dict, list[dict]]:
    return checkpoints(layers=2, width=48, num_tasks=NUM_TASKS)


@pytest.fixture
def float32_sketches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's randomized range finder in float32 too (it may use bfloat16 where the CPU multiplies it natively):
    the same random sketch on both sides, so the results agree to float32 round-off."""
    if hasattr(svd_module, "sketch_dtype"):
        monkeypatch.setattr(svd_module, "sketch_dtype", lambda device, dtype: dtype)


def outputs(result: MergeResult, num_tasks: int) -> dict[str, torch.Tensor]:
    """Everything a merge produced, by name: τMT, each task's own vector for every mask choice, the masks."""
    out = {f"tv/{key}": value for key, value in (result.task_vector or {}).items()}
    if result.method.task_specific:
        for task in range(num_tasks):
            for choice in range(max(1, len(result.mask_labels))):
                out |= {f"task{task}/{choice}/{key}": value
                        for key, value in result.task_specific_vector(task, choice)}
    out |= {f"masks/{key}": value.float() for key, value in (result.masks or {}).items()}
    return out


@pytest.mark.parametrize("name,params", _cases())
def test_cuda_merge_equals_cpu_merge(ckpts: tuple[dict, list[dict]], name: str, params: dict[str, Any],
                                     float32_sketches: None) -> None:
    pre, fts = ckpts
    cpu = merge(name, TaskVectors(pre, fts, device="cpu"), params, progress=False)
    cuda = merge(name, TaskVectors(pre, fts, device="cuda"), params, progress=False)
    want, got = outputs(cpu, NUM_TASKS), outputs(cuda, NUM_TASKS)
    assert got.keys() == want.keys()
    assert all(value.device.type == "cpu" for value in got.values())  # results come back to the CPU
    mode = params.get("svd")
    tol = METHOD_TOLERANCE.get((name, mode), TOLERANCE[mode])
    for key, value in want.items():
        assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
        if name in MASKED:
            scale = float(value.abs().max()) if value.numel() else 0.0
            assert mismatch_fraction(got[key], value, atol=1e-5 * scale + 1e-12) <= 1e-3, key
        else:
            assert relative_error(got[key], value) <= tol, key


@pytest.mark.skipif(GPU_COUNT < 2, reason="needs 2 GPUs")
def test_merge_on_the_second_gpu(ckpts: tuple[dict, list[dict]]) -> None:
    pre, fts = ckpts
    cpu = merge("TSVM", TaskVectors(pre, fts), progress=False).task_vector
    with MemoryMonitor(device=torch.device("cuda:1")) as monitor:
        result = merge("TSVM", TaskVectors(pre, fts, device=monitor.device), progress=False).task_vector
    assert monitor.device == torch.device("cuda", 1)
    assert monitor.report is not None and monitor.report.peak_cuda_bytes > 0  # the work ran on cuda:1
    assert all(relative_error(result[key], cpu[key]) <= 1e-4 for key in cpu)


def _peak_cuda_bytes(layers: int, method: str = "TSVM") -> int:
    pre, fts = checkpoints(layers=layers, width=192, num_tasks=NUM_TASKS)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    with MemoryMonitor(device=torch.device("cuda")) as monitor:
        merge(method, TaskVectors(pre, fts, device=monitor.device), progress=False)
        torch.cuda.synchronize()
    assert monitor.report is not None and monitor.report.peak_cuda_bytes is not None
    return monitor.report.peak_cuda_bytes


@pytest.mark.parametrize("method", ["TSVM", "ties"])
def test_peak_gpu_memory_does_not_grow_with_the_number_of_layers(method: str) -> None:
    """The engine streams one entry at a time and moves each result to the CPU: 8 layers need what 4 need."""
    four, eight = _peak_cuda_bytes(4, method), _peak_cuda_bytes(8, method)
    assert four > 0
    assert eight <= 1.1 * four + 2**20, f"peak {eight} B with 8 layers vs {four} B with 4"
