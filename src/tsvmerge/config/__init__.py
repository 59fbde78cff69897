"""Configuration, one path for every command: the schemas (Hydra structured configs behind the YAML files),
their composition with errors that list the valid keys and values, and the checks every command's settings share.
Imports only `tsvmerge.utils`.

- :mod:`~tsvmerge.config.schema`: the keys of every entry point, with types, defaults and allowed values
  (Hydra structured configs, registered in Hydra's ConfigStore by :func:`register_configs`);
- :mod:`~tsvmerge.config.compose`: Hydra's composition of ``config/*.yaml`` on that schema, with errors that
  list the valid keys and values;
- :mod:`~tsvmerge.config.settings`: the checks a schema cannot express that every command shares;
- :mod:`~tsvmerge.config.flags`: the published ``--flag=value`` spellings of finetune.py and
  eval_single_task.py, mapped onto the same schema.
"""

from .compose import ConfigSource, check_command_line, compose_config, to_container
from .errors import ConfigError
from .settings import Problems
from .store import register_configs

__all__ = [
    "ConfigError",
    "ConfigSource",
    "Problems",
    "check_command_line",
    "compose_config",
    "register_configs",
    "to_container",
]
