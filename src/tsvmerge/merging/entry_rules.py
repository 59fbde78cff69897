"""Which entries the SVD-based methods treat as matrices, and which they average: a rule set per model family.

Only 2-D entries can go through an SVD. Per family, some matrices are averaged instead:

* ``clip`` (and any model not recognised): ``text_projection`` is averaged by TSV-M (published behaviour), while
  TSV-C still compresses it.
* ``decoder_lm`` (Llama, Mistral, Qwen, GPT-2...): the token embeddings and the output head are averaged, by every
  method and kept whole by TSV-C. Their rows are tokens, not directions of a shared space, and their SVD is the
  costliest of the model (vocabulary-sized).

``svd_keys`` (a regular expression searched in each entry name) replaces the family's choice of SVD entries:
exactly the matching 2-D entries go through the SVD. ``average_keys`` then averages every matching entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FAMILIES", "EntryRules", "check_rules_match", "detect_family", "rules_for"]

#: Entries each family averages although they are matrices; ``None``: none.
_FAMILY_AVERAGED: dict[str, str | None] = {
    "clip": r"text_projection",
    "decoder_lm": r"(^|\.)(embed_tokens|wte|wpe|embed_in|embed_out|word_embeddings|lm_head)\.weight$",
}
#: Families whose averaged matrices TSV-C compresses all the same (CLIP's ``text_projection``, as published).
_COMPRESSED_ANYWAY = {"clip"}
FAMILIES = tuple(_FAMILY_AVERAGED)

_DECODER_KEYS = re.compile(r"(^|\.)(lm_head\.weight|embed_tokens\.weight|wte\.weight|embed_out\.weight)$")


def _compile(pattern: str | None, option: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{option} {pattern!r} is not a valid regular expression ({exc})") from None


@dataclass(frozen=True)
class EntryRules:
    """The family's default plus the user's ``svd_keys`` / ``average_keys`` overrides (regular expressions)."""

    family: str = "clip"
    svd_keys: str | None = None
    average_keys: str | None = None

    def __post_init__(self) -> None:
        if self.family not in _FAMILY_AVERAGED:
            raise ValueError(f"unknown model family {self.family!r}; known: {', '.join(FAMILIES)}")
        averaged = _FAMILY_AVERAGED[self.family]
        object.__setattr__(self, "_family_averaged", None if averaged is None else re.compile(averaged))
        object.__setattr__(self, "_svd", _compile(self.svd_keys, "--svd-keys"))
        object.__setattr__(self, "_average", _compile(self.average_keys, "--average-keys"))

    def uses_svd(self, key: str, shape: torch.Size | tuple[int, ...], *, compression: bool = False) -> bool:
        """Whether entry ``key`` goes through the SVD path; ``compression`` for TSV-C's per-task compression."""
        if len(shape) != 2:
            return False
        if self._average is not None and self._average.search(key):
            return False
        if self._svd is not None:
            return bool(self._svd.search(key))
        if compression and self.family in _COMPRESSED_ANYWAY:
            return True
        return self._family_averaged is None or not self._family_averaged.search(key)


def detect_family(keys: Iterable[str], config: Mapping[str, Any] | None = None) -> str:
    """``decoder_lm`` for a causal language model (from ``config.json`` or its key names), else ``clip``."""
    config = config or {}
    architectures = config.get("architectures") or []
    if any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder_lm"
    if any(_DECODER_KEYS.search(key) for key in keys):
        return "decoder_lm"
    return "clip"


def rules_for(keys: Iterable[str], config: Mapping[str, Any] | None = None, *, svd_keys: str | None = None,
              average_keys: str | None = None) -> EntryRules:
    """The rule set of a model: its detected family's, with the user's overrides."""
    return EntryRules(detect_family(keys, config), svd_keys, average_keys)


def check_rules_match(rules: EntryRules, shapes: Mapping[str, Sequence[int]],
                      options: tuple[str, str] = ("--svd-keys", "--average-keys")) -> None:
    """Refuse an override that matches no matrix of the model (``shapes``: θ0's entries); ``options`` name the two
    overrides as the user gave them (flags, or config keys).

    Such a rule is a typo or a pattern for another model, and it would silently change the method: ``svd_keys``
    matching nothing sends no matrix through the SVD, which makes TSV-M a plain average.
    """
    matrices = [key for key, shape in shapes.items() if len(shape) == 2]
    for option, pattern in zip(options, (rules.svd_keys, rules.average_keys), strict=True):
        if pattern is None:
            continue
        compiled = _compile(pattern, option)
        assert compiled is not None
        if not any(compiled.search(key) for key in matrices):
            examples = ", ".join(matrices[:3]) + (", ..." if len(matrices) > 3 else "")
            raise ValueError(f"{option} {pattern!r} matches no matrix (2-D entry) of the pre-trained model, so it "
                             f"would change nothing the method decomposes; its matrices are named like {examples}")
