"""The checks every command's settings builder shares, that a schema cannot express: numbers below a declared
minimum, an unusable device, task lists given on a command line; and :class:`Problems`, which collects them so that one
:class:`ConfigError` lists every problem at once.

Each command reads its own typed settings from these (e.g. :mod:`tsvmerge.evaluation.run_settings` for main.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .tracking import WandbSettings

__all__ = ["Problems", "check_device", "check_minimums", "dataset_names", "wandb_settings"]


class Problems(list):
    """Problems found so far; :meth:`raise_if_any` raises them together."""

    def raise_if_any(self, what: str = "invalid configuration") -> None:
        if self:
            raise ConfigError(f"{what}:\n" + "\n".join(f"  - {p}" for p in self))


def check_minimums(values: Mapping[str, Any], schema: type, problems: Problems, prefix: str = "") -> None:
    """Numbers below the ``minimum`` declared in the schema's field metadata."""
    for f in dataclasses.fields(schema):
        minimum = f.metadata.get("minimum")
        value = values.get(f.name)
        if minimum is not None and isinstance(value, int | float) and not isinstance(value, bool) \
                and value < minimum:
            problems.append(f"{prefix}{f.name} must be at least {minimum}, got {value}")


def check_device(device: str, problems: Problems, key: str = "device") -> None:
    from ..utils.device import resolve_device  # imports torch: only when a device is checked

    try:
        resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        problems.append(f"{key}={device!r}: {exc} (valid: auto, cpu, cuda, cuda:<index>)")


def wandb_settings(section: Mapping[str, Any]) -> WandbSettings:
    return WandbSettings(mode=str(section.get("mode", "disabled")), project=str(section.get("project") or "tsvmerge"),
                         entity=section.get("entity"), group=section.get("group"))


def dataset_names(values: Sequence[str] | None) -> list[str] | None:
    """A task list given on a command line: ``MNIST,Cars`` items split, ``Val`` suffixes removed."""
    if not values:
        return None
    return [n.strip().removesuffix("Val") for v in values for n in str(v).split(",") if n.strip()]
