"""The MAML inner loop: fast weights in, adapted fast weights out.

    φ_{i+1} = φ_i − α ⊙ (∇φ L_support(φ_i) + 2λ (φ_i − φ_0)),   i = 0 … k−1

``loss_fn(fast)`` computes the support loss with the fast weights plugged in; everything else the loss uses (the
shared parameters θ, the batch) is closed over by ``loss_fn``, so this function never sees a model. Build it with
:func:`make_loss_fn`, i.e. ``functional_call(model, {**frozen, **fast}, args)``.

Three modes, chosen by who consumes the result:

* second order (meta-training, default): inner gradients are taken with ``create_graph=True``, so the outer loss
  back-propagates through every step into θ, φ_0 and the learning rates α (exact MAML / Meta-SGD meta-gradient).
  Memory grows linearly with ``steps``: every step's forward activations *and* its backward graph stay alive
  until the outer backward -- about twice one forward's saved tensors per step (``tests/test_inner_loop.py``
  counts them; on a 3-layer 256-wide MLP over 8192 rows peak RSS grows ~110 MB per step, while first order at
  k = 8 peaks at ~230 MB in all). Activation checkpointing does not help: the double-backward graph holds the
  recomputed activations anyway, and non-reentrant ``torch.utils.checkpoint`` around each step's loss measured
  ~15 % *more* peak memory. When a second-order episode does not fit, use first order (or fewer steps).
* first order (``first_order=True``, FOMAML): each inner gradient is taken on a detached copy of φ_i and is a
  constant for the outer loss. The update itself stays on the tape, so the outer gradient still reaches φ_0
  (∂φ_k/∂φ_0 = I), α (∂φ_k/∂α = −Σ g_i) and θ through the query forward. Memory is one step's activations,
  whatever ``steps`` is.
* no graph (``differentiable=False``, test-time adaptation): updates run under ``torch.no_grad`` and the result
  is detached; only each step's own backward is built. Use :func:`fine_tune` for Adam at test time.

Per-step rates (MAML++'s LSLR): ``lr`` may be a list, one rate (float or per fast weight) for each step; step i uses
``lr[i]``, and steps past the list's end reuse its last entry -- test-time adaptation runs more steps than
meta-training learned rates for, and the last learned rate is the one trained for the adapted end of the trajectory.
``start`` is the index of the first step, so a caller that adapts in pieces (``adapt.adapters.SGDAdapter``) picks
up the schedule where it left off.

The L2 term pulls φ toward its initialization (L2-SP); its gradient is added analytically rather than through
autograd because it is elementwise and exact. φ_0 in the anchor is the *attached* initialization, so the
meta-gradient of an anchored episode is the true derivative (tested against finite differences).

Loss scaling (fp16 autocast, ``loss_scale`` = S): each inner gradient is taken of S × L_support and divided by S,
so the half-precision backward carries S times larger values and small gradients do not flush to zero. The
division is on the tape, so a second-order outer backward through it is the true derivative (and runs at the outer
loss's own scale). For a power of two S the result equals the unscaled one bit for bit in float32. A scale too large
for the inner backward gives non-finite fast weights, hence a non-finite outer loss: the caller's ``GradScaler``
skips that step and backs off (``metatts.runtime.precision``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[dict[str, Tensor]], Tensor]
Rate = Union[float, Mapping[str, Tensor]]  # one float, or per fast weight a tensor broadcastable to it
Rates = Union[Rate, Sequence[Rate]]  # a rate for every step, or a list of per-step rates (see "Per-step rates")


@dataclass
class InnerResult:
    """Adapted fast weights and the support loss seen before each step.

    ``losses[i]`` is L_support(φ_i) for i = 0 … steps−1, detached (0-dim tensors, so logging does not force a
    device sync each step; call ``.item()`` when you print). The loss at φ_k is not computed (it would cost a
    forward nobody asked for).
    """

    fast: dict[str, Tensor]
    losses: list[Tensor]
    path: list[dict[str, Tensor]] | None = None  # φ_1 … φ_k (φ_k is ``fast``) when ``keep_path``; None otherwise
    start: dict[str, Tensor] | None = None  # φ_start as adapted (set by ``meta.step.support_adapt``)


def make_loss_fn(model: nn.Module, frozen: Mapping[str, Tensor] | None, args: tuple,
                 loss_from_output: Callable[[Any], Tensor], kwargs: Mapping[str, Any] | None = None) -> LossFn:
    """``fast -> loss_from_output(model(*args, **kwargs))`` with ``{**frozen, **fast}`` swapped in for the forward.

    Parameters in neither dict are the module's own, so passing ``frozen=None`` lets the outer gradient reach the
    model's parameters directly (what meta-training wants). Pass ``frozen`` to evaluate at other values of θ
    (e.g. detached copies at test time, so the inner backward stops at φ).
    """
    base = dict(frozen or {})
    kw = dict(kwargs or {})

    def loss_fn(fast: dict[str, Tensor]) -> Tensor:
        return loss_from_output(functional_call(model, {**base, **fast}, args, kw))

    return loss_fn


def rate_at(lr: Rates, step: int) -> Rate:
    """The rate of inner step ``step`` (0-based): ``lr`` itself, or a per-step list's entry ``step``, its last entry
    for steps past its end."""
    if isinstance(lr, (list, tuple)):
        if not lr:
            raise ValueError("a per-step rate list must hold at least one rate")
        return lr[min(step, len(lr) - 1)]
    return lr


def _per_name_lr(lr: Rate, fast: Mapping[str, Tensor]) -> dict[str, Tensor | float]:
    if not isinstance(lr, Mapping):
        return {name: float(lr) for name in fast}
    missing, extra = set(fast) - set(lr), set(lr) - set(fast)
    if missing or extra:
        raise KeyError(f"learning rates must name exactly the fast weights; missing {sorted(missing)}, "
                       f"unexpected {sorted(extra)}")
    return dict(lr)


def _grads(loss: Tensor, params: list[Tensor], create_graph: bool) -> list[Tensor]:
    # A fast weight the loss does not use gets a zero gradient (not None): the update then leaves it unchanged
    # but keeps it on the tape, so the outer gradient still reaches φ_0 for it.
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def adapt(loss_fn: LossFn, fast: Mapping[str, Tensor], steps: int, lr: Rates, *,
          first_order: bool = False, l2_anchor: float = 0.0, differentiable: bool = True,
          anchor: Mapping[str, Tensor] | None = None, loss_scale: float | Tensor | None = None, start: int = 0,
          keep_path: bool = False) -> InnerResult:
    """``steps`` SGD steps on ``loss_fn`` from ``fast``; see the module docstring for the three modes.

    ``lr`` is one float or, per fast weight, a tensor broadcastable to it (a scalar per tensor or one value per
    element -- :class:`metatts.meta.inner_lr.InnerLR` builds these), or a list of those, one per step (see "Per-step
    rates" in the module docstring; ``start`` is the index of the first step). The input tensors are never modified.
    ``anchor`` is the φ_0 the L2 term pulls toward (default: ``fast``); a caller that adapts in pieces passes the
    first piece's start (no graph only: a second-order anchor must be the attached initialization).
    ``loss_scale``: see "Loss scaling" in the module docstring (None: unscaled). ``keep_path``: also return every
    φ_i (``InnerResult.path``), for a loss on each step's weights (MAML++'s multi-step loss).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if l2_anchor < 0:
        raise ValueError(f"l2_anchor must be >= 0, got {l2_anchor}")
    if loss_scale is not None and not isinstance(loss_scale, Tensor) and not loss_scale > 0:
        raise ValueError(f"loss_scale must be positive, got {loss_scale}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    names = list(fast)
    alphas = [_per_name_lr(rate_at(lr, start + i), fast) for i in range(steps)]
    if not differentiable:
        alphas = [{n: a.detach() if isinstance(a, Tensor) else a for n, a in alpha.items()} for alpha in alphas]
        phi = {n: t.detach() for n, t in fast.items()}
    else:
        # autograd.grad needs the inputs on the tape; a fast weight handed in without requires_grad becomes a leaf.
        phi = {n: t if t.requires_grad else t.detach().requires_grad_() for n, t in fast.items()}
    if anchor is not None and differentiable:
        raise ValueError("a separate anchor is for no-graph adaptation (differentiable=False)")
    anchor = dict(phi) if anchor is None else {n: anchor[n].detach() for n in names}
    second_order = differentiable and not first_order
    losses: list[Tensor] = []
    path: list[dict[str, Tensor]] | None = [] if keep_path else None
    for alpha in alphas:
        with torch.enable_grad():  # test-time callers may sit inside no_grad; the inner gradient still needs a tape
            # First order / no graph: differentiate a detached copy, so the gradient is a constant and this step's
            # graph is freed by autograd.grad. Second order: differentiate φ_i itself and keep the graph.
            inputs = phi if second_order else {n: t.detach().requires_grad_() for n, t in phi.items()}
            loss = loss_fn(inputs)
            if loss_scale is None:
                grads = _grads(loss, [inputs[n] for n in names], create_graph=second_order)
            else:
                scaled = _grads(loss * loss_scale, [inputs[n] for n in names], create_graph=second_order)
                grads = [g / loss_scale for g in scaled]
        losses.append(loss.detach())
        with torch.set_grad_enabled(differentiable):
            updated = {}
            for n, g in zip(names, grads):
                if l2_anchor:
                    # First order treats the whole step direction as a constant, the pull included.
                    pull = phi[n] - anchor[n]
                    g = g + 2.0 * l2_anchor * (pull if second_order else pull.detach())
                updated[n] = phi[n] - alpha[n] * g
            phi = updated
        if path is not None:
            path.append(phi)
    return InnerResult(fast=phi, losses=losses, path=path)


class FineTuner:
    """A stateful optimizer on the fast weights (no outer loop, no graph kept) whose ``run(k)`` calls add up: its
    moments are kept between calls, so k steps in pieces are k steps. :func:`fine_tune` is one ``run``.

    ``optimizer="adam"`` is for adapting far past the meta-trained step count (its per-element step size copes
    with gradients of very different scales across φ); ``"sgd"`` equals ``adapt(..., differentiable=False)``.
    Note that Adam's step size is ~``lr`` per element regardless of the gradient's scale, so the meta-learned
    inner SGD learning rates do not transfer; pick ``lr`` for Adam separately.
    """

    def __init__(self, loss_fn: LossFn, fast: Mapping[str, Tensor], lr: float, *, optimizer: str = "adam",
                 l2_anchor: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.loss_fn, self.l2_anchor = loss_fn, l2_anchor
        self.anchor = {n: t.detach().clone() for n, t in fast.items()}
        self.phi = {n: t.detach().clone().requires_grad_() for n, t in fast.items()}
        params = list(self.phi.values())
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
        else:
            self.optimizer = torch.optim.SGD(params, lr=lr)

    def run(self, steps: int) -> list[Tensor]:
        """``steps`` more optimizer steps; returns the loss before each."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        params = list(self.phi.values())
        losses: list[Tensor] = []
        for _ in range(steps):
            with torch.enable_grad():
                loss = self.loss_fn(self.phi)
                grads = _grads(loss, params, create_graph=False)
            losses.append(loss.detach())
            with torch.no_grad():
                for n, p, g in zip(self.phi, params, grads):
                    p.grad = g + 2.0 * self.l2_anchor * (p - self.anchor[n]) if self.l2_anchor else g
            self.optimizer.step()
        return losses

    @property
    def fast(self) -> dict[str, Tensor]:
        return {n: t.detach() for n, t in self.phi.items()}


def fine_tune(loss_fn: LossFn, fast: Mapping[str, Tensor], steps: int, lr: float, *, optimizer: str = "adam",
              l2_anchor: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> InnerResult:
    """Test-time adaptation with a stateful optimizer: ``steps`` steps of a fresh :class:`FineTuner`."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    tuner = FineTuner(loss_fn, fast, lr, optimizer=optimizer, l2_anchor=l2_anchor, betas=betas, eps=eps)
    losses = tuner.run(steps)
    return InnerResult(fast=tuner.fast, losses=losses)
