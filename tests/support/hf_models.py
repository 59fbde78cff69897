"""Tiny Llama-style model folders built locally with transformers (no hub access needed)."""

from __future__ import annotations

from pathlib import Path

import torch

transformers = __import__("pytest").importorskip("transformers")


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0, tie: bool = False):
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                      max_position_embeddings=64, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def finetune(model, seed: int, rank: int = 2, scale: float = 0.02):
    """A copy of ``model`` whose matrices moved by a low-rank update plus small noise (vectors by noise)."""
    g = torch.Generator().manual_seed(1000 + seed)
    tuned = type(model)(model.config).to(model.dtype).eval()
    state = {}
    for key, value in model.state_dict().items():
        value = value.float()
        if value.ndim == 2:
            a = torch.randn(value.shape[0], rank, generator=g)
            b = torch.randn(rank, value.shape[1], generator=g)
            delta = scale * (a @ b) / rank + 0.1 * scale * torch.randn(value.shape, generator=g)
        else:
            delta = 0.1 * scale * torch.randn(value.shape, generator=g)
        state[key] = (value + delta).to(model.dtype)
    tuned.load_state_dict(state)
    return tuned


def save(model, folder: Path, max_shard_size: str = "50KB") -> Path:
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return folder


def make_folders(root: Path, dtype: torch.dtype = torch.float32, num_tasks: int = 3, tie: bool = False):
    """θ0 and ``num_tasks`` fine-tunes saved as sharded model folders; returns (θ0 folder, fine-tune folders)."""
    base = tiny_llama(dtype, tie=tie)
    pre = save(base, root / "base")
    fts = [save(finetune(base, t), root / f"ft{t}") for t in range(num_tasks)]
    return pre, fts


def load(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
