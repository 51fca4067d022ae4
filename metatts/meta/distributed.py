"""Meta-batches split over ``torchrun`` processes, without DistributedDataParallel.

DDP all-reduces inside hooks fired by ``loss.backward()`` on its wrapped module's parameters; the inner loop
differentiates with ``torch.autograd.grad`` and runs the model through ``functional_call``, so those hooks either
do not fire or fire on the wrong tensors. Instead each rank runs its share of the tasks, calls ``backward`` on its
outer loss, and then :func:`all_reduce_gradients` averages ``.grad`` explicitly before the optimizer step.

Scaling -- the meta-gradient must be that of the mean query loss over the *whole* meta-batch of B tasks:

* equal shares (B divisible by the world size W, :func:`shard` gives each rank B/W tasks): each rank backpropagates
  the **mean over its own tasks**, and ``all_reduce_gradients(average=True)`` divides the sum by W:
  (1/W) Σ_r (W/B) Σ_{t∈r} ∇L_t = (1/B) Σ_t ∇L_t.
* unequal shares: each rank backpropagates **Σ_{t∈r} L_t / B** (the global count) and calls
  ``all_reduce_gradients(average=False)`` (a plain sum).

Rank 0 logs and saves (:func:`is_main`); every rank must call the collectives in the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process sits. ``device`` is ``cuda:LOCAL_RANK`` under NCCL, else CPU."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment).

    Without WORLD_SIZE this is a single process and nothing is initialized, so the same script runs with plain
    ``python``. Backend: NCCL when CUDA is available (each rank takes ``cuda:LOCAL_RANK``), else gloo.
    Calling it again once initialized only reports the context.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if "WORLD_SIZE" not in os.environ and not _active():
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(rank=0, world_size=1, local_rank=0, device=device, distributed=False)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        # Set before init so NCCL binds each rank to its own GPU instead of piling all ranks onto cuda:0.
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not _active():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank=rank(), world_size=world(), local_rank=local_rank, device=device, distributed=True)


def shutdown() -> None:
    if _active():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank_: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's tasks: every W-th item from position ``rank`` (deterministic, no communication)."""
    r = rank() if rank_ is None else rank_
    w = world() if world_size is None else world_size
    return list(items[r::w])


def _tensors(module_or_params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(module_or_params, nn.Module):
        # Buffers too: running statistics and the like must match, or ranks compute different losses.
        return list(module_or_params.parameters()) + list(module_or_params.buffers())
    if isinstance(module_or_params, Mapping):
        return list(module_or_params.values())
    return list(module_or_params)


def _by_dtype_device(tensors: list[Tensor]) -> dict[tuple, list[int]]:
    # One flat buffer per (dtype, device): a collective per tensor costs a round-trip each (hundreds per model).
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return groups


@torch.no_grad()
def broadcast_parameters(module_or_params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor], src: int = 0) -> None:
    """Overwrite every rank's tensors with rank ``src``'s, in place (call once after building the model)."""
    if not _active():
        return
    tensors = _tensors(module_or_params)
    for indices in _by_dtype_device(tensors).values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices])
        dist.broadcast(flat, src=src)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset:offset + n].view_as(tensors[i]))
            offset += n


@torch.no_grad()
def all_reduce_gradients(params: nn.Module | Mapping[str, Tensor] | Iterable[Tensor], world_size: int | None = None,
                         *, average: bool = True) -> None:
    """Sum ``.grad`` over ranks, then divide by ``world_size`` when ``average`` (see the module docstring).

    A parameter whose gradient is None on some ranks but not others (its tasks did not touch it there) gets zeros
    on those ranks, so every rank ends with the same gradient; one that is None on every rank stays None, so
    optimizers still skip it exactly as in a single process.
    """
    if not _active():
        return
    w = world() if world_size is None else world_size
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    tensors = [p for p in (params.values() if isinstance(params, Mapping) else params) if p.requires_grad]
    if not tensors:
        return
    # A tiny collective first, so all ranks agree on which gradients exist and flatten identical layouts.
    has_grad = torch.tensor([p.grad is not None for p in tensors], dtype=torch.int32,
                            device=tensors[0].device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    present = [p for p, h in zip(tensors, has_grad.tolist()) if h]
    for p in present:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for indices in _by_dtype_device(present).values():
        grads = [present[i].grad for i in indices]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if average:
            flat /= w
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def all_reduce_mean(value: Tensor | float) -> float:
    """Mean of a scalar over ranks (for logging losses); the value itself when not distributed."""
    if not _active():
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(1).clone()
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world()
