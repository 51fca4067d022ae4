"""Shared fixtures: the real speech sets in ../shared/data (skipped with the reason when absent), one torch thread,
and the tiny evaluation runs several modules read (session-scoped here, so they are built once per test run)."""

from __future__ import annotations

import os
from contextlib import contextmanager
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


@contextmanager
def _threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """The cores are shared with other jobs; one torch thread keeps training tests quick and polite. A module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")`` (module scope: its fixtures that train run under it)."""
    with _threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """``tiny.evaluation_runs``: a tiny store, baseline, meta checkpoint and task suite (test_evaluate, test_bench)."""
    from tiny import evaluation_runs

    with _threads(1):
        return evaluation_runs(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="session")
def evaluation(tiny_runs):
    """One real `metatts evaluate` of every method on ``tiny_runs`` (HiFi-GAN, every scorer): (result, out folder)."""
    pytest.importorskip("resemblyzer", reason="speaker similarity and EER need Resemblyzer (the eval extra)")
    from metatts.evaluation.harness import run_evaluation
    from tiny import EVAL_STEPS, QUIET

    out = tiny_runs["root"] / "eval"
    with _threads(1):
        results = run_evaluation(tiny_runs["meta"], tiny_runs["base"], tiny_runs["suite"], out, steps=EVAL_STEPS,
                                 samples=1, threads=1, **QUIET)
    return results, out
