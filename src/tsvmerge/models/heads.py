"""Zero-shot classification head, compatible with the heads pickled by the published code (SPEC §1)."""

from __future__ import annotations

import torch
from torch import Tensor

from tsvmerge.utils.files import PathLike, atomic_write
from tsvmerge.checkpoints.safe_pickle import load_pickled_object

__all__ = [
    "HEAD_CLASS_PATHS",
    "ClassificationHead",
    "head_allow_list",
    "load_classification_head",
    "save_classification_head",
]

# Class paths under which heads were pickled: the tall_masks code, the older task_vectors code, and ours.
HEAD_CLASS_PATHS = (
    "src.models.modeling.ClassificationHead",
    "src.modeling.ClassificationHead",
    "tsvmerge.models.heads.ClassificationHead",
)


class ClassificationHead(torch.nn.Linear):
    """Linear map over (optionally L2-normalized) image features; weight [C, D], bias [C].

    Same constructor, attributes and forward as the published ``src.models.modeling.ClassificationHead`` so that
    its pickles map onto this class.
    """

    def __init__(self, normalize: bool, weights: Tensor, biases: Tensor | None = None) -> None:
        if weights.ndim != 2:
            raise ValueError(f"head weights must be 2-D [classes, features], got shape {tuple(weights.shape)}")
        output_size, input_size = weights.shape
        # Built on the meta device: the random init of nn.Linear would be thrown away immediately.
        super().__init__(input_size, output_size, device="meta")
        self.normalize = bool(normalize)
        self.weight = torch.nn.Parameter(weights.detach().clone())
        if biases is None:
            biases = torch.zeros(output_size, dtype=weights.dtype, device=weights.device)
        elif tuple(biases.shape) != (output_size,):
            raise ValueError(f"head bias must have shape ({output_size},), got {tuple(biases.shape)}")
        self.bias = torch.nn.Parameter(biases.detach().clone())

    def forward(self, inputs: Tensor) -> Tensor:
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)  # as published (no epsilon)
        return super().forward(inputs)


def head_allow_list() -> dict[str, object]:
    """Globals admitted in a head file: only the head class, under each path it was published with."""
    return dict.fromkeys(HEAD_CLASS_PATHS, ClassificationHead)


def load_classification_head(path: PathLike) -> ClassificationHead:
    """Load a head written by the published code (``torch.save`` or ``pickle.dump``) or by us, without full pickle.

    The unpickled object is only read for ``weight``, ``bias`` and ``normalize``; the returned head is freshly
    constructed, so no pickled hooks or extra attributes survive.
    """
    obj = load_pickled_object(path, head_allow_list())
    if not isinstance(obj, ClassificationHead):
        raise TypeError(f"{path} does not hold a ClassificationHead but a {type(obj).__name__}")
    try:
        weight, bias = obj.weight, obj.bias
        normalize = obj.__dict__["normalize"]
    except (AttributeError, KeyError) as exc:
        raise TypeError(f"the ClassificationHead pickled in {path} lacks {exc}") from None
    if not isinstance(normalize, bool):
        raise TypeError(f"the ClassificationHead pickled in {path} has a non-boolean 'normalize': {normalize!r}")
    if not isinstance(weight, Tensor) or (bias is not None and not isinstance(bias, Tensor)):
        raise TypeError(f"the ClassificationHead pickled in {path} has non-tensor weight/bias")
    return ClassificationHead(normalize, weight.detach(), None if bias is None else bias.detach())


def save_classification_head(head: ClassificationHead, path: PathLike) -> None:
    """``torch.save`` a CPU copy of ``head`` atomically (temporary file in the same directory, then rename)."""
    bias = None if head.bias is None else head.bias.detach().cpu()
    copy = ClassificationHead(bool(head.normalize), head.weight.detach().cpu(), bias)
    atomic_write(path, lambda tmp: torch.save(copy, tmp))
