"""`metatts meta-train`: MAML / Meta-SGD over the speaker group of the acoustic model.

The training loop around :func:`metatts.meta.step.meta_step` (sampling, schedule, logging, validation,
checkpoints). One meta-step::

    B tasks = B meta-train speakers, each N support + Q query utterances, all routed to the new-speaker slot
    per task:  durations of support and query from the aligner, once (MAS does not run inside the inner loop)
               φ_k = adapt(L_support(θ, ·), φ_0, k, α)       eval mode (as at test time); second order unless
                                                            meta.first_order or before meta.first_order_steps;
                                                            α per step with meta.inner_lr_per_step
               L_task = L_query(θ, φ_k) + L_align(query)     Σ_i w_i L_query(θ, φ_i) with multi_step_loss_steps,
                                                            + w_0 L_query(θ, φ_start) with start_loss_weight
    θ, φ_0, α  ← Adam(∇ (1/B) Σ_tasks L_task)               warm-up, clipping; NaN/Inf steps skipped

Loss terms. The support (inner) loss and the query loss are FastSpeech 2's, teacher-forced on the aligner's
durations: mel L1 (+ postnet mel L1 when there is a postnet) + log-duration MSE + pitch MSE + energy MSE; φ reaches
all of them (the speaker embedding feeds the variance predictors, the conditional norms the decoder). The aligner's
forward-sum loss is *not* in the inner loss -- the aligner does not see the speaker, so its gradient with respect to
φ is zero and it would only cost a forward per step -- but it is added to the outer loss on the query utterances
so the aligner keeps learning (it must when meta-training starts from scratch). Its bin loss is left to
``metatts train``. Meta-validation (``evaluation.curves.adaptation_curve``) reports the query mel L1 alone.

A run folder holds ``config.yaml``, ``checkpoint/`` (``model.safetensors`` loads into ``AcousticModel`` like any
checkpoint, so ``metatts.api.load`` works; ``inner_lr.safetensors`` holds the learned inner rates, read back by
``metatts.checkpoints.load_inner_lr``; ``state.pt`` resumes), ``log.jsonl`` and ``tb/``.

Determinism. Episodes are a function of (meta.seed, step); the dropout of task ``i`` of step ``s`` is drawn from the
global RNG reseeded with (train.seed, s, i) inside ``fork_rng``. So a resumed run and a run whose meta-batch is split
over ``torchrun`` ranks compute the same tasks with the same dropout masks as one uninterrupted process.

Multi-process. Every rank draws the same meta-batch and takes its share (``EpisodeSampler.meta_batch(rank, world)``),
back-propagates Σ_{its tasks} L_task / B, and the gradients are summed over ranks (``all_reduce_gradients(average=
False)``), which is exact for unequal shares too; parameters are broadcast from rank 0 at start; rank 0 validates,
logs and saves.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from metatts.checkpoints import load_inner_lr_into, save_model_checkpoint
from metatts.config import Config, save_config
from metatts.episodes.sampler import Episode, EpisodeSampler
from metatts.evaluation.curves import adaptation_curve
from metatts.meta import distributed as mdist
from metatts.meta.inner_lr import InnerLR
from metatts.meta.step import MetaStepSettings, StepStats, Task, meta_step
from metatts.model.acoustic import PER_VOICE_GROUPS, REFERENCE_PREFIX, select_parameters
from metatts.model.losses import FastSpeech2Loss, LossWeights
from metatts.runtime.checkpoint import CheckpointError, load_weights, read_meta
from metatts.runtime.env import resolve_device, rng_state, seed_everything, set_threads
from metatts.runtime.precision import grad_scaler, resolve_precision
from metatts.train.common import (RunData, build_model, checkpoint_meta, compute_record, restore_training_state,
                                  warmup_inverse_sqrt)


class MetaTrainingError(RuntimeError):
    """Meta-training cannot go on (too many consecutive non-finite steps); the last checkpoint is intact."""


class NotEnoughSpeakersError(ValueError):
    """The split has fewer speakers able to give an episode than a meta-batch needs."""


# --------------------------------------------------------------------------------------------- training
@dataclass
class MetaResult:
    run: Path
    step: int
    train: list[dict] = field(default_factory=list)  # logged steps: {"step", "objective", "query_mel", ...}
    val: list[dict] = field(default_factory=list)  # {"step", "steps": [0..k], "mel": [...]}
    skipped_steps: int = 0
    seconds: float = 0.0


def _param_groups(model: nn.Module, groups: Sequence[str], inner_lr: InnerLR | None, meta) -> list[dict]:
    """Three outer learning rates. The weights θ move at ``meta.outer_lr`` like any fine-tuning; φ0 and the
    inner rates are what meta-learning adds, and at θ's rate they barely move in a CPU-sized run (Adam's step is
    ~lr per element: 3e-4 per step changes a log-rate by 0.05 in 150 steps, i.e. the rates stay where they
    started), so they get their own, larger ``meta.init_lr`` and ``meta.rates_lr``. φ0 at ``init_lr`` means the
    per-voice tensors only (the new-speaker slot and the adapters, which no training speaker uses); shared weights
    adapted as fast weights (``decoder``, ``variance_adaptor``) are θ too and stay at ``outer_lr``, which the
    model was trained at."""
    own = [g for g in groups if g in PER_VOICE_GROUPS]
    per_voice = select_parameters(model, own) if own else {}
    slot_ids = {id(p) for p in per_voice.values()}
    out = [{"params": [p for p in model.parameters() if id(p) not in slot_ids], "lr": meta.outer_lr, "name": "weights"},
           {"params": list(per_voice.values()), "lr": meta.init_lr, "name": "init"}]
    if inner_lr is not None:
        out.append({"params": list(inner_lr.parameters()), "lr": meta.rates_lr, "name": "rates"})
    return out


def _initial_rates(model: nn.Module, groups: Sequence[str], meta) -> dict[str, float]:
    """The starting inner rate of each fast weight: ``meta.inner_lr_by_group`` for its group, else ``meta.inner_lr``.
    (A speaker slot takes steps of 0.3; a decoder weight at that rate diverges in one step, and learned rates move
    ~1 % per meta-step, too slowly to come back from a rate 10x too high.)"""
    owner = {name: group for group, names in model.parameter_groups().items() for name in names}
    return {name: meta.inner_lr_by_group.get(owner[name], meta.inner_lr) for name in select_parameters(model, groups)}


def _task_seed(seed: int, step: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:task:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _by_speaker(data: RunData, speakers: Sequence[str]) -> dict[str, list[str]]:
    grouped = data.store.speakers()
    return {s: [e.id for e in grouped[s]] for s in speakers if s in grouped}


def meta_train(config: Config, run: str | Path, *, resume: bool = False, init_from: str | Path | None = None,
               progress: bool = True, log=print) -> MetaResult:
    """Meta-train ``config.meta.steps`` meta-updates into the run folder ``run`` (see the module docstring).
    Under ``torchrun`` (WORLD_SIZE set) the meta-batch is split over the ranks."""
    run = Path(run)
    started = time.perf_counter()
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    context = mdist.init_from_env()
    main = context.rank == 0
    try:
        return _meta_train(config, run, context, main, resume=resume, init_from=init_from,
                           progress=progress and main, log=log if main else (lambda *_: None), started=started)
    finally:
        if owns_group and context.distributed:
            mdist.shutdown()


@dataclass
class _Setup:
    """Everything a meta-training run is built from, before its first step."""

    data: RunData
    sampler: EpisodeSampler
    val_episodes: list[Episode]
    model: nn.Module
    inner_lr: InnerLR | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    settings: MetaStepSettings
    device: torch.device


def _episodes(config: Config, data: RunData, context: mdist.DistContext, log) -> tuple[EpisodeSampler, list[Episode]]:
    # Every utterance of the meta-train speakers (the supervised held-out ones too); meta-val speakers give the
    # fixed validation episodes. Fail before building anything if a meta-batch cannot be filled.
    meta = config.meta
    sampler = EpisodeSampler(_by_speaker(data, data.speakers), meta.shots, meta.queries, seed=meta.seed)
    for speaker, count in sampler.excluded.items():
        log(f"meta-train speaker {speaker} left out: {count} utterances < {meta.shots} shots + {meta.queries} queries")
    if len(sampler.speakers) < meta.meta_batch:
        raise NotEnoughSpeakersError(
            f"meta.meta_batch = {meta.meta_batch} tasks but only {len(sampler.speakers)} meta-train speakers of "
            f"{config.data.features} have {meta.shots + meta.queries} utterances (meta.shots + meta.queries; "
            f"{len(sampler.excluded)} too small): lower meta.meta_batch or meta.shots/queries")
    if meta.meta_batch < context.world_size:
        log(f"warning: {context.world_size} ranks for {meta.meta_batch} tasks: some ranks stay idle")
    val_sampler = EpisodeSampler(_by_speaker(data, data.splits.val), meta.shots, meta.queries, seed=meta.seed)
    val_episodes = [val_sampler.episode(s, i) for s in val_sampler.speakers for i in range(meta.val_tasks)]
    if not val_episodes and meta.val_tasks:
        log("no meta-val speaker can give an episode: meta-validation is off")
    return sampler, val_episodes


def _set_up(config: Config, context: mdist.DistContext, log) -> _Setup:
    meta = config.meta
    device = context.device if context.distributed else resolve_device(config.train.device)
    data = RunData.load(config)
    sampler, val_episodes = _episodes(config, data, context, log)
    model = build_model(config, len(data.symbols), len(data.speakers)).to(device)
    groups = list(config.model.speaker_groups)
    inner_lr = (InnerLR(select_parameters(model, groups), init=_initial_rates(model, groups, meta),
                        mode=meta.inner_lr_mode, steps=meta.inner_steps if meta.inner_lr_per_step else None).to(device)
                if meta.learn_inner_lr else None)
    optimizer = torch.optim.Adam(_param_groups(model, groups, inner_lr, meta), betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_inverse_sqrt(s, meta.warmup_steps))
    precision = resolve_precision(config.train.precision, device)
    settings = MetaStepSettings(groups=groups, inner_steps=meta.inner_steps, inner_lr=meta.inner_lr,
                                first_order=meta.first_order, meta_batch=meta.meta_batch,
                                grad_clip=config.train.grad_clip, precision=precision,
                                first_order_steps=meta.first_order_steps,
                                multi_step_loss_steps=meta.multi_step_loss_steps, query_dropout=meta.query_dropout,
                                start_loss_weight=meta.start_loss_weight)
    # fp16 only; the meta-step scales the inner loop's support loss by the same scale.
    return _Setup(data, sampler, val_episodes, model, inner_lr, optimizer, schedule,
                  grad_scaler(device, precision), settings, device)


def _restore(setup: _Setup, checkpoint: Path, init_from, resume: bool, log) -> dict:
    """Resume ``checkpoint`` or initialize from ``init_from``; returns the resumed training state ({} when new)."""
    if resume:
        state_meta = read_meta(checkpoint)
        if state_meta.kind != "meta":
            raise CheckpointError(f"{checkpoint} is a {state_meta.kind!r} checkpoint, not a meta-train one: "
                                  f"start from it with --init-from instead of --resume")
        load_weights(checkpoint, setup.model)
        load_inner_lr_into(checkpoint, state_meta, setup.inner_lr)
        state = restore_training_state(checkpoint, setup.optimizer, setup.schedule, setup.scaler)
        return {**state, "extra": state_meta.extra}
    if init_from is not None:
        # A checkpoint without a reference encoder (``metatts train``, or meta-training without meta.amortized_start)
        # starts one fresh: its zero head predicts φ0 exactly, so the run begins where that checkpoint was.
        load_weights(init_from, setup.model, fresh=(REFERENCE_PREFIX,))
        from_meta = read_meta(init_from)
        if from_meta.kind == "meta" and setup.inner_lr is not None:
            load_inner_lr_into(Path(init_from), from_meta, setup.inner_lr)
        log(f"initialized weights from {init_from} ({from_meta.kind} checkpoint, step {from_meta.step})")
    return {}


class _RunLog:
    """Rank 0's TensorBoard writer and ``log.jsonl``; a no-op on other ranks."""

    def __init__(self, run: Path, config: Config, main: bool, purge_step: int | None):
        self.main = main
        self.writer = self.file = None
        if main:
            run.mkdir(parents=True, exist_ok=True)
            save_config(config, run / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import; only rank 0 needs it

            self.writer = SummaryWriter(str(run / "tb"), purge_step=purge_step)
            self.writer.add_custom_scalars({"meta-validation": {"query mel L1 after k inner steps": [
                "Multiline", [f"meta_val/mel_after_{k}" for k in range(config.meta.inner_steps + 1)]]}})
            self.file = (run / "log.jsonl").open("a")

    def record(self, kind: str, step: int, scalars: Mapping[str, float], prefix: str, **fields) -> None:
        if not self.main:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.file.write(json.dumps({"kind": kind, "step": step, **fields}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.main:
            self.writer.close()
            self.file.close()


def _tasks(setup: _Setup, config: Config, context: mdist.DistContext, step: int) -> list[Task]:
    episodes = setup.sampler.meta_batch(step, config.meta.meta_batch, context.rank, context.world_size)
    collate = setup.data.collator
    return [Task(support=collate(list(e.support), new_speaker=True).to(setup.device),
                 query=collate(list(e.query), new_speaker=True).to(setup.device),
                 # position in the whole meta-batch: any split over ranks draws the same dropout per task
                 seed=_task_seed(config.train.seed, step, context.rank + i * context.world_size), name=e.speaker)
            for i, e in enumerate(episodes)]


def _meta_train(config: Config, run: Path, context: mdist.DistContext, main: bool, *, resume: bool,
                init_from, progress: bool, log, started: float) -> MetaResult:
    set_threads(config.train.threads)
    seed_everything(config.train.seed)
    setup = _set_up(config, context, log)
    checkpoint = run / "checkpoint"
    state = _restore(setup, checkpoint, init_from, resume, log)
    result = MetaResult(run=run, step=int(state.get("step", 0)), skipped_steps=int(state.get("skipped", 0)))
    consecutive_bad = int(state.get("consecutive_bad", 0))
    if resume:
        log(f"resuming {run} at meta-step {result.step}")
    # Ranks may have built or loaded different tensors (other seeds, a stale file): rank 0's win.
    mdist.broadcast_parameters(setup.model)
    if setup.inner_lr is not None:
        mdist.broadcast_parameters(setup.inner_lr)
    run_log = _RunLog(run, config, main, result.step if resume else None)
    meta, loss = config.meta, FastSpeech2Loss(LossWeights())

    def save(step: int) -> None:
        training = {"optimizer": setup.optimizer.state_dict(), "schedule": setup.schedule.state_dict(),
                    "scaler": setup.scaler.state_dict(), "rng": rng_state(), "step": step,
                    "skipped": result.skipped_steps, "consecutive_bad": consecutive_bad}
        info = checkpoint_meta(config, setup.data, step, "meta")
        info.extra["compute"] = compute_record(step, time.perf_counter() - started, state.get("extra"),
                                               None if resume else init_from)
        save_model_checkpoint(checkpoint, setup.model, info, training, setup.inner_lr)

    if main and not resume:
        _validate(setup, run_log, result, 0)
    bar = tqdm(range(result.step, meta.steps), initial=result.step, total=meta.steps, desc="meta-train",
               unit="step", disable=not progress)
    try:
        for step in bar:
            tick = time.perf_counter()
            stats = meta_step(setup.model, _tasks(setup, config, context, step), setup.optimizer, setup.settings,
                              inner_lr=setup.inner_lr, loss=loss, scaler=setup.scaler, step=step)
            setup.schedule.step()
            done = result.step = step + 1
            if not stats.applied:
                # A non-finite step is dropped (its gradients cleared), counted, and stops the run if it persists.
                result.skipped_steps += 1
                consecutive_bad += 1
                log(f"meta-step {done} skipped: {stats.skipped} ({consecutive_bad} in a row)")
                run_log.record("skip", done, {"skipped_steps": result.skipped_steps}, "meta", reason=stats.skipped,
                               consecutive=consecutive_bad)
                if consecutive_bad >= meta.max_bad_steps:
                    raise MetaTrainingError(
                        f"{consecutive_bad} consecutive meta-steps with a non-finite loss or gradient (meta-step "
                        f"{done}; meta.max_bad_steps = {meta.max_bad_steps}); the last good checkpoint is "
                        f"{checkpoint}")
                continue
            consecutive_bad = 0
            if done % config.train.log_every == 0 or done == meta.steps:
                _log_step(setup, run_log, result, stats, context, done, time.perf_counter() - tick, bar)
            if main and (done % config.train.val_every == 0 or done == meta.steps):
                _validate(setup, run_log, result, done)
            if main and (done % config.train.checkpoint_every == 0 or done == meta.steps):
                save(done)
    finally:
        bar.close()
        run_log.close()
    result.seconds = time.perf_counter() - started
    return result


def _log_step(setup: _Setup, run_log: _RunLog, result: MetaResult, stats: StepStats, context: mdist.DistContext,
              step: int, seconds: float, bar) -> None:
    # Every rank holds sums over its tasks; the meta-batch mean is Σ_ranks sum / B (same order on all ranks).
    values = {k: mdist.all_reduce_mean(v) * context.world_size / setup.settings.meta_batch
              for k, v in stats.sums.items()}
    if not run_log.main:
        return
    values.update(grad_norm=stats.grad_norm, lr=setup.schedule.get_last_lr()[0], seconds=seconds)
    if setup.inner_lr is not None:
        with torch.no_grad():
            values["inner_lr_mean"] = float(setup.inner_lr.mean_rate())
    record = {"step": step, **values}
    result.train.append(record)
    run_log.record("meta", step, values, "meta", **values)
    bar.set_postfix(query_mel=f"{values['query_mel']:.3f}")


def _validate(setup: _Setup, run_log: _RunLog, result: MetaResult, step: int) -> None:
    """Meta-validation: the adaptation curve of the fixed val episodes over 0…k inner steps (rank 0)."""
    if not setup.val_episodes:
        return
    # Validation must not move the training RNG, or a resumed run would diverge from this one.
    with torch.random.fork_rng(devices=[setup.device] if setup.device.type == "cuda" else []):
        lr = setup.inner_lr if setup.inner_lr is not None else setup.settings.inner_lr
        curve = adaptation_curve(setup.model, lr, setup.val_episodes, setup.data.collator,
                                 range(setup.settings.inner_steps + 1), setup.settings.groups)
    mel = curve.mean("mel")
    record = {"step": step, "steps": curve.steps, "mel": mel, "total": curve.mean("total"),
              "episodes": len(setup.val_episodes)}
    result.val.append(record)
    run_log.record("meta_val", step, {f"mel_after_{k}": v for k, v in zip(curve.steps, mel)}, "meta_val",
                   **{k: v for k, v in record.items() if k != "step"})
