"""FLOPs of a training step and the machine's matmul roof, so benchmarks report achieved FLOP/s against a ceiling.

``count_flops(step)`` runs ``step`` once under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matmuls, convolutions and attention of every aten op dispatched -- forward, backward, and the double backward of a
second-order meta-step alike (``autograd.grad(create_graph=True)`` dispatches ordinary aten ops). Elementwise ops,
normalizations and the aligner's CPU-side MAS are not counted: the count is the matmul-class work, the part a
matmul roof bounds. ``matmul_roof`` measures that roof: FLOP/s of a large square matmul on the same device, dtype
and threads. ``achieved / roof`` is then the step's efficiency in the units the hardware is rated in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every FLOP is attributed to "Global" only. The tracker's
    backward hooks reject ``torch.autograd.grad`` on leaf tensors ("A leaf node was passed to
    _will_engine_execute_node ..."), which is exactly what the inner loop does to the fast weights."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def count_flops(step: Callable[[], object]) -> int:
    """Matmul-class FLOPs of one call of ``step`` (it runs for real: parameters move if it steps an optimizer)."""
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    with counter:
        step()
    return int(counter.get_total_flops())


@dataclass
class Roof:
    """A measured matmul ceiling: ``flops_per_s`` of ``size`` x ``size`` matmuls in ``dtype`` on ``device``."""

    flops_per_s: float
    size: int
    dtype: str
    device: str
    threads: int
    tf32: bool  # whether CUDA float32 matmuls may use TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roof(device: torch.device | str, dtype: torch.dtype = torch.float32, size: int = 4096,
                seconds: float = 0.5) -> Roof:
    """Best FLOP/s of ``size``² matmuls over about ``seconds`` (after a warm-up call), 2·size³ FLOPs each."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        a @ b
        _sync(device)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, 2 * size**3 / elapsed)
    return Roof(flops_per_s=best, size=size, dtype=str(dtype).removeprefix("torch."), device=str(device),
                threads=torch.get_num_threads(),
                tf32=bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32))


def throughput(flops: int, seconds: float, roof: Roof) -> dict:
    """What a benchmark reports for a step of ``flops`` taking ``seconds``: achieved FLOP/s beside the roof."""
    achieved = flops / seconds
    return {"flops_per_step": flops, "achieved_flops_per_s": achieved, "roof_flops_per_s": roof.flops_per_s,
            "fraction_of_roof": achieved / roof.flops_per_s, "roof": {**roof.__dict__}}
