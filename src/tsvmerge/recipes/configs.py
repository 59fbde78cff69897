"""Where every command finds its configuration: the YAML folders, and the generated schemas of every registered merge
method and analysis (which ``config/method/<name>.yaml`` and ``config/analysis/<name>.yaml`` extend)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..analysis.params import analysis_schemas
from ..config import ConfigSource
from ..merging.method_config import method_schemas

__all__ = ["config_source"]


def _all_schemas() -> Iterable[tuple[str, str, type]]:
    return [*method_schemas(), *analysis_schemas()]


def config_source(config_dir: Path | None, extra_dirs: Iterable[str | Path] = ()) -> ConfigSource:
    """The :class:`ConfigSource` of a command whose own YAML files are in ``config_dir`` (None: an installed command,
    the schemas alone), ``extra_dirs`` (``--config-dir``) searched first."""
    return ConfigSource(config_dir, schemas=_all_schemas).with_extra(list(extra_dirs))
