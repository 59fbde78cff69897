"""The float64 ESM reference (tests/merging/reference_esm.py) against SPEC_ESM.md: worked example E10.9 and the
properties of E10.1 - E10.8. Nothing here touches tsvmerge: these tests validate the ground truth itself."""

import numpy as np
import pytest

from tests.merging import reference_esm as ref

RB = "model.visual.transformer.resblocks."


def vit_b32_shapes() -> dict[str, tuple]:
    """Key names and shapes of a ViT-B-32 task-vector state dict (SPEC.md §1 layout, text transformer deleted)."""
    w = 768
    shapes = {
        "model.positional_embedding": (77, 512),
        "model.text_projection": (512, 512),
        "model.logit_scale": (),
        "model.visual.class_embedding": (w,),
        "model.visual.positional_embedding": (50, w),
        "model.visual.proj": (w, 512),
        "model.visual.conv1.weight": (w, 3, 32, 32),
        "model.visual.ln_pre.weight": (w,),
        "model.visual.ln_pre.bias": (w,),
    }
    for layer in range(12):
        p = f"{RB}{layer}."
        shapes.update(
            {
                p + "ln_1.weight": (w,),
                p + "ln_1.bias": (w,),
                p + "attn.in_proj_weight": (3 * w, w),
                p + "attn.in_proj_bias": (3 * w,),
                p + "attn.out_proj.weight": (w, w),
                p + "attn.out_proj.bias": (w,),
                p + "ln_2.weight": (w,),
                p + "ln_2.bias": (w,),
                p + "mlp.c_fc.weight": (4 * w, w),
                p + "mlp.c_fc.bias": (4 * w,),
                p + "mlp.c_proj.weight": (w, 4 * w),
                p + "mlp.c_proj.bias": (w,),
            }
        )
    shapes.update(
        {
            "model.visual.ln_post.weight": (w,),
            "model.visual.ln_post.bias": (w,),
            "model.token_embedding.weight": (49408, 512),
            "model.ln_final.weight": (512,),
            "model.ln_final.bias": (512,),
        }
    )
    return shapes


# ----------------------------------------------------------------------------------------------- E10.9 fixture
def worked_example_keys() -> list[tuple[str, tuple]]:
    keys = []
    for layer in range(2):
        p = f"{RB}{layer}."
        keys += [
            (p + "attn.in_proj_weight", (12, 4)),
            (p + "attn.in_proj_bias", (12,)),
            (p + "attn.out_proj.weight", (4, 4)),
            (p + "mlp.c_fc.weight", (16, 4)),
            (p + "mlp.c_proj.weight", (4, 16)),
        ]
    keys += [("model.visual.proj", (4, 4)), ("model.text_projection", (4, 4))]
    return keys


def build_fixture(seed: int, T: int = 4, tokens: int = 6):
    rs = np.random.RandomState(seed)
    keys = worked_example_keys()
    task_vectors = [{key: 0.1 * rs.standard_normal(shape) for key, shape in keys} for _ in range(T)]
    activations = [
        {key: rs.standard_normal((tokens, shape[1])) for key, shape in keys if ref.key_class(key, shape) == "esd"}
        for _ in range(T)
    ]
    return keys, task_vectors, activations


@pytest.fixture(scope="module")
def worked():
    keys, tvs, acts = build_fixture(2026)
    pre = ref.esm_merge_before_rescaling(tvs, acts)
    final = ref.esm_merge(tvs, acts)
    return keys, tvs, acts, pre, final


# (key suffix, p, final norm, final [0, 0] / [0])
TABLE = [
    (RB + "0.attn.in_proj_weight", 2.623812, 2.654374, +0.177525),
    (RB + "0.attn.in_proj_bias", 0.145501, 0.145501, -0.017243),
    (RB + "0.attn.out_proj.weight", 0.592298, 0.494796, +0.090944),
    (RB + "0.mlp.c_fc.weight", 3.421329, 4.079016, -0.732533),
    (RB + "0.mlp.c_proj.weight", 2.755682, 1.731579, +0.596070),
    (RB + "1.attn.in_proj_weight", 2.593514, 2.563480, +0.412710),
    (RB + "1.attn.in_proj_bias", 0.087995, 0.087995, +0.002670),
    (RB + "1.attn.out_proj.weight", 0.703769, 0.830033, +0.253543),
    (RB + "1.mlp.c_fc.weight", 2.845453, 2.346524, -0.327799),
    (RB + "1.mlp.c_proj.weight", 4.197000, 6.117475, +0.023111),
    ("model.visual.proj", 0.625355, 0.625355, -0.137222),
    ("model.text_projection", 0.194915, 0.194915, +0.046007),
]


@pytest.mark.parametrize("key,p,norm,first", TABLE, ids=[row[0].replace(RB, "rb.") for row in TABLE])
def test_worked_example_table(worked, key, p, norm, first):
    _, _, _, pre, final = worked
    assert np.linalg.norm(pre[key]) == pytest.approx(p, abs=1e-6)
    assert np.linalg.norm(final[key]) == pytest.approx(norm, abs=1e-6)
    assert final[key].flat[0] == pytest.approx(first, abs=1e-6)


def test_worked_example_key_classes_and_k(worked):
    keys, _, _, _, final = worked
    assert list(final) == [key for key, _ in keys]
    classes = [ref.key_class(key, shape) for key, shape in keys]
    assert classes == ["esd", "average", "svd", "esd", "esd"] * 2 + ["svd", "average"]
    assert [m // 4 for key, (m, *_) in keys if ref.key_class(key, (m, *_)) == "esd"] == [3, 4, 1, 3, 4, 1]


def test_worked_example_intermediates_in_proj(worked):
    _, tvs, acts, _, _ = worked
    key = RB + "0.attn.in_proj_weight"
    deltas = [tv[key] for tv in tvs]
    Qs, lams = zip(*[ref.esd(acts[i][key], deltas[i]) for i in range(4)])
    # task 0's σ² (= λ (N − 1)): four nonzero, then 0 (rank 4); 12 values in all (padding)
    sigma2 = lams[0] * (6 - 1)
    assert sigma2.shape == (12,)
    np.testing.assert_allclose(sigma2[:4], [2.352774, 1.004844, 0.652071, 0.067068], atol=1e-6)
    np.testing.assert_allclose(sigma2[4:], 0.0, atol=1e-12)
    d = ref.esm_merge_key_details(deltas, Qs, lams)
    assert d["k"] == 3
    np.testing.assert_allclose(d["w"][0], [1.109015, 0.976147, 0.914839], atol=1e-6)
    np.testing.assert_allclose(d["nu"], [0.883701, 0.851619, 1.022927, 1.002197], atol=1e-6)
    np.testing.assert_allclose([np.linalg.norm(x) for x in deltas], [0.736860, 0.722594, 0.785878, 0.760510], atol=1e-6)
    np.testing.assert_allclose(d["gamma"], [0.561160, 0.782094, 0.813445, 0.815830], atol=1e-6)
    assert d["s_bar_U"] == pytest.approx(0.843189, abs=1e-6)
    assert d["s_bar_V"] == pytest.approx(0.777943, abs=1e-6)
    s = np.linalg.svd(d["result"], compute_uv=False)
    np.testing.assert_allclose(s, 1.311906, atol=1e-6)
    assert s.shape == (4,)


def test_nu_padding_rule_closed_form(worked):
    """E4 step 1: N = 6 ≥ n_in = 4, N < m = 12 → ν² = ‖ΔW‖² + ‖ΔW[r:]‖² with r = 6."""
    _, tvs, acts, _, _ = worked
    for key in (RB + "0.attn.in_proj_weight", RB + "1.mlp.c_fc.weight"):
        for i in range(4):
            delta = tvs[i][key]
            q, lam = ref.esd(acts[i][key], delta)
            nu = np.linalg.norm(q.T @ delta)
            assert nu**2 == pytest.approx(np.linalg.norm(delta) ** 2 + np.linalg.norm(delta[6:]) ** 2, rel=1e-12)


# ----------------------------------------------------------------------------------------------- E3 details
def test_esd_padding_order_and_eigenvalues():
    rs = np.random.RandomState(0)
    x = rs.standard_normal((5, 3))
    delta = rs.standard_normal((8, 3))
    q, lam = ref.esd(x, delta)
    assert q.shape == (8, 8) and lam.shape == (8,)
    sigma = np.linalg.svd(x @ delta.T, compute_uv=False)
    np.testing.assert_allclose(lam[:5], sigma**2 / 4, rtol=1e-12, atol=1e-14)
    assert np.all(np.diff(lam) <= 0)
    # padding columns are e_6 ... e_8, last, with λ = 0
    np.testing.assert_array_equal(q[:, 5:], np.eye(8)[:, 5:])
    np.testing.assert_array_equal(lam[5:], 0.0)
    # the first r columns are the right singular vectors of ΔO (up to sign)
    _, _, bt = np.linalg.svd(x @ delta.T, full_matrices=False)
    np.testing.assert_allclose(np.abs(q[:, :3].T @ bt[:3].T), np.eye(3), atol=1e-10)


def test_esd_no_centering():
    rs = np.random.RandomState(1)
    x = rs.standard_normal((20, 3)) + 5.0  # large mean: centering would change λ a lot
    delta = rs.standard_normal((4, 3))
    _, lam = ref.esd(x, delta)
    d_o = x @ delta.T
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(d_o.T @ d_o)[::-1] / 19, rtol=1e-10, atol=1e-9)
    centered = d_o - d_o.mean(axis=0)
    assert lam[0] > 10 * np.linalg.eigvalsh(centered.T @ centered)[-1] / 19


# ----------------------------------------------------------------------------------------------- E10.1 key classes
def test_key_classes_vit_b32():
    shapes = vit_b32_shapes()
    classes = {key: ref.key_class(key, shape) for key, shape in shapes.items()}
    esd = [key for key, c in classes.items() if c == "esd"]
    svd = sorted(key for key, c in classes.items() if c == "svd")
    assert len(esd) == 36
    assert all(key.startswith(RB) for key in esd)
    expected_svd = sorted(
        [f"{RB}{layer}.attn.out_proj.weight" for layer in range(12)]
        + [
            "model.visual.proj",
            "model.visual.positional_embedding",
            "model.token_embedding.weight",
            "model.positional_embedding",
        ]
    )
    assert svd == expected_svd
    assert classes["model.text_projection"] == "average"
    assert classes["model.visual.conv1.weight"] == "average"
    assert classes["model.logit_scale"] == "average"
    assert classes[RB + "3.attn.in_proj_bias"] == "average"


# ----------------------------------------------------------------------------------------------- E10.2 flat spectrum
def random_key_inputs(rs, T, m, n, N):
    deltas = [0.1 * rs.standard_normal((m, n)) for _ in range(T)]
    xs = [rs.standard_normal((N, n)) for _ in range(T)]
    Qs, lams = zip(*[ref.esd(x, d) for x, d in zip(xs, deltas)])
    return deltas, xs, list(Qs), list(lams)


@pytest.mark.parametrize("T,m,n,N", [(3, 24, 8, 10), (3, 12, 20, 30), (2, 9, 9, 4), (4, 16, 4, 6)])
def test_flat_spectrum(T, m, n, N):
    rs = np.random.RandomState(m * n + T)
    deltas, _, Qs, lams = random_key_inputs(rs, T, m, n, N)
    out = ref.esm_merge_key(deltas, Qs, lams)
    k = m // T
    s = np.linalg.svd(out, compute_uv=False)
    count = min(T * k, n)
    assert s[0] > 0
    assert (s[:count].max() - s[:count].min()) / s[0] < 1e-10
    np.testing.assert_allclose(s[count:], 0.0, atol=1e-10 * s[0])


# ----------------------------------------------------------------------------------------------- E10.3 rescaling
def test_rescaling_identity(worked):
    _, _, _, pre, final = worked
    for t in ref.RESCALED_TYPES:
        keys = [key for key in pre if t in key]
        assert len(keys) == 2
        mu = np.mean([np.linalg.norm(pre[key]) for key in keys])
        for key in keys:
            p = np.linalg.norm(pre[key])
            assert np.linalg.norm(final[key]) == pytest.approx(p**3 / mu**2, rel=1e-12)
            np.testing.assert_allclose(final[key], pre[key] * (p / mu) ** 2, rtol=1e-12)
    for key in pre:
        if not any(t in key for t in ref.RESCALED_TYPES):
            np.testing.assert_array_equal(final[key], pre[key])


# ----------------------------------------------------------------------------------------------- E10.4 homogeneity
@pytest.fixture(scope="module")
def small():
    # T = 4 keeps k ≤ rank(ΔO) for every ESD key (E9: k > rank is implementation-defined, not invariant)
    keys, tvs, acts = build_fixture(11, T=4, tokens=7)
    return keys, tvs, acts, ref.esm_merge(tvs, acts)


def assert_same_merge(a: dict, b: dict, tol: float = 1e-12):
    assert list(a) == list(b)
    for key in a:
        scale = max(np.linalg.norm(b[key]), 1e-300)
        assert np.linalg.norm(a[key] - b[key]) / scale < tol, key


@pytest.mark.parametrize("c", [0.3, 7.0])
def test_homogeneity(small, c):
    _, tvs, acts, base = small
    scaled = ref.esm_merge([{key: c * v for key, v in tv.items()} for tv in tvs], acts)
    assert_same_merge(scaled, {key: c * v for key, v in base.items()})


# ----------------------------------------------------------------------------------------------- E10.5 invariances
def test_invariant_to_row_permutation_of_x(small):
    _, tvs, acts, base = small
    rs = np.random.RandomState(3)
    permuted = [{key: x[rs.permutation(x.shape[0])] for key, x in a.items()} for a in acts]
    assert_same_merge(ref.esm_merge(tvs, permuted), base)


def test_invariant_to_scaling_one_tasks_x(small):
    _, tvs, acts, base = small
    scaled = [dict(a) for a in acts]
    scaled[1] = {key: 4.5 * x for key, x in acts[1].items()}
    scaled[2] = {key: 0.2 * x for key, x in acts[2].items()}
    assert_same_merge(ref.esm_merge(tvs, scaled), base)


def test_invariant_to_task_permutation(small):
    _, tvs, acts, base = small
    order = [2, 0, 3, 1]
    assert_same_merge(ref.esm_merge([tvs[i] for i in order], [acts[i] for i in order]), base)


def test_invariant_to_eigenvector_sign_flips():
    rs = np.random.RandomState(5)
    deltas, _, Qs, lams = random_key_inputs(rs, 3, 12, 5, 8)
    base = ref.esm_merge_key(deltas, Qs, lams)
    flipped = [q * np.where(rs.rand(q.shape[1]) < 0.5, -1.0, 1.0) for q in Qs]
    out = ref.esm_merge_key(deltas, flipped, lams)
    assert np.linalg.norm(out - base) / np.linalg.norm(base) < 1e-12


# ----------------------------------------------------------------------------------------------- E9 errors, E5
def test_errors_k_zero_and_zero_delta():
    rs = np.random.RandomState(2)
    deltas, _, Qs, lams = random_key_inputs(rs, 3, 2, 4, 5)  # m = 2 < T = 3
    with pytest.raises(ValueError):
        ref.esm_merge_key(deltas, Qs, lams)
    deltas, xs, Qs, lams = random_key_inputs(rs, 3, 6, 4, 5)
    deltas[1] = np.zeros_like(deltas[1])
    Qs[1], lams[1] = ref.esd(xs[1], deltas[1])
    with pytest.raises(ValueError):
        ref.esm_merge_key(deltas, Qs, lams)


def test_tsvm_zero_and_single_task():
    zeros = [np.zeros((5, 4)) for _ in range(3)]
    out = ref.tsvm_merge_key(zeros)
    assert out.shape == (5, 4)
    assert not np.any(out != 0)
    rs = np.random.RandomState(4)
    delta = rs.standard_normal((5, 4))
    np.testing.assert_allclose(ref.tsvm_merge_key([delta]), delta, atol=1e-12)  # T = 1, k = r: Δ itself


def test_tsvm_matches_definition_on_orthogonal_tasks():
    """Tasks living on disjoint coordinate blocks: Û, V̂ already orthonormal, TSVM = Σ rank-k truncations."""
    rs = np.random.RandomState(6)
    deltas = []
    for i in range(2):
        d = np.zeros((6, 6))
        d[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] = rs.standard_normal((3, 3))
        deltas.append(d)
    expected = 0
    for d in deltas:
        u, s, vt = np.linalg.svd(d)
        expected = expected + u[:, :3] @ np.diag(s[:3]) @ vt[:3]
    np.testing.assert_allclose(ref.tsvm_merge_key(deltas), expected, atol=1e-12)


# ----------------------------------------------------------------------------------------------- E10.6 sampling
def test_sampling_sequences():
    idx0 = ref.sample_indices(5000, 32, 0)
    assert idx0[:8].tolist() == [398, 3833, 4836, 4572, 636, 2545, 1161, 2230]
    np.testing.assert_array_equal(idx0, np.random.RandomState(0).permutation(5000)[:32])
    assert ref.sample_indices(5000, 32, 1)[:4].tolist() == [2764, 4767, 3814, 3499]
    small = ref.sample_indices(20, 32, 0)
    assert sorted(small.tolist()) == list(range(20))


# ----------------------------------------------------------------------------------------------- E10.7 golden section
def counted(fn):
    calls = []

    def wrapped(alpha):
        calls.append(alpha)
        return fn(alpha)

    return wrapped, calls


def test_golden_section_quadratic():
    f, calls = counted(lambda a: 1 - (a - 0.9) ** 2)
    points, chosen = ref.golden_section(f, lambda a: 1 - (a - 0.9) ** 2)
    expected = [0.763932, 1.236068, 0.472136, 0.944272, 1.055728, 0.875388, 0.832816,
                0.901699, 0.917961, 0.891649, 0.907911, 0.897861, 0.904072, 0.900233]  # fmt: skip
    np.testing.assert_allclose(points, expected, atol=1e-6)
    assert chosen == pytest.approx(0.900233, abs=1e-6)
    assert calls == points  # each point evaluated exactly once, in order


def test_golden_section_constant_ties_move_right():
    f, calls = counted(lambda a: 0.5)
    points, chosen = ref.golden_section(f, lambda a: 0.5)
    assert len(points) == 14 and calls == points
    np.testing.assert_allclose(points[:6], [0.763932, 1.236068, 1.527864, 1.708204, 1.819660, 1.888544], atol=1e-6)
    assert points[-1] == pytest.approx(1.997628, abs=1e-6)
    assert chosen == pytest.approx(0.763932, abs=1e-6)


def test_golden_section_search_and_choice_metrics_differ():
    f, calls = counted(lambda a: 1 - abs(a - 1.7))
    points, chosen = ref.golden_section(f, lambda a: 1 - abs(a - 0.3))
    assert len(points) == 14 and calls == points
    np.testing.assert_allclose(points[:6], [0.763932, 1.236068, 1.527864, 1.708204, 1.819660, 1.639320], atol=1e-6)
    assert points[-1] == pytest.approx(1.699620, abs=1e-6)
    assert chosen == pytest.approx(0.763932, abs=1e-6)


# ----------------------------------------------------------------------------------------------- E10.8 partial α
def test_partial_alpha(worked):
    keys, _, _, _, final = worked
    rs = np.random.RandomState(9)
    theta0 = {key: rs.standard_normal(shape) for key, shape in keys}
    theta0["model.some_counter"] = np.array([3], dtype=np.int64)
    merged = ref.esm_merged_model(theta0, final, 0.4)
    for key, shape in keys:
        coef = 0.4 if ref.key_class(key, shape) == "esd" else 1.0
        np.testing.assert_allclose(merged[key], theta0[key] + coef * final[key], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(merged["model.some_counter"], theta0["model.some_counter"])
    assert merged["model.some_counter"].dtype == np.int64
