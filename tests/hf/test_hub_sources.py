"""Hub ids ``org/name[@revision]`` resolved from a local Hugging Face cache, offline."""

import shutil

import pytest
import torch

from tests.support.hf_models import make_folders
from tsvmerge.checkpoints.sources import HubModelError, parse_hub_id, resolve_source
from tsvmerge.cli import main

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(root, repo_id, folder):
    """``folder`` laid out as huggingface_hub's cache does: ``models--org--name/snapshots/<commit>`` + ``refs/main``."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    pre, fts = make_folders(tmp_path / "models", num_tasks=2)
    cache = tmp_path / "hub"
    _cache(cache, "org/base", pre)
    for i, ft in enumerate(fts):
        _cache(cache, f"org/ft{i}", ft)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path, pre, fts


def test_hub_id_parsing():
    assert parse_hub_id("meta-llama/Llama-3.2-1B") == ("meta-llama/Llama-3.2-1B", None)
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hub_id("ckpts/model.safetensors") is None
    assert parse_hub_id("a/b/c") is None


def test_offline_hub_ids_resolve_from_the_cache(offline_cache):
    tmp, pre, fts = offline_cache
    assert resolve_source("org/base").resolve() == (tmp / "hub" / "models--org--base" / "snapshots" / COMMIT).resolve()
    assert resolve_source(f"org/base@{COMMIT}").name == COMMIT
    assert main(["merge", "--quiet", "--method", "sum", "--pretrained", "org/base", "--finetuned", "org/ft0",
                 "org/ft1", "--out", str(tmp / "from_hub")]) == 0
    assert main(["merge", "--quiet", "--method", "sum", "--pretrained", str(pre), "--finetuned",
                 *map(str, fts), "--out", str(tmp / "from_folders")]) == 0
    from safetensors.torch import load_file

    a, b = load_file(tmp / "from_hub" / "model.safetensors"), load_file(tmp / "from_folders" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_absent_model_offline_is_a_clear_error(offline_cache, capsys):
    tmp, _, _ = offline_cache
    with pytest.raises(HubModelError, match="HF_HUB_OFFLINE"):
        resolve_source("org/missing")
    assert main(["merge", "--quiet", "--method", "sum", "--pretrained", "org/base", "--finetuned", "org/missing",
                 "--out", str(tmp / "out")]) == 2
    err = capsys.readouterr().err
    assert "org/missing" in err and "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
