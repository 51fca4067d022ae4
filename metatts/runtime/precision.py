"""Numeric precision of a training run: which autocast it uses, and the loss scale that keeps fp16 gradients alive.

``train.precision`` is one of:

* ``fp32``: no autocast.
* ``bf16``: autocast to bfloat16. Its exponent range is float32's, so gradients neither underflow nor overflow and
  no loss scaling is needed, in the outer backward or in the inner loop's ``autograd.grad``.
* ``fp16``: autocast to float16 (5 exponent bits: values below ~6e-8 flush to zero, above 65504 overflow). The
  outer backward is scaled by a ``GradScaler``; the inner loop must be scaled too, or its gradients -- which the
  outer loop differentiates through -- silently underflow. :func:`inner_loss_scale` hands the scaler's current
  scale S to :func:`metatts.meta.inner_loop.adapt`, which differentiates S × L_support and divides by S. If S is too
  large for the inner loop the task loss turns non-finite; the outer step then has non-finite gradients and the
  scaler skips it and backs off, exactly as for an overflow of the outer backward.
* ``auto``: bf16 on a CUDA GPU with native bfloat16 (compute capability 8.0 and later: A100, H100, RTX 30xx on),
  fp16 on older CUDA GPUs (V100, T4: fast float16 tensor cores, no bfloat16), fp32 on the CPU (CPU autocast is
  rarely faster for this model and only changes the numbers).

Explicit ``bf16`` / ``fp16`` are honoured on the CPU too (slowly): that is how the tests check the mixed-precision
paths without a GPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from metatts.config.schema import PRECISIONS
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device | str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``train.precision`` = ``name`` on ``device`` (``auto`` decided here)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    return "fp32"


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for ``fp32``)."""
    if precision == "fp32":
        return nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is not resolved: call resolve_precision first")
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """The outer-loss scaler: enabled for ``fp16`` only (a disabled scaler passes everything through unchanged, so
    callers use it unconditionally)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def inner_loss_scale(scaler: torch.amp.GradScaler) -> float | None:
    """The scale for the inner loop's support loss: the outer scaler's current one under fp16, else None (no
    scaling). One host read per call (``get_scale``); call it once per meta-step, not per inner step."""
    return scaler.get_scale() if scaler.is_enabled() else None
