"""Importing tsvmerge changes nothing outside itself: no environment variable, no torch setting, no Hydra state."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import os, sys
e = dict(os.environ)
import tsvmerge, tsvmerge.merging, tsvmerge.evaluation  # the issue's one-liner, first thing in a fresh process
assert e == dict(os.environ)
# torchvision (through torch._dynamo) and open_clip set TORCHINDUCTOR_CACHE_DIR / TOKENIZERS_PARALLELISM when
# imported: third-party behaviour, imported first so that what is checked below is tsvmerge's own.
import torch, torchvision, open_clip
env = dict(os.environ)
threads = torch.get_num_threads()
import tsvmerge, tsvmerge.merging, tsvmerge.evaluation, tsvmerge.config, tsvmerge.analysis, tsvmerge.training
import tsvmerge.cli, tsvmerge.demo, tsvmerge.recipes.merge_and_evaluate, tsvmerge.recipes.finetune, tsvmerge.recipes.analyze
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
assert env == dict(os.environ), set(os.environ.items()) ^ set(env.items())
assert torch.get_num_threads() == threads
assert "main_schema" not in ConfigStore.instance().repo, "schemas are registered by the entry points"
assert not GlobalHydra.instance().is_initialized()
from omegaconf import OmegaConf
assert not OmegaConf.has_resolver("ties_suffix")
print("clean")
"""


def test_imports_leave_the_process_as_they_found_it() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]

