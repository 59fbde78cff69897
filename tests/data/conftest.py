"""Shared fixtures: all 20 tiny datasets written once per session, and torchvision's md5 checks relaxed."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchvision import transforms as T

from tests.support.data_fixtures import FixtureInfo, make_all_fixtures, patch_torchvision_integrity


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, FixtureInfo]]:
    root = tmp_path_factory.mktemp("data_location")
    return root, make_all_fixtures(root)


@pytest.fixture(scope="session")
def data_location(fixture_root: tuple[Path, dict[str, FixtureInfo]]) -> Path:
    return fixture_root[0]


@pytest.fixture(scope="session")
def fixture_info(fixture_root: tuple[Path, dict[str, FixtureInfo]]) -> dict[str, FixtureInfo]:
    return fixture_root[1]


@pytest.fixture(autouse=True)
def _fixture_files_pass_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    patch_torchvision_integrity(monkeypatch)


@pytest.fixture(scope="session")
def preprocess() -> T.Compose:
    return T.Compose([T.Resize((16, 16)), T.ToTensor()])
