"""benchmarks/gpu.py: without CUDA it skips in one line and exits 0; its GPU code path runs on the CPU as a dry run
(tiny sizes), so the script a CUDA machine runs is the one tested here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_skips_in_one_line(gpu_bench, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.main(["--out", str(tmp_path / "results")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "skipped" in lines[0] and "CUDA" in lines[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow  # ~60 s on a loaded 2-core box: every stage once on the tiny model
def test_the_gpu_code_path_runs_on_the_cpu(gpu_bench, tmp_path, one_thread):
    # fp32: CPU half-precision kernels are slow, and test_precision.py covers the fp16 logic these steps call.
    assert gpu_bench.main(["--device", "cpu", "--presets", "tiny", "--precisions", "fp32", "--tasks", "1",
                           "--shots", "2", "--queries", "2", "--inner-steps", "1", "--warmup", "0", "--repeats", "1",
                           "--max-shots", "4", "--roof-size", "64", "--roof-seconds", "0.01", "--train-steps", "2",
                           "--train-batch", "4", "--meta-steps", "1", "--store-speakers", "4",
                           "--budget-s", "100000", "--compile-backend", "eager", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu-*.json")
    result = json.loads(path.read_text())
    steps = result["steps"]["tiny/fp32"]
    assert all(steps[v]["steps_per_s"] > 0 and steps[v]["fraction_of_roof"] > 0
               for v in ("plain", "first_order", "second_order"))
    # the double backward's matmuls are counted: second order does more work than first order
    assert steps["second_order"]["flops_per_step"] > steps["first_order"]["flops_per_step"]
    assert steps["loss_scale_after"] is None  # fp32: no GradScaler
    # torch.compile's row (dynamo's eager backend here: tracing without code generation, seconds not minutes)
    assert steps["plain_compiled"]["steps_per_s"] > 0 and steps["plain_compiled"]["over_eager"] > 0
    assert result["memory"]["tiny"]["largest_support"]["shots"] == 4  # 2, then 4 = --max-shots
    runs = result["runs"]
    assert runs["train"]["steps"] == 2 and runs["meta_train"]["steps"] == 1 and runs["meta_train"]["skipped"] == 0
