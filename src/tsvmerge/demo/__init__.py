"""The embedded offline demo: a tiny CLIP pre-trained on synthetic tasks, fine-tuned, merged and evaluated."""

from .pipeline import DEFAULT_ANALYSES, DEFAULT_METHOD_SETTINGS, DEFAULT_METHODS, DemoPlan, demo_plan, run_demo
from .pretrain import PretrainSettings, pretrain_clip

__all__ = [
    "DEFAULT_ANALYSES", "DEFAULT_METHOD_SETTINGS", "DEFAULT_METHODS", "DemoPlan", "PretrainSettings", "demo_plan",
    "pretrain_clip", "run_demo",
]
