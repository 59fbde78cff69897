"""Optional Weights & Biases logging: ``wandb.mode=disabled`` (default) never imports wandb."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .results import json_safe

__all__ = ["Tracker", "WandbSettings"]

WANDB_MODES = ("disabled", "offline", "online")


@dataclass(frozen=True)
class WandbSettings:
    mode: str = "disabled"
    project: str = "tsvmerge"
    entity: str | None = None
    group: str | None = None


class Tracker:
    """Thin wrapper: every call is a no-op when disabled."""

    def __init__(self, settings: WandbSettings, config: Mapping[str, Any] | None = None,
                 name: str | None = None) -> None:
        if settings.mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode={settings.mode!r}; valid: {', '.join(WANDB_MODES)}")
        self._run = None
        if settings.mode == "disabled":
            return
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError(
                f"wandb.mode={settings.mode} needs the wandb package (pip install 'tsvmerge[wandb]'), "
                "or run with wandb.mode=disabled"
            ) from exc
        self._run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group,
                               mode=settings.mode, name=name, config=json_safe(config or {}))

    @property
    def enabled(self) -> bool:
        return self._run is not None

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(json_safe(data), step=step)

    def summary(self, data: Mapping[str, Any]) -> None:
        if self._run is not None:
            for key, value in json_safe(data).items():
                self._run.summary[key] = value

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
