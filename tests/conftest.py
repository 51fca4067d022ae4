"""Shared fixtures: the real speech sets in ../shared/data (skipped with the reason when absent), one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def one_thread():
    """The cores are shared with other jobs; one torch thread keeps training tests quick and polite. A module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")`` (module scope: its fixtures that train run under it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
