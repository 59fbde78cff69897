"""The linear maps of a torch module and hooks on their inputs, keyed by the state-dict key of their weight.

Two kinds of maps: every ``nn.Linear`` (key ``<module>.weight``) and the packed projections of
``nn.MultiheadAttention`` (open_clip's blocks): ``<module>.in_proj_weight``, whose input is the attention's query
(= key = value in a self-attention), and ``<module>.out_proj.weight``, whose input - the attention context,
softmax(q kᵀ/√d)·v with the heads concatenated - torch computes inside ``F.multi_head_attention_forward`` without
calling ``out_proj``'s forward, so it is recomputed here from the query (SPEC_REGMEAN R2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InputCapture", "attention_context", "linear_inputs"]

RowsSink = Callable[[str, Tensor], None]


def _attention_modules(module: nn.Module) -> dict[str, nn.MultiheadAttention]:
    return {name: m for name, m in module.named_modules()
            if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None}


def linear_inputs(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight key → shape ([out, in]) of every linear map whose input :class:`InputCapture` can record."""
    attention = _attention_modules(module)
    found: dict[str, tuple[int, ...]] = {}
    for name, m in module.named_modules():
        if name in attention:
            found[f"{name}.in_proj_weight"] = tuple(m.in_proj_weight.shape)
            found[f"{name}.out_proj.weight"] = tuple(m.out_proj.weight.shape)
        elif isinstance(m, nn.Linear) and name.rpartition(".")[0] not in attention:
            found[f"{name}.weight"] = tuple(m.weight.shape)
    return found


def attention_context(attn: nn.MultiheadAttention, query: Tensor) -> Tensor:
    """The input of ``attn.out_proj`` for a self-attention on ``query``, as rows [tokens, width]: q|k|v = x W_inᵀ +
    b_in, heads of width/heads consecutive columns, softmax(q kᵀ/√d) v, heads concatenated in order."""
    x = query if attn.batch_first else query.transpose(0, 1)
    batch, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(batch, length, heads, width // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5
    context = scores.softmax(dim=-1) @ split(v)
    return context.transpose(1, 2).reshape(batch * length, width)


class InputCapture:
    """Forward hooks that send the inputs of the maps ``keys`` to ``sink(key, rows)`` as [rows, n_in] tensors.

    Rows are every token of every sample; ``row_mask`` (a bool tensor over the batch's tokens, set before each
    forward) keeps only the real ones, so that padding never enters a statistic. Use as a context manager: the
    hooks are removed on exit.
    """

    def __init__(self, module: nn.Module, keys: Iterable[str], sink: RowsSink) -> None:
        self.module = module
        self.keys = set(keys)
        self.sink = sink
        self.row_mask: Tensor | None = None
        self._handles: list[Any] = []
        unknown = sorted(self.keys - set(linear_inputs(module)))
        if unknown:
            raise ValueError(f"no linear map to hook for {', '.join(unknown[:5])}")

    def __enter__(self) -> InputCapture:
        attention = _attention_modules(self.module)
        for name, m in self.module.named_modules():
            if name in attention:
                wanted = [k for k in (f"{name}.in_proj_weight", f"{name}.out_proj.weight") if k in self.keys]
                if wanted:
                    self._handles.append(m.register_forward_pre_hook(self._attention_hook(name, m),
                                                                     with_kwargs=True))
            elif f"{name}.weight" in self.keys and isinstance(m, nn.Linear):
                self._handles.append(m.register_forward_pre_hook(self._linear_hook(f"{name}.weight")))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _rows(self, x: Tensor) -> Tensor:
        rows = x.detach().reshape(-1, x.shape[-1])
        if self.row_mask is not None:
            mask = self.row_mask.to(rows.device).reshape(-1)
            if mask.numel() != rows.shape[0]:
                raise ValueError(f"the padding mask covers {mask.numel()} tokens, the hooked input has "
                                 f"{rows.shape[0]}")
            rows = rows[mask]
        return rows

    def _linear_hook(self, key: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.sink(key, self._rows(args[0]))
        return hook

    def _attention_hook(self, name: str, attn: nn.MultiheadAttention) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
            query = args[0] if args else kwargs["query"]
            key_input = args[1] if len(args) > 1 else kwargs.get("key", query)
            if key_input is not query or kwargs.get("attn_mask") is not None or kwargs.get("key_padding_mask") \
                    is not None:
                raise ValueError(f"{name}: only an unmasked self-attention's inputs can be captured")
            if f"{name}.in_proj_weight" in self.keys:
                self.sink(f"{name}.in_proj_weight", self._rows(query))
            if f"{name}.out_proj.weight" in self.keys:
                with torch.no_grad():
                    context = attention_context(attn, query.detach())
                self.sink(f"{name}.out_proj.weight", self._rows(context))
        return hook
