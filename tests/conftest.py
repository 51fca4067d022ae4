"""Shared fixtures: the real speech sets in ../shared/data (skipped with the reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("METATTS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the real speech sets live in ../shared/data beside the repository (CI has them)")
    return path


@pytest.fixture(scope="session")
def vctk_mini() -> Path:
    return _shared("vctk-mini")


@pytest.fixture(scope="session")
def speechocean() -> Path:
    return _shared("speechocean762-adults")
