"""A model config (``config/model/<name>.yaml``) read into a :class:`~tsvmerge.models.factory.ModelSpec`.

Every command that loads CLIP reads the same ``model:`` section; the checks a schema cannot express (a name that is
one path component, a known benchmark, a valid ``finetuning:`` section) live here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.settings import Problems
from ..data import BENCHMARKS
from .factory import ModelSpec
from .finetuning_protocol import check_protocol_overrides

__all__ = ["model_spec"]


def model_spec(section: Mapping[str, Any], problems: Problems) -> ModelSpec | None:
    """The model config as a :class:`ModelSpec` (keys and types already checked by the schema)."""
    name = section.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in {".", ".."}:
        problems.append(f"model.name must be a model name (one path component), got {name!r}")
        return None
    benchmark = str(section.get("benchmark") or "paper")
    if benchmark not in BENCHMARKS:
        problems.append(f"model.benchmark={benchmark!r} is not valid; choose one of: {', '.join(BENCHMARKS)}")
        benchmark = "paper"
    finetuning = section.get("finetuning")
    if finetuning is not None:
        problems.extend(f"model.finetuning: {p}" for p in check_protocol_overrides(finetuning))
    return ModelSpec(name=name, arch=section.get("arch"), quick_gelu=bool(section.get("quick_gelu")),
                     pretrained=section.get("pretrained"), open_clip_config=section.get("open_clip_config"),
                     cache_dir=section.get("cache_dir"), benchmark=benchmark, finetuning=finetuning)
