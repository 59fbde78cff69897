"""The error every configuration problem raises."""

from __future__ import annotations

from ..utils.errors import UserError

__all__ = ["ConfigError"]


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names the key and says what is valid."""
