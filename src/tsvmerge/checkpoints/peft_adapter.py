"""PEFT LoRA adapter folders as task sources: per target module the factors (B, A) and the scale s of
ΔW = s·B·A, read without ever forming ΔW, and written back the same way.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``adapter_model.bin``, read with
``weights_only=True``). Keys are ``base_model.model.<module>.lora_A.weight`` [r, in] and ``….lora_B.weight`` [out, r]
(``lora_embedding_A`` [r, vocab] / ``lora_embedding_B`` [dim, r] for embeddings, whose ΔW is (B·A)ᵀ); every other
saved key (``modules_to_save``, trained biases) is a full tensor of the base model. The scale is
``lora_alpha / r`` (``/ √r`` with ``use_rslora``), with the module's own ``r`` and ``lora_alpha`` from
``rank_pattern`` / ``alpha_pattern`` (PEFT's rule: the pattern matching the end of the module name); with
``fan_in_fan_out`` the stored weight is the transpose of ΔW's. Factors are turned to the base weight's orientation
here, so that ΔW = s·B·A always has the base entry's shape.

:class:`PeftAdapter` is a lazy state dict over the base model's keys: a targeted entry reads as θ0 + ΔW (float32,
for whatever needs values), a saved full entry as itself, any other as θ0's own tensor; :meth:`PeftAdapter.factors`
gives the factors of a targeted entry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointFormatError, CheckpointMismatchError, NonFiniteCheckpointError
from .state_dict import LazyStateDict, open_state_dict

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILES",
    "AdapterError",
    "LoRAFactors",
    "PeftAdapter",
    "adapter_config_for",
    "adapter_tensors",
    "is_adapter_folder",
    "module_name",
    "open_task_source",
    "peft_key",
    "read_adapter_config",
    "write_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
#: What a merged adapter folder holds.
ADAPTER_FILES = ("adapter_model.safetensors", ADAPTER_CONFIG)
_PREFIX = "base_model.model."
_FACTOR = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?")


class AdapterError(CheckpointFormatError):
    """An adapter folder tsvmerge cannot merge: not LoRA, inconsistent, or for another base model."""


@dataclass(frozen=True)
class LoRAFactors:
    """ΔW = scale · B · A, in the orientation of the base entry: ``B`` [rows, r], ``A`` [r, cols]."""

    B: Tensor
    A: Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.B.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]

    def materialize(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """ΔW itself (float32 by default): what the dense methods and the checks compare against."""
        B = self.B.to(device, dtype)
        return (B * self.scale) @ self.A.to(device, dtype)

    def rows(self, start: int, stop: int) -> LoRAFactors:
        """The factors of ΔW[start:stop] (a block of rows: B's rows)."""
        return LoRAFactors(self.B[start:stop], self.A, self.scale)

    def is_zero(self) -> bool:
        return self.scale == 0 or not bool(self.B.any()) or not bool(self.A.any())


def is_adapter_folder(path: Path) -> bool:
    """Whether ``path`` is (meant as) a PEFT adapter folder: it holds ``adapter_config.json`` or adapter weights."""
    return path.is_dir() and any((path / name).is_file() for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS))


def module_name(key: str) -> str:
    """The module of a base-model weight key (``model.layers.0.self_attn.q_proj.weight`` → ``…q_proj``)."""
    return key.rsplit(".", 1)[0]


def peft_key(key: str) -> str:
    """The key under which PEFT saves a full tensor of the base model (``modules_to_save``)."""
    return _PREFIX + key


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule for ``rank_pattern`` / ``alpha_pattern``: the first pattern that matches the end of the module
    name (on a dot boundary) gives the module's value."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def read_adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterError(f"{folder} holds adapter weights but no {ADAPTER_CONFIG}: without it the rank, alpha and "
                           "targets of the LoRA factors are unknown; copy the adapter folder again, complete")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{str(path)!r} cannot be read as JSON ({error}); the adapter folder is corrupt") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{str(path)!r} does not hold a JSON object; the adapter folder is corrupt")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise AdapterError(f"{folder} is a PEFT {kind or 'adapter without a peft_type'} adapter; tsvmerge merges LoRA "
                           "adapters (peft_type LORA) only")
    if config.get("use_dora"):
        raise AdapterError(f"{folder} is a DoRA adapter (use_dora: true): its magnitude vectors rescale whole "
                           "weight columns, so ΔW is not B·A; merge the adapters into their base models first "
                           "(PEFT's merge_and_unload) and merge those folders")
    for flag in ("lora_bias",):
        if config.get(flag):
            raise AdapterError(f"{folder}: {flag}: true (a trained bias on lora_B) is not supported; merge the "
                               "adapter into its base model first (PEFT's merge_and_unload)")
    for field in ("r", "lora_alpha"):
        value = config.get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise AdapterError(f"{str(path)!r}: {field} is {value!r}, not a number")
    return config


def _read_weights(folder: Path) -> dict[str, Tensor]:
    for name in ADAPTER_WEIGHTS:
        path = folder / name
        if path.is_file():
            state = open_state_dict(path)
            return {key: state[key] for key in state}
    raise AdapterError(f"{folder} holds {ADAPTER_CONFIG} but no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")


class PeftAdapter(LazyStateDict):
    """One LoRA adapter as a fine-tuned model over ``base``'s keys (see the module docstring)."""

    def __init__(self, folder: Path, base: LazyStateDict) -> None:
        super().__init__(Path(folder), file_backed=True)
        self.base = base
        self.config = read_adapter_config(self.path)
        self.base_model = self.config.get("base_model_name_or_path")
        self._suffixes: dict[str, list[str]] | None = None
        weights = _read_weights(self.path)
        factors: dict[str, dict[str, Tensor]] = {}
        self._full: dict[str, Tensor] = {}
        for saved, tensor in weights.items():
            if not saved.startswith(_PREFIX):
                raise AdapterError(f"{self.path}: saved tensor {saved!r} does not start with {_PREFIX!r}; not a PEFT "
                                   "adapter file")
            key = saved[len(_PREFIX):]
            match = _FACTOR.fullmatch(key)
            if match is None:
                self._full[self._base_key(key, saved)] = tensor
            else:
                factors.setdefault(match["module"], {})[match["kind"]] = tensor
        #: how PEFT stores each targeted entry's factors: "linear", "transposed" (fan_in_fan_out) or "embedding"
        self.layout: dict[str, str] = {}
        self._factors = {key: self._build(module, key, parts) for module, parts in factors.items()
                         for key in [self._base_key(f"{module}.weight", module)]}
        for key, tensor in self._full.items():
            if tuple(tensor.shape) != tuple(base.shape(key)):
                raise CheckpointMismatchError(f"{self.path}: saved {key!r} has shape {tuple(tensor.shape)}, the base "
                                              f"model's is {tuple(base.shape(key))}; is the adapter for another "
                                              "base model?")
            self._check_finite(key, tensor)
        if not self._factors and not self._full:
            raise AdapterError(f"{self.path} holds no LoRA factors and no saved tensors: nothing to merge")

    # ------------------------------------------------------------------------------------------------ reading

    def _base_key(self, key: str, saved: str) -> str:
        """The base entry an adapter key names: itself, or the one entry ending with it (an adapter trained on a
        sub-module, e.g. open_clip's visual tower, whose checkpoint keys carry a longer prefix)."""
        if key in self.base:
            return key
        if self._suffixes is None:
            self._suffixes = {}
            for name in self.base:
                parts = name.split(".")
                for start in range(1, len(parts)):
                    self._suffixes.setdefault(".".join(parts[start:]), []).append(name)
        found = self._suffixes.get(key, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AdapterError(f"{self.path}: the adapter changes {saved!r}, which matches several entries of the "
                               f"base model ({', '.join(found[:3])}); give a base whose keys it names exactly")
        raise CheckpointMismatchError(f"{self.path}: the adapter changes {saved!r}, which the base model "
                                      f"{self.base.path} does not have; is the adapter for another base model?")

    def _build(self, module: str, key: str, parts: Mapping[str, Tensor]) -> LoRAFactors:
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        if a_name not in parts or b_name not in parts:
            missing = b_name if a_name in parts else a_name
            raise AdapterError(f"{self.path}: module {module!r} has no {missing} factor; the adapter file is corrupt")
        A, B = parts[a_name], parts[b_name]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise AdapterError(f"{self.path}: module {module!r} has factors {b_name} {tuple(B.shape)} and {a_name} "
                               f"{tuple(A.shape)}, which do not multiply")
        rank = A.shape[0]
        if rank == 0:
            raise AdapterError(f"{self.path}: module {module!r} has rank 0 (empty LoRA factors)")
        for name, tensor in ((a_name, A), (b_name, B)):
            self._check_finite(f"{module}.{name}", tensor)
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        scale = float(alpha) / (math.sqrt(rank) if self.config.get("use_rslora") else rank)
        # ΔW as PEFT adds it: B·A, transposed for embeddings and for fan_in_fan_out (Conv1D) layers
        transposed = embedding or bool(self.config.get("fan_in_fan_out"))
        self.layout[key] = "embedding" if embedding else "transposed" if transposed else "linear"
        B, A = (A.mT, B.mT) if transposed else (B, A)
        expected = tuple(self.base.shape(key))
        if (B.shape[0], A.shape[1]) != expected:
            raise CheckpointMismatchError(
                f"{self.path}: module {module!r} has LoRA factors for a {B.shape[0]} × {A.shape[1]} weight, the base "
                f"model's {key!r} is {' × '.join(map(str, expected))}; is the adapter for another base model?")
        return LoRAFactors(B, A, scale)

    def _check_finite(self, name: str, tensor: Tensor) -> None:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteCheckpointError(f"{self.path}: {name!r} holds NaN or ±inf values")

    # ------------------------------------------------------------------------------------------ the mapping

    def changes(self, key: str) -> bool:
        """Whether the adapter changes ``key`` (through factors, or a tensor saved whole)."""
        return key in self._factors or key in self._full

    def factors(self, key: str) -> LoRAFactors | None:
        """ΔW's factors for ``key``, or None when the adapter does not target it."""
        return self._factors.get(key)

    @property
    def targeted(self) -> list[str]:
        """Base keys the adapter changes through LoRA factors."""
        return sorted(self._factors)

    @property
    def saved(self) -> list[str]:
        """Base keys the adapter saves whole (``modules_to_save``, trained biases)."""
        return sorted(self._full)

    def __getitem__(self, key: str) -> Tensor:
        if key in self._full:
            return self._full[key]
        found = self._factors.get(key)
        base = self.base[key]
        if found is None:
            return base
        return found.materialize().add_(base.to(torch.float32))

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def __contains__(self, key: object) -> bool:
        return key in self.base

    def shape(self, key: str) -> torch.Size:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(key)


def open_task_source(path: Path, base: LazyStateDict) -> LazyStateDict:
    """A fine-tuned model's weights: a LoRA adapter folder over ``base``, or a checkpoint file / model folder."""
    if is_adapter_folder(path):
        return PeftAdapter(path, base)
    from .hf_folder import HFModelFolder

    return HFModelFolder(path) if path.is_dir() else open_state_dict(path)


def adapter_tensors(key: str, layout: str, B: Tensor, A: Tensor) -> dict[str, Tensor]:
    """The saved tensors of a merged entry ΔW = B·A (``B`` [rows, R], ``A`` [R, cols], scale 1) in PEFT's layout
    for the module: ``lora_A`` / ``lora_B``, transposed for fan_in_fan_out, ``lora_embedding_*`` for embeddings."""
    prefix = peft_key(module_name(key))
    if layout == "linear":
        return {f"{prefix}.lora_A.weight": A, f"{prefix}.lora_B.weight": B}
    if layout == "transposed":
        return {f"{prefix}.lora_A.weight": B.mT, f"{prefix}.lora_B.weight": A.mT}
    return {f"{prefix}.lora_embedding_A": B.mT, f"{prefix}.lora_embedding_B": A.mT}


def adapter_config_for(adapters: Sequence[PeftAdapter], ranks: Mapping[str, int], saved: Sequence[str]) -> dict:
    """The ``adapter_config.json`` of a merged adapter: the first input's settings, ``r`` the most common rank,
    ``rank_pattern`` / ``alpha_pattern`` for every other module (scale 1: alpha equal to the rank), no rsLoRA,
    ``target_modules`` the modules written, ``modules_to_save`` the modules saved whole."""
    config = {key: value for key, value in adapters[0].config.items()}
    modules = {module_name(key): rank for key, rank in ranks.items()}
    counts: dict[int, int] = {}
    for rank in modules.values():
        counts[rank] = counts.get(rank, 0) + 1
    common = max(sorted(counts), key=lambda rank: counts[rank]) if counts else 1
    config.update(
        r=common, lora_alpha=common, use_rslora=False, use_dora=False, lora_bias=False,
        rank_pattern={re.escape(module): rank for module, rank in sorted(modules.items()) if rank != common},
        alpha_pattern={re.escape(module): rank for module, rank in sorted(modules.items()) if rank != common},
        target_modules=sorted(modules) or None, exclude_modules=None, layers_to_transform=None,
        layers_pattern=None, inference_mode=True, init_lora_weights=True,
        modules_to_save=sorted({module_name(key) for key in saved}) or None,
        trainable_token_indices=None)
    return config


def write_adapter(folder: Path, tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> list[Path]:
    """``adapter_model.safetensors`` and ``adapter_config.json`` into ``folder`` (which the caller owns and puts in
    place); tensors stored contiguous, as saved."""
    from safetensors.torch import save_file

    weights = folder / ADAPTER_WEIGHTS[0]
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(weights), metadata={"format": "pt"})
    config_path = folder / ADAPTER_CONFIG
    config_path.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    return [weights, config_path]
