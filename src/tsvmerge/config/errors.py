"""The error every configuration problem raises."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and says what is valid."""
