"""The one way to adapt fast weights at test time, step by step along a grid.

    adapter = make_adapter("sgd", loss_fn, fast0, lr)      # or "adam"
    adapter.advance(5); phi5 = adapter.params()           # 5 steps
    adapter.advance(5); phi10 = adapter.params()          # 10 steps: pieces add up to one run of 10

``SGDAdapter`` is ``inner_loop.adapt(..., differentiable=False)`` (the meta-trained inner loop: per-tensor or
per-element rates, shared or per step, as a meta checkpoint learned them); ``AdamAdapter`` is
``inner_loop.FineTuner`` (what ``fine_tune`` runs), whose moments are kept between ``advance`` calls. ``metatts
adapt`` (``adapt_voice``), the adaptation curves, the evaluation harness and the API all adapt through these, so a
step means the same thing everywhere. Every adapter records the support loss before each step it took (``losses``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import Tensor

from metatts.meta.inner_loop import FineTuner, LossFn, Rates, adapt

OPTIMIZERS = ("sgd", "adam")


class Adapter(Protocol):
    steps: int  # steps taken so far
    losses: list[Tensor]  # support loss before each step taken (detached)

    def advance(self, steps: int) -> None: ...

    def params(self) -> dict[str, Tensor]: ...


class SGDAdapter:
    """Plain SGD with the inner loop's rates (one float, or a tensor per fast weight, or a per-step list of those:
    step i takes entry i, steps past the list's end its last); stateless, so it advances in pieces, each piece
    starting the rate schedule at the steps taken so far. The L2 pull (``l2_anchor``) is always toward ``fast0``,
    however the steps are split."""

    def __init__(self, loss_fn: LossFn, fast0: Mapping[str, Tensor], lr: Rates, l2_anchor: float = 0.0):
        self.loss_fn, self.lr, self.l2_anchor = loss_fn, lr, l2_anchor
        self.fast0 = {n: t.detach() for n, t in fast0.items()}
        self.fast = dict(self.fast0)
        self.steps, self.losses = 0, []

    def advance(self, steps: int) -> None:
        if steps:
            result = adapt(self.loss_fn, self.fast, steps, self.lr, l2_anchor=self.l2_anchor, differentiable=False,
                           anchor=self.fast0 if self.l2_anchor else None, start=self.steps)
            self.fast = result.fast
            self.losses.extend(result.losses)
            self.steps += steps

    def params(self) -> dict[str, Tensor]:
        return self.fast


class AdamAdapter:
    """Adam on the fast weights (``inner_loop.FineTuner``), its moments kept across ``advance`` calls."""

    def __init__(self, loss_fn: LossFn, fast0: Mapping[str, Tensor], lr: float, l2_anchor: float = 0.0):
        self.tuner = FineTuner(loss_fn, fast0, float(lr), optimizer="adam", l2_anchor=l2_anchor)
        self.steps, self.losses = 0, []

    def advance(self, steps: int) -> None:
        self.losses.extend(self.tuner.run(steps))
        self.steps += steps

    def params(self) -> dict[str, Tensor]:
        return self.tuner.fast


def make_adapter(optimizer: str, loss_fn: LossFn, fast0: Mapping[str, Tensor], lr, *,
                 l2_anchor: float = 0.0) -> Adapter:
    """The adapter of an optimizer name (``OPTIMIZERS``); Adam takes one float ``lr``."""
    if optimizer == "sgd":
        return SGDAdapter(loss_fn, fast0, lr, l2_anchor)
    if optimizer == "adam":
        return AdamAdapter(loss_fn, fast0, float(lr), l2_anchor)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
