"""ESM and RegMean as tsvmerge runs them (float32 fast path, streaming engine) against the float64 references written
from the specs (tests/merging/reference_*.py), given the same activations; plus the specs' properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.merging import reference_esm as ref_esm
from tests.merging import reference_regmean as ref_regmean
from tests.merging.test_reference_esm import build_fixture
from tsvmerge.merging import TaskVectors, build_method, merge
from tsvmerge.merging.calibration import CalibrationError, InputStatistic
from tsvmerge.merging.engine import stream_merged_entries

_LINEAR = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _tasks(task_vectors: list[dict[str, np.ndarray]], seed: int = 0) -> tuple[TaskVectors, dict]:
    rng = np.random.RandomState(seed)
    theta0 = {key: torch.tensor(rng.standard_normal(value.shape), dtype=torch.float32)
              for key, value in task_vectors[0].items()}
    finetuned = [{key: theta0[key] + torch.tensor(tv[key], dtype=torch.float32) for key in theta0}
                 for tv in task_vectors]
    return TaskVectors(theta0, finetuned), theta0


def _relative(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.double().numpy() - b) / max(np.linalg.norm(b), 1e-30))


def _calibrate(method, tasks: TaskVectors, statistics: list[dict[str, InputStatistic]]) -> None:
    available = {key: tuple(tasks.shape(key)) for key in tasks.keys if key.endswith(_LINEAR)}
    keys = method.calibration_keys(available, tasks.rules)
    method.begin_calibration(tasks, keys)
    for task, stats in enumerate(statistics):
        for key in keys:
            method.absorb(task, key, stats[key])


def _esm_stats(activations: list[dict[str, np.ndarray]]) -> list[dict[str, InputStatistic]]:
    return [{key: InputStatistic(count=x.shape[0], rows=torch.tensor(x, dtype=torch.float32)) for key, x in a.items()}
            for a in activations]


def _esm_merged(seed: int) -> tuple[TaskVectors, dict, object, dict]:
    """The fixture of SPEC_ESM E10.9 (seed 2026) or another draw, calibrated and merged: tasks, θ0, method, τMT."""
    _, task_vectors, activations = build_fixture(seed)
    tasks, theta0 = _tasks(task_vectors)
    method = build_method("esm")
    _calibrate(method, tasks, _esm_stats(activations))
    return tasks, theta0, method, merge(method, tasks, progress=False).task_vector


@pytest.mark.parametrize("seed", [2026, 7])
def test_esm_matches_the_reference_given_activations(seed: int) -> None:
    """SPEC_ESM E8: ≤ 1e-5 relative per entry given the activations (the worked example E10.9 for seed 2026)."""
    tau = _esm_merged(seed)[3]
    _, task_vectors, activations = build_fixture(seed)
    expected = ref_esm.esm_merge(task_vectors, activations)
    assert set(tau) == set(expected), "no entry missing or extra"
    for key, value in expected.items():
        assert _relative(tau[key], value) < 1e-5, key


def test_esm_worked_example_numbers() -> None:
    tau = _esm_merged(2026)[3]
    rb = "model.visual.transformer.resblocks."
    assert float(tau[f"{rb}0.attn.in_proj_weight"].norm()) == pytest.approx(2.654374, rel=1e-5)
    assert float(tau[f"{rb}0.mlp.c_fc.weight"][0, 0]) == pytest.approx(-0.732533, abs=1e-5)
    assert float(tau[f"{rb}1.mlp.c_proj.weight"].norm()) == pytest.approx(6.117475, rel=1e-5)
    assert float(tau["model.visual.proj"].norm()) == pytest.approx(0.625355, rel=1e-5)


def test_esm_alpha_scales_only_the_decomposed_maps_in_written_models() -> None:
    """SPEC_ESM E7/E10.8: θ0 + α·τMT on the ESD keys, θ0 + τMT elsewhere, also when streamed to a folder."""
    tasks, theta0, method, tau = _esm_merged(2026)
    activations = build_fixture(2026)[2]
    with pytest.raises(CalibrationError, match="again"):
        merge(method, tasks, progress=False)  # the statistics are consumed by a merge
    _calibrate(method, tasks, _esm_stats(activations))
    method.prepare(tasks)
    streamed = dict(stream_merged_entries(method, tasks, tasks.keys, alpha=0.5))
    for key in tasks.keys:
        esd = ref_esm.key_class(key, tuple(theta0[key].shape)) == "esd"
        expected = theta0[key] + (0.5 if esd else 1.0) * tau[key]
        torch.testing.assert_close(streamed[key][0], expected, rtol=1e-5, atol=1e-6)


def test_esm_spectrum_is_flat() -> None:
    """E10.2: every decomposed map of τMT has min(Tk, n) equal singular values (before the scalar of E6)."""
    rng = np.random.RandomState(3)
    key = "model.visual.transformer.resblocks.0.mlp.c_proj.weight"
    task_vectors = [{key: 0.1 * rng.standard_normal((24, 40))} for _ in range(3)]
    activations = [{key: rng.standard_normal((64, 40))} for _ in range(3)]
    tasks, _ = _tasks(task_vectors)
    method = build_method("esm")
    _calibrate(method, tasks, _esm_stats(activations))
    s = torch.linalg.svdvals(merge(method, tasks, progress=False).task_vector[key].double())
    kept = s[: 3 * (24 // 3)]
    assert float((kept.max() - kept.min()) / kept.max()) < 1e-5


def test_esm_keeps_only_the_top_k_directions_when_k_exceeds_the_rank() -> None:
    """k > rank of ΔO (E9): the padded basis is built whole, but a subspace holds only its k columns, not a view of
    the m × m basis (eight tasks of ViT-B-32 keep 0.7 GiB of subspaces between calibration and merge)."""
    from tsvmerge.merging.esm import essential_subspace

    generator = torch.Generator().manual_seed(0)
    x, delta = torch.randn(6, 4, generator=generator), torch.randn(16, 4, generator=generator)
    sub = essential_subspace(x, delta, 8)
    assert not sub.determined and sub.basis.shape == (16, 8)
    assert sub.basis.untyped_storage().nbytes() == sub.basis.numel() * sub.basis.element_size()


def test_esm_refuses_a_task_that_leaves_a_decomposed_map_unchanged() -> None:
    _, task_vectors, activations = build_fixture(2026)
    key = "model.visual.transformer.resblocks.0.mlp.c_fc.weight"
    task_vectors[1][key] = np.zeros_like(task_vectors[1][key])
    tasks, _ = _tasks(task_vectors)
    with pytest.raises(CalibrationError, match="unchanged"):
        _calibrate(build_method("esm"), tasks, _esm_stats(activations))


def test_data_aware_methods_refuse_to_merge_without_calibration() -> None:
    _, task_vectors, _ = build_fixture(2026)
    tasks, _ = _tasks(task_vectors)
    for name in ("esm", "regmean"):
        with pytest.raises(CalibrationError, match="calibration pass"):
            merge(build_method(name), tasks, progress=False)


def _regmean_fixture(seed: int, tokens: int = 30) -> tuple[list[dict], list[dict]]:
    _, task_vectors, _ = build_fixture(seed)
    rng = np.random.RandomState(seed + 1)
    xs = [{key: rng.standard_normal((tokens + 7 * t, value.shape[1])) for key, value in tv.items()
           if key.endswith(_LINEAR)} for t, tv in enumerate(task_vectors)]
    return task_vectors, xs


@pytest.mark.parametrize("ratio", [0.95, 0.3, 1.0])
def test_regmean_matches_the_reference_given_activations(ratio: float) -> None:
    """SPEC_REGMEAN R6: ≤ 1e-6 relative per entry given the activations; every key present."""
    task_vectors, xs = _regmean_fixture(11)
    tasks, _ = _tasks(task_vectors)
    method = build_method("regmean", {"reduce_non_diagonal_ratio": ratio})
    grams = [{key: ref_regmean.gram(x) for key, x in per_task.items()} for per_task in xs]
    stats = [{key: InputStatistic(count=xs[t][key].shape[0], gram=torch.tensor(g)) for key, g in per_task.items()}
             for t, per_task in enumerate(grams)]
    _calibrate(method, tasks, stats)
    result = merge(method, tasks, progress=False)
    expected = ref_regmean.regmean_merge(task_vectors, grams, ratio)
    assert set(result.task_vector) == set(expected)
    for key, value in expected.items():
        assert _relative(result.task_vector[key], value) < 1e-6, key


def test_regmean_worked_example_a() -> None:
    """SPEC_REGMEAN R8.10 through the method: τ* of the one linear map and the averaged bias."""
    rs = np.random.RandomState(2026)
    W0, b0 = rs.standard_normal((3, 4)), rs.standard_normal(3)
    dW, db = [], []
    for _ in range(3):
        dW.append(0.1 * rs.standard_normal((3, 4)))
        db.append(0.1 * rs.standard_normal(3))
    xs = []
    for n in (6, 9, 15):
        xs.append(rs.standard_normal((n, 4)) @ (np.eye(4) + 0.5 * rs.standard_normal((4, 4))))
    key = "model.visual.transformer.resblocks.0.mlp.c_fc"
    theta0 = {f"{key}.weight": torch.tensor(W0), f"{key}.bias": torch.tensor(b0)}
    finetuned = [{f"{key}.weight": torch.tensor(W0 + dW[t]), f"{key}.bias": torch.tensor(b0 + db[t])} for t in range(3)]
    tasks = TaskVectors(theta0, finetuned)
    method = build_method("regmean")
    method.begin_calibration(tasks, [f"{key}.weight"])
    for t, x in enumerate(xs):
        method.absorb(t, f"{key}.weight", InputStatistic(count=len(x), gram=torch.tensor(x.T @ x / len(x))))
    tau = merge(method, tasks, progress=False).task_vector
    expected = np.array([[0.124377, -0.048945, -0.093962, -0.010055], [0.051540, 0.066240, 0.095962, -0.176170],
                         [0.115030, -0.154173, -0.004318, 0.093576]])
    np.testing.assert_allclose(tau[f"{key}.weight"].double().numpy(), expected, atol=2e-6)
    np.testing.assert_allclose(tau[f"{key}.bias"].double().numpy(), [0.105786, -0.028083, 0.007705], atol=2e-6)


def test_regmean_refuses_a_singular_gram_sum() -> None:
    """R7: a = 1 with fewer rows than inputs in all tasks together is singular: an error naming the entry."""
    task_vectors, _ = _regmean_fixture(5)
    tasks, _ = _tasks(task_vectors)
    method = build_method("regmean", {"reduce_non_diagonal_ratio": 1.0})
    rng = np.random.RandomState(0)
    stats = []
    for per_task in task_vectors:
        stats.append({})
        for key, value in per_task.items():
            if key.endswith(_LINEAR):
                x = rng.standard_normal((2, value.shape[1]))
                stats[-1][key] = InputStatistic(count=2, gram=torch.tensor(x.T @ x / 2))
    _calibrate(method, tasks, stats)
    with pytest.raises(ValueError, match="singular"):
        merge(method, tasks, progress=False)
