"""The allow-list of the published whole-module checkpoints (task_vectors ``zeroshot.pt`` / ``finetuned.pt``).

Why this module exists: the published encoders are not state dicts but whole pickled ``ImageEncoder`` modules,
recorded under the authors' class paths (``src.modeling.*`` / ``src.models.modeling.*``) with open_clip, torch.nn
and torchvision classes inside. Reading them safely needs one specific allow-list: the published class paths map
onto :class:`LegacyImageEncoder`, and every module or transform class onto an inert stand-in, so that the authors'
``src`` package is never needed or imported and no constructor of a file-named class ever runs. This module holds
that list and :func:`load_legacy_module`, which uses it; the generic loader it runs on (formats, restricted
unpickler, error messages) is :mod:`tsvmerge.checkpoints.restricted_unpickler`, whose public names are re-exported
here so that ``from tsvmerge.checkpoints.safe_pickle import load_pickled_object`` and the like keep working.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from collections.abc import Iterator

import torch

from tsvmerge.checkpoints.paths import PathLike, require_file
from tsvmerge.checkpoints.restricted_unpickler import (
    FileFormat,
    UnsafeCheckpointError,
    checkpoint_format,
    load_pickled_object,
    tensor_allow_list,
)

__all__ = [
    "FileFormat",
    "LEGACY_IMAGE_ENCODER_PATHS",
    "LegacyImageEncoder",
    "UnsafeCheckpointError",
    "checkpoint_format",
    "legacy_module_allow_list",
    "load_legacy_module",
    "load_pickled_object",
    "tensor_allow_list",
]

LEGACY_IMAGE_ENCODER_PATHS = ("src.modeling.ImageEncoder", "src.models.modeling.ImageEncoder")


# ------------------------------------------------------------------------------- legacy whole-module files
class LegacyImageEncoder(torch.nn.Module):
    """Stand-in for the task_vectors ``ImageEncoder``: a module holding the CLIP model as attribute ``model``.

    Only its ``state_dict()`` is used; the published class also carried preprocessing transforms, which are
    loaded as inert placeholders.
    """

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        super().__init__()
        if model is not None:
            self.model = model


class _InertModule(torch.nn.Module):
    """Placeholder for every torch.nn / open_clip module class in a legacy file.

    Unpickling only restores ``__dict__`` (parameters, buffers, submodules), which is all ``state_dict()`` reads,
    so no constructor or method of the real class is ever run on file-controlled data; it also makes the
    loader independent of the open_clip version that wrote the file.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()


class _Opaque:
    """Placeholder for the non-module objects a legacy encoder carries (preprocessing transforms, enums)."""

    def __new__(cls, *args: object, **kwargs: object) -> _Opaque:
        return super().__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass  # the state of a transform is irrelevant to the weights


def _classes_defined_in(module: types.ModuleType, base: type | None = None) -> Iterator[str]:
    for value in vars(module).values():
        defined_here = isinstance(value, type) and value.__module__ == module.__name__
        if defined_here and (base is None or issubclass(value, base)):
            yield f"{module.__name__}.{value.__qualname__}"


def _functions_defined_in(module: types.ModuleType) -> Iterator[str]:
    for value in vars(module).values():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            yield f"{module.__name__}.{value.__qualname__}"


def _import_optional(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# Names of open_clip 1.x, where the towers lived in open_clip.model; harmless to admit since they map to _InertModule.
_OLD_OPEN_CLIP_MODULE_CLASSES = tuple(
    f"open_clip.model.{name}"
    for name in (
        "VisualTransformer",
        "VisionTransformer",
        "Transformer",
        "ResidualAttentionBlock",
        "LayerNorm",
        "LayerNormFp32",
        "QuickGELU",
        "LayerScale",
        "ModifiedResNet",
        "AttentionPool2d",
        "Bottleneck",
    )
)


def legacy_module_allow_list() -> dict[str, object]:
    """Allow-list for whole pickled image encoders, enumerated from the modules that define those classes.

    * torch.nn module classes (every ``torch.nn.modules.*`` submodule) and open_clip's model classes
      (``open_clip.model``, ``open_clip.transformer``, ``open_clip.modified_resnet``) -> ``_InertModule``;
    * torchvision transform classes, ``InterpolationMode`` and open_clip's transform helpers -> ``_Opaque``
      (``_InertModule`` for those that are modules);
    * the task_vectors ``ImageEncoder`` paths -> ``LegacyImageEncoder``.
    timm- or Hugging-Face-based towers are deliberately not admitted.
    """
    allowed: dict[str, object] = {}
    import torch.nn.modules as nn_modules

    for info in pkgutil.iter_modules(nn_modules.__path__):
        sub = _import_optional(f"torch.nn.modules.{info.name}")
        if sub is not None:
            allowed.update(dict.fromkeys(_classes_defined_in(sub, torch.nn.Module), _InertModule))
    for name in ("open_clip.model", "open_clip.transformer", "open_clip.modified_resnet"):
        sub = _import_optional(name)
        if sub is not None:
            allowed.update(dict.fromkeys(_classes_defined_in(sub, torch.nn.Module), _InertModule))
    allowed.update(dict.fromkeys(_OLD_OPEN_CLIP_MODULE_CLASSES, _InertModule))

    for name in ("torchvision.transforms.transforms", "open_clip.transform"):
        sub = _import_optional(name)
        if sub is not None:
            # Transforms that are nn.Modules stay modules (torch's legacy format records module classes apart).
            allowed.update(dict.fromkeys(_classes_defined_in(sub), _Opaque))
            allowed.update(dict.fromkeys(_classes_defined_in(sub, torch.nn.Module), _InertModule))
            allowed.update(dict.fromkeys(_functions_defined_in(sub), _Opaque))
    for name in ("torchvision.transforms.functional.InterpolationMode", "PIL.Image.Resampling"):
        allowed[name] = _Opaque

    allowed.update(dict.fromkeys(LEGACY_IMAGE_ENCODER_PATHS, LegacyImageEncoder))
    return allowed


def load_legacy_module(path: PathLike) -> dict[str, torch.Tensor]:
    """State dict of a task_vectors-style file (``zeroshot.pt`` / ``finetuned.pt``) holding a whole pickled encoder.

    The keys are those of the published state dicts (``model.visual.*``, ...). Raises UnsafeCheckpointError when
    the file needs a global outside the allow-list (e.g. an open_clip class this loader does not know).
    """
    p = require_file(path)
    try:
        obj = load_pickled_object(p, legacy_module_allow_list(), mmap=True)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(
            f"{exc}\nThis loader only admits torch.nn / open_clip (model, transformer, modified_resnet) module "
            "classes and torchvision/open_clip transforms; re-save the file as a state dict with the code that "
            "wrote it, e.g. torch.save(encoder.state_dict(), path), if it needs anything else.",
            path=exc.path,
            global_name=exc.global_name,
        ) from None
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"{p} does not hold a pickled module but a {type(obj).__name__}")
    if not isinstance(obj, LegacyImageEncoder) or not isinstance(getattr(obj, "model", None), torch.nn.Module):
        raise TypeError(
            f"{p} holds a pickled module that is not a task_vectors ImageEncoder "
            f"({' or '.join(LEGACY_IMAGE_ENCODER_PATHS)}) with a CLIP model in attribute 'model'"
        )
    try:
        state = obj.state_dict()
    except Exception as exc:  # a module whose pickled __dict__ lacks what state_dict() reads
        raise TypeError(f"cannot extract a state dict from the module pickled in {p}: {exc}") from exc
    return {key: value.detach() for key, value in state.items()}

