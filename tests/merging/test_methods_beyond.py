"""Iso-C, Iso-CTS, DC-Merge and CART (SPEC_BEYOND): properties of each method and golden checks of the streaming
engine against the naive float64 definitions of ``tests.support.spec_beyond_reference``."""

from __future__ import annotations

import pytest
import torch

from tests.support import spec_beyond_reference as ref
from tests.support.spec_reference import rank_k, relative_error
from tsvmerge.merging import TaskVectors, build_method, merge
from tsvmerge.merging.cart import cart_entry, is_low_rank_key, kept_components
from tsvmerge.merging.dc_merge import dc_merge_matrix, kept_per_task
from tsvmerge.merging.isotropic import iso_c_matrix, iso_cts_matrix, iso_cts_sizes

PREFIX = "model.visual.transformer.resblocks.0."


def low_rank_plus_noise(num_tasks: int, rows: int, cols: int, *, seed: int = 0, rank: int = 3,
                        noise: float = 0.1) -> torch.Tensor:
    """Task matrices like fine-tuning deltas: a few strong directions plus a full-rank floor."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(num_tasks, rows, rank, generator=g) @ torch.randn(num_tasks, rank, cols, generator=g)
    return 1e-2 * (low / rank**0.5 + noise * torch.randn(num_tasks, rows, cols, generator=g))


def published_layout(num_tasks: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """θ0 and fine-tuned copies with every kind of entry the methods treat differently."""
    g = torch.Generator().manual_seed(seed)
    pretrained = {
        PREFIX + "attn.in_proj_weight": torch.randn(48, 16, generator=g),  # tall, 3x
        PREFIX + "attn.in_proj_bias": torch.randn(48, generator=g),
        PREFIX + "attn.out_proj.weight": torch.randn(16, 16, generator=g),  # square
        PREFIX + "mlp.c_fc.weight": torch.randn(40, 16, generator=g),
        PREFIX + "mlp.c_proj.weight": torch.randn(16, 40, generator=g),  # wide
        PREFIX + "ln_1.weight": torch.randn(16, generator=g),
        "model.visual.proj": torch.randn(16, 12, generator=g),  # 2-D, not a CART low-rank key
        "model.visual.positional_embedding": torch.randn(5, 16, generator=g),  # small rank
        "model.visual.conv1.weight": torch.randn(16, 3, 2, 2, generator=g),
        "model.text_projection": torch.randn(16, 12, generator=g),  # 2-D, averaged
        "model.token_embedding.weight": torch.randn(30, 6, generator=g),  # never fine-tuned
        "model.logit_scale": torch.tensor(4.6),
        "model.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }
    finetuned = []
    for task in range(num_tasks):
        ft = {}
        for key, value in pretrained.items():
            if not value.is_floating_point() or "token_embedding" in key:
                ft[key] = value.clone()
            elif value.ndim == 2:
                ft[key] = value + low_rank_plus_noise(1, *value.shape, seed=100 * seed + task)[0] * 10
            else:
                ft[key] = value + 0.05 * torch.randn(value.shape, generator=g)
        finetuned.append(ft)
    return pretrained, finetuned


def task_deltas(pretrained: dict, finetuned: list[dict], key: str) -> list[torch.Tensor]:
    return [ft[key].double() - pretrained[key].double() for ft in finetuned]


def engine_task_vector(method: str, num_tasks: int, **params) -> tuple[dict, list[dict], dict]:
    pretrained, finetuned = published_layout(num_tasks)
    result = merge(build_method(method, params), TaskVectors(pretrained, finetuned), progress=False)
    return pretrained, finetuned, result.task_vector


def reference_entry(method: str, key: str, deltas: list[torch.Tensor], **params) -> torch.Tensor:
    if method == "cart":
        return ref.cart(deltas, key, params["prior"], params["rank_ratio"])
    if not ref.is_matrix(key, tuple(deltas[0].shape)):
        return ref.mean(deltas)
    if method == "iso_c":
        return ref.iso_c(deltas)
    if method == "iso_cts":
        return ref.iso_cts(deltas, params.get("common_space_fraction", 0.8))
    return ref.dc_merge(deltas, params.get("density", 0.001))


# ------------------------------------------------------------------------------------------- golden, every entry

GOLDEN_CASES = [
    ("iso_c", 3, {}),
    ("iso_c", 8, {}),
    ("iso_cts", 3, {}),
    ("iso_cts", 4, {"common_space_fraction": 0.5}),
    ("iso_cts", 9, {"common_space_fraction": 0.5}),  # tall entries' residuals formed a few tasks at a time
    ("dc_merge", 3, {}),
    ("dc_merge", 3, {"density": 0.05}),
    ("dc_merge", 2, {"density": 0.3}),
    ("cart", 3, {"prior": 2.0, "rank_ratio": 0.12}),
    ("cart", 4, {"prior": 1.5, "rank_ratio": 0.5}),
]


@pytest.mark.parametrize(("method", "num_tasks", "params"), GOLDEN_CASES)
def test_engine_matches_the_naive_float64_definition_on_every_entry(method, num_tasks, params):
    pretrained, finetuned, task_vector = engine_task_vector(method, num_tasks, **params)
    for key, base in pretrained.items():
        deltas = task_deltas(pretrained, finetuned, key)
        if not base.is_floating_point() or not any(d.any() for d in deltas):
            # integer entries and entries no task changed: no task vector, θ0 kept exactly
            assert key not in task_vector
            continue
        expected = reference_entry(method, key, deltas, **params)
        assert relative_error(task_vector[key], expected) < 1e-4, key


def test_text_tower_entries_zero_for_every_task_stay_zero():
    for method, params in [("iso_c", {}), ("iso_cts", {}), ("dc_merge", {}), ("cart", {"prior": 2.0,
                                                                                     "rank_ratio": 0.1})]:
        _, _, task_vector = engine_task_vector(method, 3, **params)
        assert "model.token_embedding.weight" not in task_vector


# ------------------------------------------------------------------------------------------------------- Iso-C

@pytest.mark.parametrize("shape", [(24, 24), (60, 20), (20, 60), (33, 25)])
def test_iso_c_flattens_the_spectrum_to_the_mean_singular_value_of_the_sum(shape):
    deltas = low_rank_plus_noise(4, *shape)
    merged = iso_c_matrix(deltas)
    s = torch.linalg.svdvals(merged.double())
    expected = torch.linalg.svdvals(deltas.double().sum(0)).mean()
    assert torch.allclose(s, torch.full_like(s, float(expected)), rtol=1e-4)


def test_iso_c_is_transpose_equivariant():
    deltas = low_rank_plus_noise(3, 30, 12)
    assert relative_error(iso_c_matrix(deltas.mT.contiguous()).mT, iso_c_matrix(deltas)) < 1e-5


# ----------------------------------------------------------------------------------------------------- Iso-CTS

# SPEC_BEYOND §B3's table: (r, T) -> (c, k).
PUBLISHED_SIZES = {
    (768, 8): (616, 19), (768, 14): (614, 11), (768, 20): (608, 8),
    (1024, 8): (816, 26), (1024, 14): (814, 15), (1024, 20): (824, 10),
    (512, 8): (408, 13), (512, 14): (414, 7), (512, 20): (412, 5),
    (50, 8): (42, 1), (50, 14): (36, 1), (50, 20): (50, 0),
    (197, 8): (157, 5), (197, 14): (155, 3), (197, 20): (157, 2),
    (257, 8): (209, 6), (257, 14): (201, 4), (257, 20): (197, 3),
}


@pytest.mark.parametrize(("rank", "num_tasks"), sorted(PUBLISHED_SIZES))
def test_iso_cts_sizes_match_the_published_table(rank, num_tasks):
    sizes = iso_cts_sizes(rank, 3 * rank, num_tasks, 0.8)
    assert (sizes.common, sizes.per_task) == PUBLISHED_SIZES[rank, num_tasks]
    assert sizes.common + num_tasks * sizes.per_task == rank


def test_iso_cts_sizes_round_half_to_even_and_always_add_up():
    assert (iso_cts_sizes(17, 17, 8, 0.8).common, iso_cts_sizes(17, 17, 8, 0.8).per_task) == (17, 0)
    for rank in range(1, 300, 7):
        for num_tasks in (1, 2, 3, 8, 14, 20, 40):
            sizes = iso_cts_sizes(rank, rank + 5, num_tasks, 0.8)
            assert sizes.common + num_tasks * sizes.per_task == rank
            assert 0 <= sizes.common <= rank


def test_iso_cts_rejects_a_negative_common_subspace():
    with pytest.raises(ValueError, match="negative common subspace"):
        iso_cts_sizes(3, 3, 2, 0.2)
    g = torch.Generator().manual_seed(0)
    pretrained = {"w": torch.randn(3, 3, generator=g)}
    finetuned = [{"w": pretrained["w"] + torch.randn(3, 3, generator=g)} for _ in range(2)]
    with pytest.raises(ValueError, match=r"negative common subspace.*entry 'w'"):
        merge(build_method("iso_cts", {"common_space_fraction": 0.2}), TaskVectors(pretrained, finetuned),
              progress=False)


def test_iso_cts_with_no_task_specific_components_equals_iso_c():
    deltas = low_rank_plus_noise(20, 50, 64)  # r = 50, T = 20: c = 50, k = 0
    assert iso_cts_sizes(50, 64, 20, 0.8).per_task == 0
    assert relative_error(iso_cts_matrix(deltas), iso_c_matrix(deltas)) < 1e-6


def test_iso_cts_with_one_task_equals_iso_c():
    deltas = low_rank_plus_noise(1, 40, 24)
    assert relative_error(iso_cts_matrix(deltas), iso_c_matrix(deltas)) < 1e-5


@pytest.mark.parametrize("shape", [(24, 24), (48, 16), (16, 40)])
def test_iso_cts_has_a_flat_spectrum(shape):
    s = torch.linalg.svdvals(iso_cts_matrix(low_rank_plus_noise(4, *shape)).double())
    assert torch.allclose(s, s.mean().expand_as(s), rtol=1e-4)


def test_iso_cts_is_not_transpose_equivariant_and_keeps_the_projection_on_the_first_dimension():
    deltas = low_rank_plus_noise(4, 16, 40)
    direct = iso_cts_matrix(deltas)
    through_transpose = iso_cts_matrix(deltas.mT.contiguous()).mT
    assert relative_error(direct, ref.iso_cts(list(deltas))) < 1e-4
    assert relative_error(through_transpose, direct) > 1e-2


# ---------------------------------------------------------------------------------------------------- DC-Merge

def test_dc_merge_kept_entries_match_the_published_counts():
    assert [kept_per_task(r) for r in (768, 1024, 512, 50, 197, 257)] == [589, 1048, 262, 2, 38, 66]
    assert kept_per_task(16) == 1


@pytest.mark.parametrize(("shape", "num_tasks", "density"), [((30, 30), 3, 0.05), ((48, 20), 4, 0.02),
                                                              ((20, 48), 4, 0.1), ((31, 23), 5, 0.01)])
def test_dc_merge_has_rank_at_most_tk_and_the_block_structure(shape, num_tasks, density):
    deltas = low_rank_plus_noise(num_tasks, *shape, seed=3)
    merged = dc_merge_matrix(deltas, density).double()
    parts = ref.dc_merge_parts(list(deltas), density)
    k = parts["k"]
    assert int(torch.linalg.matrix_rank(merged, rtol=1e-5)) <= num_tasks * k
    # In the cover basis the merged matrix is block diagonal, one k × k block per task.
    coordinates = parts["cover_u"].T @ merged @ parts["cover_v"].T
    mask = parts["mask"]
    assert coordinates[~mask].abs().max() < 1e-5 * coordinates.abs().max()
    assert relative_error(merged, ref.dc_merge(list(deltas), density)) < 1e-4


def test_dc_merge_with_fewer_components_than_tasks_is_zero():
    deltas = low_rank_plus_noise(6, 5, 12)  # r = 5 < T = 6: k = 0
    assert not dc_merge_matrix(deltas).any()


def test_dc_merge_of_one_task_keeps_its_top_components_only():
    deltas = low_rank_plus_noise(1, 64, 48)  # keep = ⌊0.001 · 48²⌋ = 2 diagonal coordinates
    assert relative_error(dc_merge_matrix(deltas), rank_k(deltas[0], 2)) < 1e-4


def test_dc_merge_is_transpose_equivariant():
    deltas = low_rank_plus_noise(3, 30, 18, seed=5)
    direct = dc_merge_matrix(deltas, 0.05)
    assert relative_error(dc_merge_matrix(deltas.mT.contiguous(), 0.05).mT, direct) < 1e-4


def test_dc_merge_leaves_all_zero_tasks_out_but_counts_them_in_k():
    deltas = low_rank_plus_noise(3, 24, 24, seed=7)
    padded = torch.cat([deltas, torch.zeros(1, 24, 24)])
    # k = ⌊24 / 4⌋ = 6 for the four tasks, and the zero task adds no block.
    merged = dc_merge_matrix(padded, 0.05)
    assert int(torch.linalg.matrix_rank(merged.double(), rtol=1e-5)) <= 3 * 6
    assert relative_error(merged, dc_merge_matrix(deltas, 0.05, num_tasks=4)) < 1e-6


# -------------------------------------------------------------------------------------------------------- CART

def test_cart_low_rank_keys_are_chosen_by_name():
    assert is_low_rank_key(PREFIX + "attn.in_proj_weight", (48, 16))
    assert is_low_rank_key(PREFIX + "attn.out_proj.weight", (16, 16))
    assert is_low_rank_key(PREFIX + "mlp.c_fc.weight", (40, 16))
    assert is_low_rank_key(PREFIX + "mlp.c_proj.weight", (16, 40))
    for key, shape in [(PREFIX + "attn.in_proj_bias", (48,)), (PREFIX + "ln_1.weight", (16,)),
                       ("model.visual.proj", (16, 12)), ("model.visual.positional_embedding", (50, 768)),
                       ("model.visual.conv1.weight", (16, 3, 2, 2)), ("model.text_projection", (16, 12))]:
        assert not is_low_rank_key(key, shape), key


def test_cart_rank_follows_the_published_ratio():
    assert [kept_components(768, 3072, rho) for rho in (0.12, 0.16, 0.32)] == [92, 122, 245]
    assert kept_components(768, 768, 0.0001) == 1 and kept_components(50, 60, 1.0) == 50


def test_cart_with_one_task_is_that_task_vector():
    deltas = low_rank_plus_noise(1, 20, 30)
    assert torch.equal(cart_entry(deltas, 2.0, 0.12, low_rank=True), deltas[0])


def test_cart_with_full_rank_is_the_mean():
    deltas = low_rank_plus_noise(5, 20, 30)
    assert relative_error(cart_entry(deltas, 1.9, 1.0, low_rank=True), deltas.mean(0)) < 1e-5


def test_cart_with_zero_rank_ratio_is_the_weight_average():
    deltas = low_rank_plus_noise(4, 20, 30)
    assert torch.equal(cart_entry(deltas, 2.0, 0.0, low_rank=True), deltas.mean(0))


def test_cart_takes_the_published_settings_for_vit_b_32_only():
    cart = build_method("cart")
    assert (cart.for_benchmark("ViT-B-32", 8).prior, cart.for_benchmark("ViT-B-32", 8).rank_ratio) == (2.0, 0.12)
    assert (cart.for_benchmark("ViT-B-32", 14).prior, cart.for_benchmark("ViT-B-32", 14).rank_ratio) == (1.5, 0.16)
    assert (cart.for_benchmark("ViT-B-32", 20).prior, cart.for_benchmark("ViT-B-32", 20).rank_ratio) == (1.9, 0.32)
    half = build_method("cart", {"prior": 1.0}).for_benchmark("ViT-B-32", 8)
    assert (half.prior, half.rank_ratio) == (1.0, 0.12)
    for model, tasks in [("ViT-L-14", 8), ("ViT-B-32", 10), (None, 8)]:
        with pytest.raises(ValueError, match="prior and rank_ratio must be given"):
            cart.for_benchmark(model, tasks)
    explicit = build_method("cart", {"prior": 1.0, "rank_ratio": 0.2})
    assert explicit.for_benchmark("ViT-L-14", 8) is explicit
    pretrained, finetuned = published_layout(2)
    with pytest.raises(ValueError, match="prior and rank_ratio must be given"):
        merge(cart, TaskVectors(pretrained, finetuned), progress=False)


# ------------------------------------------------------------------------------------------------------ traits

def test_alpha_protocols_are_declared_as_traits():
    for name in ("iso_c", "iso_cts", "dc_merge"):
        assert build_method(name).alpha_grid_max == 3.0
    assert build_method("iso_c").alpha_sweep_patience() == 3
    assert build_method("iso_cts", {"early_stop_patience": None}).alpha_sweep_patience() is None
    assert build_method("dc_merge").alpha_sweep_patience() is None
    cart = build_method("cart")
    assert cart.alpha_grid_max is None and cart.default_alpha == 1.0


@pytest.mark.parametrize(("method", "params", "message"), [
    ("iso_c", {"early_stop_patience": 0}, "early_stop_patience"),
    ("iso_cts", {"common_space_fraction": 1.5}, "common_space_fraction"),
    ("dc_merge", {"density": 0.0}, "density"),
    ("cart", {"rank_ratio": 2.0}, "rank_ratio"),
    ("cart", {"prior": float("nan")}, "prior"),
])
def test_out_of_range_parameters_are_rejected(method, params, message):
    with pytest.raises(ValueError, match=message):
        build_method(method, params)


def test_run_names_tell_configurations_apart():
    names = {build_method(m, p).run_name() for m, p in [
        ("iso_c", {}), ("iso_c", {"early_stop_patience": None}), ("iso_cts", {}),
        ("iso_cts", {"common_space_fraction": 0.5}), ("dc_merge", {}), ("dc_merge", {"density": 0.01}),
        ("cart", {}), ("cart", {"prior": 1.0, "rank_ratio": 0.1})]}
    assert len(names) == 8
