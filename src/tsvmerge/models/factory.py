"""Creating the CLIP models: the one function every entry point goes through (``create_clip``).

A model is described by a :class:`ModelSpec` (``config/model/<name>.yaml``): its name (also the checkpoint folder
name under ``model_location``), the open_clip architecture, whether it uses QuickGELU (OpenAI's weights do, and so
do the published checkpoints), where pre-trained weights come from when they are needed, and optionally an inline
open_clip model config for architectures open_clip does not ship (tests use a tiny one). Models are always built
with ``pretrained=None`` unless pre-trained weights are explicitly asked for, so nothing is downloaded when the
zero-shot checkpoint and the head files exist.

Models that are not open_clip architectures (e.g. a tiny synthetic demo model) plug in through
:func:`register_model_builder`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import UserError

__all__ = [
    "ModelSpec",
    "PretrainedWeightsError",
    "create_clip",
    "get_tokenizer",
    "register_model_builder",
    "register_open_clip_config",
]

Transform = Callable[[Any], Any]
ModelBuilder = Callable[["ModelSpec", bool], tuple[torch.nn.Module, Transform]]


@dataclass(frozen=True)
class ModelSpec:
    """What ``config/model/<name>.yaml`` says about a model.

    ``pretrained``: an open_clip tag (``openai``) or a local weights file (a full CLIP state dict); used only for
    the weights that no checkpoint provides (the text tower of missing zero-shot heads, or the image encoder when
    no zero-shot checkpoint exists). ``open_clip_config``: an inline open_clip model config (``embed_dim``,
    ``vision_cfg``, ``text_cfg``) registered under ``arch``. ``benchmark``: the task list the model is used with
    (``paper``: the 20 datasets of the paper; ``synthetic``: the demo's generated tasks), which ``num_tasks`` and
    the default fine-tuning tasks refer to. ``finetuning``: overrides of the fine-tuning protocol for this model
    (hyper-parameters of :class:`tsvmerge.models.finetuning_protocol.Hyperparameters` and ``epochs: {Dataset: n}``), for
    models that are not trained like the paper's CLIPs.
    """

    name: str
    arch: str | None = None
    quick_gelu: bool = False
    pretrained: str | None = None
    open_clip_config: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    cache_dir: str | None = None
    benchmark: str = "paper"
    finetuning: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)

    @property
    def architecture(self) -> str:
        return self.arch or self.name

    @property
    def pretrained_is_file(self) -> bool:
        return self.pretrained is not None and (os.sep in self.pretrained or Path(self.pretrained).suffix != "")


class PretrainedWeightsError(UserError, RuntimeError):
    """The configured pre-trained weights (``model.pretrained``) cannot be loaded."""


_BUILDERS: dict[str, ModelBuilder] = {}


def register_model_builder(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: ``builder(spec, load_pretrained) -> (clip_like_model, eval_preprocess)`` for model ``name``.

    The model must offer ``encode_image`` (and ``encode_text`` / ``logit_scale`` when heads are built from it) and
    an attribute ``transformer`` holding the text transformer, which the image encoder removes.
    """

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorate


_REGISTERED: dict[str, str] = {}


def register_open_clip_config(name: str, config: Mapping[str, Any]) -> None:
    """Make ``config`` (an open_clip model config dict) available to open_clip as architecture ``name``."""
    import open_clip

    text = json.dumps(_plain(config), sort_keys=True)
    if _REGISTERED.get(name) == text and open_clip.get_model_config(name) is not None:
        return
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"open_clip_config of model {name!r} lacks {', '.join(missing)}")
    # open_clip reads the file when it is added and keeps the config in memory (later rescans skip missing files),
    # so the file only has to exist for the duration of the call.
    with tempfile.TemporaryDirectory(prefix="tsvmerge_open_clip_config_") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(text)
        open_clip.add_model_config(path)
    _REGISTERED[name] = text


def _plain(value: Any) -> Any:
    """OmegaConf containers / mappings to plain JSON-able Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's INFO chatter (it logs through the root logger) and its 'No pretrained weights loaded ...
    initialized randomly' warning: here the weights are filled from a checkpoint right after creation."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            from_open_clip = f"{os.sep}open_clip{os.sep}" in record.pathname
            if from_open_clip and record.levelno < logging.WARNING:
                return False
            return "No pretrained weights loaded" not in record.getMessage()

    root, flt = logging.getLogger(), _Filter()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def create_clip(spec: ModelSpec, *, load_pretrained: bool = False) -> tuple[torch.nn.Module, Transform]:
    """The CLIP model of ``spec`` (both towers, eval mode, CPU) and its evaluation preprocess.

    Without ``load_pretrained`` the weights are random (``pretrained=None``): the caller fills them from a
    checkpoint. With it, ``spec.pretrained`` (tag or file) is loaded, which may download (open_clip's cache).
    """
    if spec.name in _BUILDERS:
        model, preprocess = _BUILDERS[spec.name](spec, load_pretrained)
        return model.eval(), preprocess
    import open_clip

    if spec.open_clip_config is not None:
        register_open_clip_config(spec.architecture, spec.open_clip_config)
    elif open_clip.get_model_config(spec.architecture) is None:
        raise ValueError(
            f"model {spec.name!r}: open_clip has no architecture {spec.architecture!r} (set `arch` to one of "
            f"open_clip.list_models(), or give an inline `open_clip_config`)"
        )
    pretrained = None
    if load_pretrained:
        if not spec.pretrained:
            raise PretrainedWeightsError(
                f"model {spec.name!r} has no pre-trained weights configured (model.pretrained=null)")
        pretrained = spec.pretrained
        if spec.pretrained_is_file and not Path(spec.pretrained).is_file():
            raise PretrainedWeightsError(f"model.pretrained={spec.pretrained!r}: no such weights file")
    try:
        with _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.architecture, pretrained=pretrained, force_quick_gelu=spec.quick_gelu, cache_dir=spec.cache_dir
            )
    except RuntimeError as exc:
        if pretrained is None:
            raise
        raise PretrainedWeightsError(
            f"could not load the pre-trained weights model.pretrained={pretrained!r} of {spec.name!r}: {exc}\n"
            "Offline, point model.pretrained at a local CLIP weights file (a full open_clip state dict), or "
            "provide the files that make them unnecessary (zero-shot checkpoint and head_<Dataset>Val.pt files)."
        ) from exc
    return model.eval(), preprocess


def get_tokenizer(spec: ModelSpec, model: torch.nn.Module | None = None) -> Callable[[list[str]], torch.Tensor]:
    """The text tokenizer of ``spec`` (call after :func:`create_clip`, which registers inline configs).

    A model from a custom builder provides its own as attribute ``tokenizer``.
    """
    own = getattr(model, "tokenizer", None)
    if own is not None:
        return own
    if spec.name in _BUILDERS:
        raise ValueError(f"model {spec.name!r} has a custom builder whose model has no `tokenizer` attribute")
    import open_clip

    with _quiet_open_clip():
        return open_clip.get_tokenizer(spec.architecture)
