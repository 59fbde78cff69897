"""The embedded offline demo's own parts: the tiny CLIP pre-trained on synthetic tasks (``pretrain``) and the
summary of its results (``summary``). The demo command itself is :mod:`tsvmerge.recipes.demo`."""

from .pretrain import PretrainSettings, pretrain_clip

__all__ = ["PretrainSettings", "pretrain_clip"]
