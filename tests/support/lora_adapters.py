"""Tiny PEFT LoRA adapters on a tiny Llama base, built locally with transformers and peft (no hub access)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .hf_models import save, tiny_llama

peft = pytest.importorskip("peft")

#: (rank, alpha, rsLoRA, target modules, per-module rank / alpha patterns, modules saved whole)
ADAPTERS = [
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"down_proj": 2},
         alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"]),
    dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "up_proj"]),
    dict(r=3, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "o_proj", "gate_proj"]),
]


def make_adapter(base_folder: Path, folder: Path, seed: int, **config) -> Path:
    """A LoRA adapter of the model in ``base_folder`` with random (non-zero) B factors, saved with PEFT."""
    torch.manual_seed(100 + seed)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(base_folder)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(**config))
    for name, param in wrapped.named_parameters():
        if "lora_B" in name or "lora_embedding_B" in name:
            torch.nn.init.normal_(param, std=0.05)
        if "modules_to_save" in name:
            param.data.add_(0.01 * torch.randn_like(param))
    wrapped.save_pretrained(folder)
    return folder


def make_adapters(root: Path, configs=ADAPTERS) -> tuple[Path, list[Path]]:
    """θ0 (float32 model folder) and one adapter per config."""
    base = save(tiny_llama(torch.float32), root / "base")
    return base, [make_adapter(base, root / f"adapter{i}", i, **config) for i, config in enumerate(configs)]


def materialize(base_folder: Path, adapter: Path, folder: Path) -> Path:
    """The adapter merged into a float32 copy of its base with PEFT itself (merge_and_unload)."""
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(base_folder)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(folder)
    return folder
