"""The float64 RegMean reference (tests/merging/reference_regmean.py) against SPEC_REGMEAN.md: worked examples R8.10
and R8.11 and the properties of R8.1 - R8.9. Nothing here touches tsvmerge: these tests validate the ground truth."""

import numpy as np
import pytest

from tests.merging import reference_regmean as ref
from tests.merging.test_reference_esm import vit_b32_shapes

RB = "model.visual.transformer.resblocks."
KEY_W = RB + "0.mlp.c_fc.weight"  # a RegMean key, [out, in]
KEY_B = RB + "0.mlp.c_fc.bias"  # averaged


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------- R8.10 fixture
@pytest.fixture(scope="module")
def example_a():
    rs = np.random.RandomState(2026)
    W0 = rs.standard_normal((3, 4))
    b0 = rs.standard_normal(3)
    dW, db = [], []
    for _ in range(3):
        dW.append(0.1 * rs.standard_normal((3, 4)))
        db.append(0.1 * rs.standard_normal(3))
    X = []
    for n in (6, 9, 15):
        A = rs.standard_normal((n, 4))
        M = np.eye(4) + 0.5 * rs.standard_normal((4, 4))
        X.append(A @ M)
    return W0, b0, dW, db, X


TAU_STAR = np.array(
    [
        [0.124377, -0.048945, -0.093962, -0.010055],
        [0.051540, 0.066240, 0.095962, -0.176170],
        [0.115030, -0.154173, -0.004318, 0.093576],
    ]
)
W_STAR = np.array(
    [
        [-0.307342, -1.441819, 0.217609, -0.023290],
        [1.501248, 0.364392, -0.733934, -1.772328],
        [0.728467, -0.471770, -0.078314, -0.515055],
    ]
)


def test_example_a_grams(example_a):
    _, _, _, _, X = example_a
    G0 = ref.gram(X[0])
    np.testing.assert_allclose(G0, X[0].T @ X[0] / 6, rtol=1e-14)
    np.testing.assert_allclose(G0[0], [1.325481, 0.855342, -0.885125, 0.799842], atol=1e-6)
    np.testing.assert_allclose(ref.reduce_gram(G0, 0.95)[0], [1.325481, 0.812575, -0.840869, 0.759850], atol=1e-6)


def test_example_a_merge(example_a):
    W0, b0, dW, db, X = example_a
    grams = [ref.gram(x) for x in X]
    tau = ref.regmean_merge_key(dW, grams, 0.95)
    np.testing.assert_allclose(tau, TAU_STAR, atol=1e-6)
    assert np.linalg.norm(tau) == pytest.approx(0.346208, abs=1e-6)
    np.testing.assert_allclose(W0 + tau, W_STAR, atol=1e-6)
    # the whole state dict: RegMean key closed form, bias plain mean
    tvs = [{KEY_W: dW[i], KEY_B: db[i]} for i in range(3)]
    merged = ref.regmean_merge(tvs, [{KEY_W: g} for g in grams], a=0.95)
    np.testing.assert_allclose(merged[KEY_W], tau, rtol=0, atol=1e-15)
    np.testing.assert_allclose(merged[KEY_B], [0.105786, -0.028083, 0.007705], atol=1e-6)
    np.testing.assert_allclose(b0 + merged[KEY_B], [-1.894087, 0.880158, 0.490685], atol=1e-6)


def test_example_a_full_weights_equal_task_vectors(example_a):
    """R4.3 / R8.8: merging θi = θ0 + τi gives θ0 + merging τi (to the solve's round-off)."""
    W0, _, dW, _, X = example_a
    grams = [ref.gram(x) for x in X]
    full = ref.regmean_merge_key([W0 + d for d in dW], grams, 0.95)
    np.testing.assert_allclose(full, W_STAR, atol=1e-6)
    assert np.linalg.norm(full - (W0 + ref.regmean_merge_key(dW, grams, 0.95))) < 1e-13


@pytest.mark.parametrize(
    "variant,expected",
    [("plain_mean", 0.54), ("sum_grams", 0.21), ("a=1", 0.058), ("a=0.05", 0.50), ("a=0", 0.51), ("x_last*3", 0.56)],
)
def test_example_a_sensitivity(example_a, variant, expected):
    """R8.10's sensitivity list: each listed mistake moves τ* by the stated relative error."""
    _, _, dW, _, X = example_a
    grams = [ref.gram(x) for x in X]
    a = 0.95
    if variant == "plain_mean":
        tau = np.mean(dW, axis=0)
    elif variant == "sum_grams":
        tau = ref.regmean_merge_key(dW, [x.T @ x for x in X], a)
    elif variant.startswith("a="):
        tau = ref.regmean_merge_key(dW, grams, float(variant[2:]))
    else:  # "one task's X scaled by 3": the spec's number is for the LAST task (task 0: 0.48, task 1: 0.50)
        grams[2] = ref.gram(3 * X[2])
        tau = ref.regmean_merge_key(dW, grams, a)
    err = relative_error(tau, ref.regmean_merge_key(dW, [ref.gram(x) for x in X], a))
    assert err == pytest.approx(expected, abs=0.006)


def test_example_a_scale_and_duplicate_invariance(example_a):
    _, _, dW, _, X = example_a
    base = ref.regmean_merge_key(dW, [ref.gram(x) for x in X], 0.95)
    scaled = ref.regmean_merge_key(dW, [ref.gram(3 * x) for x in X], 0.95)
    dup = [X[0], np.concatenate([X[1], X[1]]), X[2]]
    duplicated = ref.regmean_merge_key(dW, [ref.gram(x) for x in dup], 0.95)
    assert relative_error(scaled, base) <= 4e-15 * 10
    assert relative_error(duplicated, base) <= 4e-15 * 10


# ----------------------------------------------------------------------------------------------- R8.11 example B
@pytest.fixture(scope="module")
def example_b():
    rs = np.random.RandomState(7)
    x = rs.standard_normal((2, 3, 4))
    w_in = 0.5 * rs.standard_normal((12, 4))
    b_in = 0.1 * rs.standard_normal(12)
    return x, w_in, b_in


def test_example_b(example_b):
    x, w_in, b_in = example_b
    np.testing.assert_allclose(np.diag(ref.gram(x.reshape(6, 4))), [1.300600, 0.114196, 0.112729, 1.972313], atol=1e-6)
    context = ref.attention_context(x, w_in, b_in, heads=2)
    assert context.shape == (2, 3, 4)
    np.testing.assert_allclose(context[0, 0], [-0.773586, -0.189335, 0.326065, -0.433985], atol=1e-6)
    expected = [
        [0.684257, 0.562651, -0.117550, 0.208579],
        [0.562651, 0.774425, -0.071735, 0.065511],
        [-0.117550, -0.071735, 0.034895, -0.045090],
        [0.208579, 0.065511, -0.045090, 0.100532],
    ]
    np.testing.assert_allclose(ref.gram(context.reshape(6, 4)), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------- R8.9 vs torch
@pytest.mark.parametrize("width,heads,batch,tokens,seed", [(4, 2, 2, 3, 7), (12, 3, 3, 5, 1), (8, 1, 1, 4, 2)])
def test_attention_context_matches_torch(width, heads, batch, tokens, seed):
    import torch  # imported here: only this test needs it

    rs = np.random.RandomState(seed)
    x = rs.standard_normal((batch, tokens, width))
    w_in = 0.5 * rs.standard_normal((3 * width, width))
    b_in = 0.1 * rs.standard_normal(3 * width)
    mha = torch.nn.MultiheadAttention(width, heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(w_in))
        mha.in_proj_bias.copy_(torch.from_numpy(b_in))
        mha.out_proj.weight.copy_(torch.eye(width, dtype=torch.float64))
        mha.out_proj.bias.zero_()
    mha.eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        out, _ = mha(xt, xt, xt, need_weights=False)
    np.testing.assert_allclose(ref.attention_context(x, w_in, b_in, heads), out.numpy(), rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------------------------- R8.1 key classes
def test_key_classes_vit_b32():
    shapes = vit_b32_shapes()
    keys = ref.regmean_keys(shapes)
    assert len(keys) == 48
    assert keys == [key for key, shape in shapes.items() if ref.key_class(key, shape) == "regmean"]
    suffixes = {key.split(".", 5)[-1] for key in keys}
    assert suffixes == {"attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    for key in (
        "model.visual.proj",
        "model.visual.conv1.weight",
        "model.text_projection",
        RB + "0.mlp.c_fc.bias",
        RB + "5.attn.in_proj_bias",
        "model.visual.positional_embedding",
        "model.token_embedding.weight",
    ):
        assert ref.key_class(key, shapes[key]) == "average", key


# ----------------------------------------------------------------------------------------------- R8.2 - R8.6
def random_problem(seed, T=3, out=5, n_in=4, rows=(7, 9, 11)):
    rs = np.random.RandomState(seed)
    deltas = [0.1 * rs.standard_normal((out, n_in)) for _ in range(T)]
    xs = [rs.standard_normal((rows[i % len(rows)], n_in)) @ (np.eye(n_in) + rs.standard_normal((n_in, n_in)))
          for i in range(T)]  # fmt: skip
    return deltas, xs


def test_single_task_gives_tau1():
    deltas, xs = random_problem(1, T=1)
    tvs = [{KEY_W: deltas[0], KEY_B: np.arange(5.0)}]
    merged = ref.regmean_merge(tvs, [{KEY_W: ref.gram(xs[0])}])
    np.testing.assert_array_equal(merged[KEY_W], deltas[0])
    np.testing.assert_array_equal(merged[KEY_B], np.arange(5.0))
    # the closed form itself, without the short-cut
    closed = ref.regmean_merge_key(deltas, [ref.gram(xs[0])], 0.95)
    assert relative_error(closed, deltas[0]) < 1e-12


@pytest.mark.parametrize("a", [0.0, 0.5, 0.95, 1.0])
def test_equal_grams_give_mean(a):
    deltas, xs = random_problem(2)
    G = ref.gram(xs[0])
    out = ref.regmean_merge_key(deltas, [G, G, G], a)
    assert relative_error(out, np.mean(deltas, axis=0)) < 1e-12


def test_a_zero_per_column_closed_form():
    deltas, xs = random_problem(3)
    grams = [ref.gram(x) for x in xs]
    out = ref.regmean_merge_key(deltas, grams, 0.0)
    for j in range(4):
        g = np.array([G[j, j] for G in grams])
        expected = sum(g[i] * deltas[i][:, j] for i in range(3)) / g.sum()
        np.testing.assert_allclose(out[:, j], expected, rtol=1e-12)


@pytest.mark.parametrize("a", [0.95, 1.0])
def test_scaling_and_duplicating(a):
    deltas, xs = random_problem(4)
    base = ref.regmean_merge_key(deltas, [ref.gram(x) for x in xs], a)
    # every task's X scaled by the same c: unchanged
    for c in (0.01, -2.0, 50.0):
        assert relative_error(ref.regmean_merge_key(deltas, [ref.gram(c * x) for x in xs], a), base) < 1e-12
    # one task's rows duplicated: unchanged (a mean over rows)
    dup = [xs[0], np.concatenate([xs[1], xs[1], xs[1]]), xs[2]]
    assert relative_error(ref.regmean_merge_key(deltas, [ref.gram(x) for x in dup], a), base) < 1e-12
    # one task's X scaled: changes (that task weighs c² more)
    one = [xs[0], 3 * xs[1], xs[2]]
    assert relative_error(ref.regmean_merge_key(deltas, [ref.gram(x) for x in one], a), base) > 1e-3


def test_task_with_zero_x_drops_out():
    deltas, xs = random_problem(5)
    grams = [ref.gram(x) for x in xs]
    zero = ref.gram(np.zeros_like(xs[1]))
    out = ref.regmean_merge_key(deltas, [grams[0], zero, grams[2]], 0.95)
    expected = ref.regmean_merge_key([deltas[0], deltas[2]], [grams[0], grams[2]], 0.95)
    assert relative_error(out, expected) < 1e-12


def test_closed_form_is_least_squares_minimiser():
    """R4.2: W* = argmin Σ tr((W − Wi) G̃i (W − Wi)ᵀ): the gradient Σ (W* − Wi) G̃i vanishes."""
    deltas, xs = random_problem(6)
    reduced = [ref.reduce_gram(ref.gram(x), 0.95) for x in xs]
    out = ref.regmean_merge_key(deltas, [ref.gram(x) for x in xs], 0.95)
    gradient = sum((out - d) @ G for d, G in zip(deltas, reduced))
    assert np.abs(gradient).max() < 1e-13


def test_permuting_tasks_and_rows_unchanged():
    deltas, xs = random_problem(8)
    base = ref.regmean_merge_key(deltas, [ref.gram(x) for x in xs], 0.95)
    rs = np.random.RandomState(0)
    order = [2, 0, 1]
    out = ref.regmean_merge_key(
        [deltas[i] for i in order], [ref.gram(xs[i][rs.permutation(xs[i].shape[0])]) for i in order], 0.95
    )
    assert relative_error(out, base) < 1e-12


# ----------------------------------------------------------------------------------------------- R7 singular
def test_singular_sum_raises():
    deltas, _ = random_problem(9)
    rs = np.random.RandomState(9)
    # a = 1 and fewer rows in all tasks together (3) than inputs (4)
    few = [ref.gram(rs.standard_normal((1, 4))) for _ in range(3)]
    with pytest.raises(ValueError):
        ref.regmean_merge_key(deltas, few, 1.0)
    # an input feature that is 0 in every row of every task, a < 1
    xs = [rs.standard_normal((6, 4)) for _ in range(3)]
    for x in xs:
        x[:, 2] = 0.0
    with pytest.raises(ValueError):
        ref.regmean_merge_key(deltas, [ref.gram(x) for x in xs], 0.95)


def test_reduce_gram_definition():
    G = ref.gram(np.random.RandomState(10).standard_normal((8, 3)))
    R = ref.reduce_gram(G, 0.95)
    np.testing.assert_array_equal(np.diag(R), np.diag(G))
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(R[off], 0.95 * G[off], rtol=1e-15)
