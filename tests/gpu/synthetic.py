"""Synthetic checkpoints in the published image-encoder layout, with fine-tuning-like task vectors, for comparing
GPU and CPU merges.

Matrices move by deltas whose singular values decay geometrically, like those of real task matrices: every
truncation is then well separated, so every SVD mode (the randomized one included) is defined up to round-off and a
GPU must reproduce the CPU's result to float32 precision.
"""

from __future__ import annotations

import torch

EMBED = 16


def pretrained_state(layers: int = 2, width: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """θ0: ``layers`` transformer blocks of ``width`` plus the other published entries (text leftovers included)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / max(1, shape[-1]) ** 0.5

    state: dict[str, torch.Tensor] = {"model.visual.conv1.weight": randn(width, 3, 4, 4),
                                      "model.visual.class_embedding": randn(width),
                                      "model.visual.ln_post.weight": 1 + randn(width),
                                      "model.visual.proj": randn(width, EMBED)}
    for i in range(layers):
        block = f"model.visual.transformer.resblocks.{i}"
        state |= {f"{block}.attn.in_proj_weight": randn(3 * width, width),
                  f"{block}.attn.in_proj_bias": randn(3 * width),
                  f"{block}.attn.out_proj.weight": randn(width, width),
                  f"{block}.ln_1.weight": 1 + randn(width),
                  f"{block}.mlp.c_fc.weight": randn(4 * width, width),
                  f"{block}.mlp.c_proj.weight": randn(width, 4 * width)}
    state |= {"model.text_projection": randn(EMBED, EMBED),
              "model.token_embedding.weight": randn(64, EMBED),  # never fine-tuned
              "model.logit_scale": torch.tensor(4.6),
              "model.visual.num_batches_tracked": torch.tensor(7, dtype=torch.int64)}
    return state


def finetuned_states(pretrained: dict[str, torch.Tensor], num_tasks: int = 4, seed: int = 1, scale: float = 2e-2,
                     decay: float = 0.8, noise: float = 1e-3) -> list[dict[str, torch.Tensor]]:
    """θ1..θT: the image tower moves (matrices by ``scale`` times a delta whose singular values decay geometrically by
    ``decay``, other entries by ``noise``); the rest is θ0's."""
    states = []
    for task in range(num_tasks):
        g = torch.Generator().manual_seed(seed * 1000 + task)
        state = {}
        for key, value in pretrained.items():
            if not key.startswith("model.visual.") or not value.is_floating_point():
                state[key] = value.clone()
            elif value.ndim == 2:
                state[key] = value + scale * _decaying_matrix(*value.shape, decay, g)
            else:
                state[key] = value + noise * torch.randn(value.shape, generator=g)
        states.append(state)
    return states


def _decaying_matrix(rows: int, cols: int, decay: float, g: torch.Generator) -> torch.Tensor:
    """A random matrix with singular values 1, decay, decay², ...: a well-separated spectrum, like a task matrix's."""
    rank = min(rows, cols)
    left, _ = torch.linalg.qr(torch.randn(rows, rank, generator=g))
    right, _ = torch.linalg.qr(torch.randn(cols, rank, generator=g))
    return (left * decay ** torch.arange(rank, dtype=torch.float32)) @ right.T


def checkpoints(layers: int = 2, width: int = 48, num_tasks: int = 4,
                seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    pretrained = pretrained_state(layers, width, seed)
    return pretrained, finetuned_states(pretrained, num_tasks, seed + 1)
