"""Shared fixtures. Real data: ``$SONOFED_DATA`` or ``<repo>/../shared/data``; tests marked
``realdata`` are skipped when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("SONOFED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = _data_root()
    if root.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {root} (set SONOFED_DATA)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder holding ``busi/``, ``bus_bra/`` and ``breast_lesions_usg/``."""
    return _data_root()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory):
    """Phantom sites, registries, a locked set and a tiny trained bundle (built once)."""
    from tests._pipeline import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("world"))
