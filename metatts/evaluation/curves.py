"""Adaptation curves: the query loss of fixed episodes after each step count of a grid.

The quick yardstick (teacher-forced, no synthesis): meta-validation during `metatts meta-train`, `metatts tasks`,
the demo and the equal-compute benchmark. Every method adapts the same way (``adapt.adapters.SGDAdapter`` from the
start ``adapt.start`` gives: the model's new-speaker slot, amortized when it has a reference encoder), a
meta-trained model with its learned rates and the multi-speaker baseline with one rate. ``metatts evaluate``
(``evaluation.harness``) adds synthesis and speaker metrics on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from metatts.adapt.adapters import SGDAdapter
from metatts.adapt.start import starting_params
from metatts.checkpoints import load_for_store, load_inner_lr
from metatts.episodes.collate import Collator, aligned_batch
from metatts.episodes.sampler import Episode
from metatts.meta.inner_loop import Rates, make_loss_fn
from metatts.meta.inner_lr import InnerLR
from metatts.model.acoustic import select_parameters
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.env import resolve_device


def step_grid(steps: Sequence[int]) -> list[int]:
    """A grid of inner-step counts as used everywhere: sorted, unique, all >= 0 (ValueError otherwise)."""
    grid = sorted(set(int(s) for s in steps))
    if not grid or grid[0] < 0:
        raise ValueError(f"a step grid must hold step counts >= 0, got {list(steps)}")
    return grid


@dataclass
class AdaptationCurve:
    """Query losses of fixed episodes after each step count of a grid (rows: episodes, columns: ``steps``)."""

    steps: list[int]
    speakers: list[str]  # speaker of each episode (row)
    mel: list[list[float]]  # query mel L1 (postnet output when the model has a postnet)
    total: list[list[float]]  # query FastSpeech 2 total (mel, duration, pitch, energy terms)

    def mean(self, metric: str = "mel") -> list[float]:
        rows = getattr(self, metric)
        return [sum(r[j] for r in rows) / len(rows) for j in range(len(self.steps))]

    def at(self, step: int, metric: str = "mel") -> float:
        """Mean over episodes after ``step`` inner steps."""
        return self.mean(metric)[self.steps.index(step)]

    def to_dict(self) -> dict:
        return {"steps": self.steps, "mean_mel": self.mean("mel"), "mean_total": self.mean("total"),
                "speakers": self.speakers, "mel": self.mel, "total": self.total}


def _as_lr(inner_lr: Rates | InnerLR, device: torch.device) -> Rates:
    if isinstance(inner_lr, InnerLR):
        inner_lr = inner_lr.rates()
    if isinstance(inner_lr, (list, tuple)):  # per-step rates
        return [_as_lr(rate, device) for rate in inner_lr]
    if isinstance(inner_lr, Mapping):
        return {n: a.detach().to(device) for n, a in inner_lr.items()}
    return float(inner_lr)


def adaptation_curve(model: nn.Module, inner_lr: Rates | InnerLR, episodes: Sequence[Episode],
                     collator: Collator, steps_grid: Sequence[int], groups: Sequence[str]) -> AdaptationCurve:
    """Adapt ``groups`` from each episode's start (``adapt.start``: the model's slot, plus its reference encoder's
    prediction from the support when it has one) with plain SGD (``inner_lr``: one float, or per-tensor rates such
    as a meta-trained ``InnerLR``, shared or per step) and record the query loss after each count in
    ``steps_grid``. Eval mode (no dropout), no graph kept; the model is left as it was."""
    grid = step_grid(steps_grid)
    device = next(model.parameters()).device
    lr = _as_lr(inner_lr, device)
    loss = FastSpeech2Loss()
    postnet = getattr(model, "postnet", None) is not None
    was_training = model.training
    model.eval()
    try:
        fast_names = set(select_parameters(model, groups))
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in fast_names}
        curve = AdaptationCurve(steps=grid, speakers=[], mel=[], total=[])
        for episode in episodes:
            support = aligned_batch(model, collator, episode.support, device)
            query = aligned_batch(model, collator, episode.query, device)
            fast0 = starting_params(model, groups, support, differentiable=False)
            adapter = SGDAdapter(make_loss_fn(model, frozen, (support,), lambda out, b=support: loss(out, b).total),
                                 fast0, lr)
            mel_row, total_row = [], []
            for target in grid:
                adapter.advance(target - adapter.steps)
                with torch.no_grad():
                    terms = loss(functional_call(model, {**frozen, **adapter.params()}, (query,)), query)
                mel_row.append(float(terms.postnet_mel if postnet else terms.mel))
                total_row.append(float(terms.total))
            curve.speakers.append(episode.speaker)
            curve.mel.append(mel_row)
            curve.total.append(total_row)
    finally:
        model.train(was_training)
    return curve


def checkpoint_curve(checkpoint: str | Path, episodes: Sequence[Episode], store, steps_grid: Sequence[int], *,
                     inner_lr: Rates | None = None, groups: Sequence[str] | None = None,
                     device: str = "cpu") -> AdaptationCurve:
    """:func:`adaptation_curve` of a checkpoint (``metatts train`` or ``meta-train``) on episodes of ``store``
    (a ``FeatureStore``). Defaults: the checkpoint's own inner rates (``load_inner_lr``) and speaker groups."""
    ev = load_for_store(checkpoint, store, resolve_device(device))
    lr = load_inner_lr(checkpoint) if inner_lr is None else inner_lr
    return adaptation_curve(ev.model, lr, episodes, ev.collator, steps_grid,
                            list(groups or ev.config.model.speaker_groups))
