"""The settings of Weights & Biases tracking (``wandb.*`` keys), shared by main.py and finetune.py.

Plain configuration, kept here so that the settings of a run never need the tracking code
(:mod:`tsvmerge.evaluation.tracking`), which imports wandb only when a run logs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WANDB_MODES", "WandbSettings"]

WANDB_MODES = ("disabled", "offline", "online")


@dataclass(frozen=True)
class WandbSettings:
    """Where a run logs: ``mode`` one of :data:`WANDB_MODES`; ``group`` gathers a sweep's runs."""

    mode: str = "disabled"
    project: str = "tsvmerge"
    entity: str | None = None
    group: str | None = None
