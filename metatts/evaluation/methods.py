"""The adaptation methods ``metatts evaluate`` compares. A method is one class registered here with ``@method``:
which checkpoint it starts from, and the ``Adapter`` (``metatts.adapt.adapters``) that moves its parameters along
the step grid from one episode's support clips. All adapt from the new-speaker slot; the query is always routed to
the slot.

- ``meta``: the meta-trained checkpoint's speaker group (``model.speaker_groups``) with plain SGD at its learned
  Meta-SGD rates, eval mode, no graph -- the start, loss and rates of ``metatts adapt`` (``adapt_voice``; the start
  is amortized when the checkpoint has a reference encoder), on the store's features of the support clips instead
  of re-extracted files.
- ``baseline``: the multi-speaker (``metatts train``) checkpoint, the same group and SGD (Meta-TTS's baseline) at
  the rate chosen on meta-val episodes from ``tuning_grid`` (``evaluation.tuning``) unless ``baseline_lr`` fixes it.
- ``full``: the baseline fine-tuning every parameter, eval mode; optimizer and rate tuned the same way unless
  ``full_lr`` fixes them (Adam at that rate).
- ``none``: the baseline's slot without adaptation (flat: evaluated once per episode, repeated over the grid).
- ``dvector``: the closed-form d-vector encoder (``evaluation.dvector``); flat too.

A method's ``setting`` is the dict a tuning grid holds (``{"lr": 0.3}``, ``{"optimizer": "adam", "lr": 1e-4}``);
``settings()`` records the one used.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from metatts.adapt.adapters import Adapter, SGDAdapter, make_adapter
from metatts.adapt.fast import length_buckets, resolve_lr, support_loss_fn
from metatts.adapt.start import starting_params
from metatts.checkpoints import StoreModel
from metatts.episodes.collate import aligned_batch
from metatts.episodes.sampler import Episode
from metatts.evaluation.dvector import DvectorModel, fit_dvector_model
from metatts.evaluation.metrics import mean_embedding
from metatts.evaluation.real_audio import RealAudio
from metatts.evaluation.scoring import render
from metatts.model.acoustic import select_parameters
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss

# Grids the non-meta gradient methods are tuned over on meta-val episodes (``evaluation.tuning``). The SGD rates of
# the speaker group span the ones earlier runs used by hand (0.1 demo, 0.5 speechocean762, 0.7 best on demo val) and
# reach down to where shared weights in the group (the decoder's) stop diverging (0.01 for full fine-tuning);
# full fine-tuning tries Adam around the usual 1e-4 and plain SGD.
BASELINE_GRID = tuple({"lr": lr} for lr in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0))
FULL_GRID = tuple([{"optimizer": "adam", "lr": lr} for lr in (1e-4, 3e-4, 1e-3)]
                  + [{"optimizer": "sgd", "lr": lr} for lr in (0.01, 0.1)])


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
    baseline_lr: float | None = None  # fixes the baseline's SGD rate (no tuning)
    full_lr: float | None = None  # fixes full fine-tuning to Adam at this rate (no tuning)
    tuned: dict[str, dict] = dataclasses.field(default_factory=dict)  # method -> chosen setting
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
    tuning_grid: ClassVar[tuple[dict, ...]] = ()  # settings tried on meta-val episodes; () = not tuned

    def __init__(self, context: EvalContext, setting: dict | None = None):
        self.context = context
        self.model = context.models[self.checkpoint]
        self.setting = dict(setting) if setting is not None else self.default_setting()

    def default_setting(self) -> dict:
        """The setting used when none is given: the user's fixed one, else the tuned one, else {}."""
        return dict(self.context.tuned.get(self.name, {}))

    def fixed_setting(self) -> dict | None:
        """The setting the user fixed on the command line (so tuning is skipped), or None."""
        return None

    def query_batch(self, episode: Episode):
        """The episode's query utterances as a teacher-forced batch of this method's checkpoint."""
        return aligned_batch(self.model.model, self.model.collator, list(episode.query), self.context.device)

    def adapter(self, episode: Episode) -> Adapter:
        raise NotImplementedError

    def render(self, params: dict[str, Tensor], query, reference, vocoder, encoder):
        """The method's query sentences at these parameters: synthesized by its model (``scoring.render``). A
        method that makes audio another way (a topline, a test oracle) overrides this."""
        return render(self.model, params, query, reference, vocoder, encoder)

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
    tuning_grid = BASELINE_GRID

    def fixed_setting(self) -> dict | None:
        return None if self.context.baseline_lr is None else {"lr": float(self.context.baseline_lr)}

    def default_setting(self) -> dict:
        return self.fixed_setting() or dict(self.context.tuned.get(self.name, {"lr": self.model.config.meta.inner_lr}))

    def adapter(self, episode: Episode) -> Adapter:
        fast0 = self._slot()
        return SGDAdapter(self._support_loss(self._support(episode), set(fast0)), fast0, float(self.setting["lr"]))

    def settings(self) -> dict:
        return {"baseline_lr": float(self.setting["lr"])}


@method
class FullMethod(Method):
    name = "full"
    tuning_grid = FULL_GRID

    def fixed_setting(self) -> dict | None:
        return None if self.context.full_lr is None else {"optimizer": "adam", "lr": float(self.context.full_lr)}

    def default_setting(self) -> dict:
        return self.fixed_setting() or dict(self.context.tuned.get(self.name, {"optimizer": "adam", "lr": 1e-4}))

    def adapter(self, episode: Episode) -> Adapter:
        fast0 = {n: p.detach() for n, p in self.model.model.named_parameters()}
        return make_adapter(self.setting["optimizer"], self._support_loss(self._support(episode), set(fast0)), fast0,
                            float(self.setting["lr"]))

    def settings(self) -> dict:
        return {"full_lr": float(self.setting["lr"]), "full_optimizer": self.setting["optimizer"]}


@method
class NoneMethod(Method):
    name, flat, measures = "none", True, "nothing (the slot as trained)"

    def adapter(self, episode: Episode) -> Adapter:
        return FixedParams({})


@method
class DvectorMethod(Method):
    name, flat, measures = "dvector", True, "Resemblyzer d-vectors of the support clips + the projection"

    def __init__(self, context: EvalContext, setting: dict | None = None):
        super().__init__(context, setting)
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
