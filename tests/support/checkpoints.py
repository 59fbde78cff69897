"""Tiny state dicts shaped like the published image-encoder checkpoints, for engine tests."""

from __future__ import annotations

import torch


def make_checkpoints(num_tasks: int = 3, seed: int = 0) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    pretrained = {
        "model.visual.transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8, generator=g),
        "model.visual.transformer.resblocks.0.mlp.c_proj.weight": torch.randn(8, 16, generator=g),
        "model.visual.ln_post.weight": torch.randn(8, generator=g),
        "model.visual.conv1.weight": torch.randn(8, 3, 2, 2, generator=g),
        "model.text_projection": torch.randn(8, 6, generator=g),
        "model.token_embedding.weight": torch.randn(30, 6, generator=g),  # never fine-tuned
        "model.logit_scale": torch.tensor(4.6),
        "model.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }
    finetuned = []
    for _ in range(num_tasks):
        ft = {}
        for key, value in pretrained.items():
            if not value.is_floating_point() or "token_embedding" in key:
                ft[key] = value.clone()
            else:
                ft[key] = value + 0.1 * torch.randn(value.shape, generator=g)
        finetuned.append(ft)
    return pretrained, finetuned


def deltas(pretrained: dict, finetuned: list[dict], key: str) -> torch.Tensor:
    return torch.stack([ft[key] - pretrained[key] for ft in finetuned])


def flat(state: dict) -> torch.Tensor:
    return torch.cat([state[k].flatten().float() for k in sorted(state)])
