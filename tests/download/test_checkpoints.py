"""``tsvmerge download checkpoints`` against a local hub cache (offline) and a faked hub (online), no network."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from tests.support.hub_cache import COMMIT, REPO_FOLDER, blob_of, hub_files, make_hub_cache
from tsvmerge.checkpoints import find_zeroshot_checkpoint, finetuned_checkpoint_path, head_path, tall_mask_paths
from tsvmerge.checkpoints.state_dict import open_state_dict
from tsvmerge.checkpoints.tall_mask_files import load_tall_masks
from tsvmerge.cli import main
from tsvmerge.data.registry import BENCHMARK_DATASETS
from tsvmerge.download import checkpoints as download_module
from tsvmerge.download.hub_files import Hub
from tsvmerge.models.heads import load_classification_head

EIGHT = list(BENCHMARK_DATASETS[:8])


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture repository in a local hub cache, HF_HUB_OFFLINE=1; returns its snapshot folder."""
    snapshot = make_hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def download(to: Path, *args: str) -> int:
    return main(["download", "checkpoints", "--quiet", "--to", str(to), *args])


def layout(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_offline_download_gives_the_layout_main_py_reads(offline_hub: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    to = tmp_path / "models" / "checkpoints"
    assert download(to, "--model", "ViT-B-32", "--tasks", "8") == 0
    # main.py's preflight accepts this model_location (the RunInputs check is in tests/test_doctor.py)
    zeroshot = find_zeroshot_checkpoint(to, "ViT-B-32", EIGHT)
    assert zeroshot == to / "ViT-B-32" / "MNISTVal" / "nonlinear_zeroshot.pt" and zeroshot.is_file()
    for task in EIGHT:
        finetuned = finetuned_checkpoint_path(to, "ViT-B-32", task)
        assert finetuned.is_symlink() and Path(os.readlink(finetuned)) == offline_hub / \
            f"single_task/ViT-B-32/{task}Val/nonlinear_finetuned.pt"
        assert "model.visual.proj" in open_state_dict(finetuned)
        assert load_classification_head(head_path(to, "ViT-B-32", task)).weight.shape == (3, 2)
    assert len(layout(to)) == 1 + 2 * 8  # one zero-shot encoder, no other task, no masks
    assert not (tmp_path / "models" / "tall_masks").exists()
    out = capsys.readouterr().out
    assert "17 files" in out and "0 downloaded (0 B), 17 taken from the cache, 0 already in place" in out
    assert "symbolic links" in out
    assert "tsvmerge doctor model=ViT-B-32 num_tasks=8" in out


def test_vit_b_16_is_found_under_its_other_spelling(offline_hub: Path, tmp_path: Path) -> None:
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-16", "--datasets", "Cars", "EuroSATVal") == 0
    assert layout(to) == {"ViT-B-16/MNISTVal/nonlinear_zeroshot.pt", "ViT-B-16/CarsVal/nonlinear_finetuned.pt",
                          "ViT-B-16/EuroSATVal/nonlinear_finetuned.pt", "ViT-B-16/head_CarsVal.pt",
                          "ViT-B-16/head_EuroSATVal.pt"}
    assert "/VIT-B-16/" in os.readlink(to / "ViT-B-16" / "CarsVal" / "nonlinear_finetuned.pt")
    # MNIST is not among the tasks: main.py still finds the zero-shot encoder
    assert find_zeroshot_checkpoint(to, "ViT-B-16", ["Cars", "EuroSAT"]).is_file()


def test_masks_go_where_main_py_looks_for_them(offline_hub: Path, tmp_path: Path) -> None:
    to = tmp_path / "models" / "checkpoints"
    assert download(to, "--model", "ViT-B-16", "--tasks", "8", "--masks") == 0
    plain = tall_mask_paths(to, "ViT-B-16", 8)[0]
    ties = tall_mask_paths(to, "ViT-B-16", 8, use_ties=True, ties_agg="sum")[0]
    assert plain == tmp_path / "models" / "tall_masks" / "ViT-B-16" / "TALL_mask_8task.npy"
    assert sorted(load_tall_masks(plain)) == sorted(EIGHT) and ties.is_file()
    assert not plain.with_name("TALL_mask_14task.npy").exists()  # another benchmark's masks


def test_masks_need_a_benchmark(offline_hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert download(tmp_path / "c", "--model", "ViT-B-32", "--datasets", "MNIST", "--masks") == 2
    assert "--tasks 8, 14 or 20" in capsys.readouterr().err


def test_copy_gives_real_files_and_replaces_links(offline_hub: Path, tmp_path: Path) -> None:
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-32", "--datasets", "MNIST", "Cars") == 0
    linked = finetuned_checkpoint_path(to, "ViT-B-32", "Cars")
    assert linked.is_symlink()
    assert download(to, "--model", "ViT-B-32", "--datasets", "MNIST", "Cars", "--copy") == 0
    files = [to / name for name in layout(to)]
    assert len(files) == 5 and not any(p.is_symlink() for p in files)
    assert linked.read_bytes() == hub_files()["single_task/ViT-B-32/CarsVal/nonlinear_finetuned.pt"]
    shutil.rmtree(tmp_path / "hub")  # copies do not depend on the cache
    assert open_state_dict(linked)["model.visual.proj"].shape == (3, 2)


def test_a_second_run_does_nothing(offline_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-32", "--tasks", "8") == 0
    before = {name: os.lstat(to / name).st_ino for name in layout(to)}
    capsys.readouterr()

    def no_hub(self: Hub):
        raise AssertionError("a complete layout needs no hub listing")

    monkeypatch.setattr(Hub, "listing", no_hub)
    assert download(to, "--model", "ViT-B-32", "--tasks", "8") == 0
    assert {name: os.lstat(to / name).st_ino for name in layout(to)} == before
    assert "0 downloaded (0 B), 0 taken from the cache, 17 already in place" in capsys.readouterr().out


def test_offline_without_a_cached_file_says_to_go_online(offline_hub: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    (offline_hub / "single_task/ViT-B-32/CarsVal/nonlinear_finetuned.pt").unlink()
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-32", "--tasks", "8") == 2
    err = capsys.readouterr().err
    assert err.startswith("tsvmerge: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "single_task/ViT-B-32/CarsVal/nonlinear_finetuned.pt" in err and "network access" in err
    assert not to.exists()  # nothing placed before the check


def test_offline_without_the_repository_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download(tmp_path / "ckpt", "--model", "ViT-L-14", "--tasks", "8") == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and "nik-dim/tall_masks" in err and "network access" in err


def test_a_damaged_cached_file_is_not_placed(offline_hub: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    blob = blob_of(offline_hub, "single_task/ViT-B-32/DTDVal/nonlinear_finetuned.pt")
    blob.write_bytes(blob.read_bytes()[:100])  # truncated
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-32", "--tasks", "8") == 2
    err = capsys.readouterr().err
    assert "single_task/ViT-B-32/DTDVal/nonlinear_finetuned.pt" in err and str(blob) in err and "delete it" in err
    assert not finetuned_checkpoint_path(to, "ViT-B-32", "DTD").exists()


def test_an_unreadable_file_in_the_layout_is_replaced(offline_hub: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    to = tmp_path / "ckpt"
    head = head_path(to, "ViT-B-32", "MNIST")
    head.parent.mkdir(parents=True)
    head.write_bytes(b"not a pickle")
    assert download(to, "--model", "ViT-B-32", "--datasets", "MNIST") == 0
    assert head.is_symlink() and load_classification_head(head).weight.shape == (3, 2)
    assert f"replaced the unreadable {head}" in capsys.readouterr().out


def test_copies_need_free_space_checked_first(offline_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-32", "--tasks", "8", "--copy") == 2
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and "17 copies" in err and "nothing was downloaded" in err
    assert not to.exists()


# ------------------------------------------------------------------------------------------- online, faked hub

class FakeHub:
    """huggingface_hub's HfApi.list_repo_tree and hf_hub_download over the fixture files, counting downloads."""

    def __init__(self, files: dict[str, bytes], remote: Path) -> None:
        self.files, self.downloads = files, []
        self.remote = make_hub_cache(remote, files)  # where the "hub" keeps its files
        self.listing_error: BaseException | None = None
        self.download_error: BaseException | None = None

    def list_repo_tree(self, api, repo_id: str, recursive: bool = False, **kwargs):
        from huggingface_hub.hf_api import RepoFile

        assert repo_id == "nik-dim/tall_masks" and recursive
        if self.listing_error is not None:
            raise self.listing_error
        for path, content in self.files.items():
            yield RepoFile(path=path, size=len(content), oid="0" * 40)

    def hf_hub_download(self, repo_id: str, filename: str, *, cache_dir: str, local_files_only: bool = False,
                        **kwargs) -> str:
        assert not local_files_only
        if self.download_error is not None:
            raise self.download_error
        self.downloads.append(filename)
        snapshot = make_hub_cache(Path(cache_dir), {filename: self.files[filename]})
        return str(snapshot / filename)


@pytest.fixture()
def online_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    import huggingface_hub

    fake = FakeHub(hub_files(), tmp_path / "remote")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree",
                        lambda api, repo_id, **kw: fake.list_repo_tree(api, repo_id, **kw))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    return fake


def test_online_download_fetches_only_the_needed_files_once(online_hub: FakeHub, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    to = tmp_path / "ckpt"
    assert download(to, "--model", "ViT-B-16", "--datasets", "MNIST", "DTD", "--copy") == 0
    assert sorted(online_hub.downloads) == sorted([
        "single_task/VIT-B-16/MNISTVal/nonlinear_zeroshot.pt", "single_task/VIT-B-16/MNISTVal/nonlinear_finetuned.pt",
        "single_task/VIT-B-16/DTDVal/nonlinear_finetuned.pt", "single_task/VIT-B-16/head_MNISTVal.pt",
        "single_task/VIT-B-16/head_DTDVal.pt"])
    out = capsys.readouterr().out
    assert "downloading 5 files (" in out and "5 downloaded (" in out
    (to / "ViT-B-16" / "head_DTDVal.pt").unlink()
    assert download(to, "--model", "ViT-B-16", "--datasets", "MNIST", "DTD", "--copy") == 0
    assert len(online_hub.downloads) == 5  # the missing head came from the cache
    assert "0 downloaded (0 B), 1 taken from the cache, 4 already in place" in capsys.readouterr().out
    assert (tmp_path / "hub" / REPO_FOLDER / "snapshots" / COMMIT).is_dir()


def test_not_enough_space_stops_before_any_download(online_hub: FakeHub, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    assert download(tmp_path / "ckpt", "--model", "ViT-B-32", "--tasks", "8") == 2
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and "17 downloads" in err and "HF_HUB_CACHE" in err
    assert online_hub.downloads == [] and not (tmp_path / "ckpt").exists()


def _network_error() -> BaseException:
    """What the HTTP client of this huggingface_hub raises when the host cannot be reached."""
    for module, name in (("httpx2", "ConnectError"), ("httpx", "ConnectError"), ("requests", "ConnectionError")):
        try:
            return getattr(__import__(module), name)("[Errno -3] Temporary failure in name resolution")
        except (ImportError, AttributeError):
            continue
    return ConnectionError("[Errno -3] Temporary failure in name resolution")


def test_network_failure_is_a_clear_error(online_hub: FakeHub, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    online_hub.listing_error = _network_error()
    assert download(tmp_path / "ckpt", "--model", "ViT-B-32", "--tasks", "8") == 2
    err = capsys.readouterr().err
    assert "the hub cannot be reached" in err and "HF_HUB_OFFLINE=1" in err and "Traceback" not in err


def test_download_errors_are_clear(online_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cases = [
        (LocalEntryNotFoundError("connection error, and the file is not cached"), "the hub cannot be reached"),
        (EntryNotFoundError("404"), "does not exist in the hub repository nik-dim/tall_masks"),
        (OSError(errno.ENOSPC, "No space left on device", "/cache/blobs/x.incomplete"), "the disk filled up"),
    ]
    for error, message in cases:
        online_hub.download_error = error
        assert download(tmp_path / "ckpt", "--model", "ViT-B-32", "--datasets", "MNIST") == 2
        err = capsys.readouterr().err
        assert message in err and "single_task/ViT-B-32/MNISTVal/nonlinear_zeroshot.pt" in err, err


def test_a_file_missing_on_the_hub_is_named(online_hub: FakeHub, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    del online_hub.files["single_task/ViT-B-32/head_GTSRBVal.pt"]
    assert download(tmp_path / "ckpt", "--model", "ViT-B-32", "--tasks", "8") == 2
    err = capsys.readouterr().err
    assert "single_task/ViT-B-32/head_GTSRBVal.pt" in err and "the hub repository nik-dim/tall_masks" in err
    assert online_hub.downloads == []
