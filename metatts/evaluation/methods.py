"""The adaptation methods ``metatts evaluate`` compares. A method is one class registered here with ``@method``:
which checkpoint it starts from, and the ``Adapter`` (``metatts.adapt.adapters``) that moves its parameters along
the step grid from one episode's support clips. All adapt from the new-speaker slot; the query is always routed to
the slot.

- ``meta``: the meta-trained checkpoint's speaker group (``model.speaker_groups``) with plain SGD at its learned
  Meta-SGD rates, eval mode, no graph -- the start, loss and rates of ``metatts adapt`` (``adapt_voice``; the start
  is amortized when the checkpoint has a reference encoder), on the store's features of the support clips instead
  of re-extracted files.
- ``baseline``: the multi-speaker (``metatts train``) checkpoint, the same group and SGD, lr = its config's
  ``meta.inner_lr`` unless ``baseline_lr`` is given (Meta-TTS's baseline).
- ``full``: the baseline fine-tuning every parameter with Adam (``full_lr``), eval mode.
- ``none``: the baseline's slot without adaptation (flat: evaluated once per episode, repeated over the grid).
- ``dvector``: the closed-form d-vector encoder (``evaluation.dvector``); flat too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from metatts.adapt.adapters import Adapter, AdamAdapter, SGDAdapter
from metatts.adapt.fast import length_buckets, resolve_lr, support_loss_fn
from metatts.adapt.start import starting_params
from metatts.checkpoints import StoreModel
from metatts.episodes.collate import aligned_batch
from metatts.episodes.sampler import Episode
from metatts.evaluation.dvector import DvectorModel, fit_dvector_model
from metatts.evaluation.metrics import mean_embedding
from metatts.evaluation.real_audio import RealAudio
from metatts.model.acoustic import select_parameters
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss

FULL_LR = 1e-4  # Adam's step for fine-tuning every parameter (Adam's step is ~lr per element)


@dataclass
class EvalContext:
    """What every method may read: the loaded checkpoints and the run's settings."""

    models: dict[str, StoreModel]  # "meta" / "baseline" -> loaded for the suite's store
    groups: list[str]  # the speaker groups the SGD methods adapt
    device: torch.device
    real: RealAudio
    encoder: object  # metrics.SpeakerEncoder
    splits: object  # corpus.splits.SpeakerSplits of the store
    shots: int
    queries: int
    out_dir: Path
    baseline_lr: float | None = None
    full_lr: float = FULL_LR
    dvector_utterances: int | None = None
    log: object = print


class FixedParams:
    """The ``Adapter`` of a method without a gradient step: its parameters, whatever the step count."""

    def __init__(self, params: dict[str, Tensor]):
        self.fixed, self.steps, self.losses = params, 0, []

    def advance(self, steps: int) -> None:
        self.steps += steps

    def params(self) -> dict[str, Tensor]:
        return self.fixed


class Method:
    """One way of getting a new speaker's parameters. Subclasses set the class attributes and ``adapter``."""

    name: ClassVar[str]
    checkpoint: ClassVar[str] = "baseline"  # which checkpoint it starts from: "meta" or "baseline"
    flat: ClassVar[bool] = False  # no gradient step: evaluated once per episode, repeated over the grid
    measures: ClassVar[str] = "aligner on the support + SGD/Adam steps to the largest step count"

    def __init__(self, context: EvalContext):
        self.context = context
        self.model = context.models[self.checkpoint]

    def adapter(self, episode: Episode) -> Adapter:
        raise NotImplementedError

    def settings(self) -> dict:
        """What results.json records of the method's settings (merged into ``settings``)."""
        return {}

    def compute_note(self, record: dict) -> dict:
        """Additions to the method's compute record (``results["compute"][name]``)."""
        return {}

    # --- helpers shared by the gradient methods
    def _support(self, episode: Episode) -> list[Batch]:
        """The support clips as ``metatts adapt`` batches them: length buckets with the aligner's durations."""
        ev, ids = self.model, list(episode.support)
        frames = [ev.collator.store.by_id[i].frames for i in ids]
        return [aligned_batch(ev.model, ev.collator, [ids[j] for j in bucket], self.context.device)
                for bucket in length_buckets(frames)]

    def _support_loss(self, support: list[Batch], fast_names: set[str]):
        """The support loss of ``metatts adapt``: the FastSpeech 2 terms over the buckets of ``_support``."""
        frozen = {n: p.detach() for n, p in self.model.model.named_parameters() if n not in fast_names}
        return support_loss_fn(self.model.model, frozen, support, FastSpeech2Loss())

    def _slot(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in select_parameters(self.model.model, self.context.groups).items()}


REGISTRY: dict[str, type[Method]] = {}


def method(cls: type[Method]) -> type[Method]:
    """Register a method class under its ``name`` (the order of registration is the order of the report)."""
    REGISTRY[cls.name] = cls
    return cls


@method
class MetaMethod(Method):
    name, checkpoint = "meta", "meta"

    def adapter(self, episode: Episode) -> Adapter:
        support = self._support(episode)
        fast0 = starting_params(self.model.model, self.context.groups, support, differentiable=False)
        rate, _ = resolve_lr(self.model.path, fast0, None, "sgd", self.model.config.meta.inner_lr)
        return SGDAdapter(self._support_loss(support, set(fast0)), fast0, rate)

    def settings(self) -> dict:
        return {"meta_lr": "learned Meta-SGD rates, per step when meta-training learned them (load_inner_lr)"}


@method
class BaselineMethod(Method):
    name = "baseline"

    @property
    def rate(self) -> float:
        given = self.context.baseline_lr
        return float(given) if given is not None else float(self.model.config.meta.inner_lr)

    def adapter(self, episode: Episode) -> Adapter:
        fast0 = self._slot()
        return SGDAdapter(self._support_loss(self._support(episode), set(fast0)), fast0, self.rate)

    def settings(self) -> dict:
        return {"baseline_lr": self.rate}


@method
class FullMethod(Method):
    name = "full"

    def adapter(self, episode: Episode) -> Adapter:
        fast0 = {n: p.detach() for n, p in self.model.model.named_parameters()}
        return AdamAdapter(self._support_loss(self._support(episode), set(fast0)), fast0, self.context.full_lr)

    def settings(self) -> dict:
        return {"full_lr": self.context.full_lr, "full_optimizer": "adam"}


@method
class NoneMethod(Method):
    name, flat, measures = "none", True, "nothing (the slot as trained)"

    def adapter(self, episode: Episode) -> Adapter:
        return FixedParams({})


@method
class DvectorMethod(Method):
    name, flat, measures = "dvector", True, "Resemblyzer d-vectors of the support clips + the projection"

    def __init__(self, context: EvalContext):
        super().__init__(context)
        self.fitted: DvectorModel = fit_dvector_model(
            self.model, context.groups, context.real, context.splits, shots=context.shots, queries=context.queries,
            device=context.device, cache=context.out_dir / "dvector_projection.safetensors",
            max_utterances=context.dvector_utterances, log=context.log)

    def adapter(self, episode: Episode) -> Adapter:
        real, rate = self.context.real, self.model.config.audio.sample_rate
        waves = [real.wave(u, keep=False) for u in episode.support]
        dvec = mean_embedding(self.context.encoder.embed_many(waves, rate, on_error="nan"))
        return FixedParams(self.fitted.params(dvec, self.context.device))

    def compute_note(self, record: dict) -> dict:
        fit = float(self.fitted.info["fit_seconds"])
        return {"fit_seconds": fit, "seconds": None if record["seconds"] is None else record["seconds"] + fit,
                "note": "baseline training plus the closed-form ridge fit (fit_seconds: d-vectors of the training "
                        "speakers, unless cached, and the λ search); no gradient update"}


METHODS = tuple(REGISTRY)
FLAT_METHODS = tuple(name for name, cls in REGISTRY.items() if cls.flat)


def needs(methods: Sequence[str]) -> set[str]:
    """The checkpoints (``meta``/``baseline``) these methods start from."""
    return {REGISTRY[m].checkpoint for m in methods}


def timed_adapter(m: Method, episode: Episode) -> tuple[Adapter, float]:
    """The method's adapter for an episode and the seconds building it took (the aligner, the d-vectors)."""
    tick = time.perf_counter()
    adapter = m.adapter(episode)
    return adapter, time.perf_counter() - tick

