"""`metatts meta-train`: MAML / Meta-SGD over the speaker group of the acoustic model.

One meta-step::

    B tasks = B meta-train speakers, each N support + Q query utterances, all routed to the new-speaker slot
    per task:  durations of support and query from the aligner, once (MAS does not run inside the inner loop)
               φ_k = adapt(L_support(θ, ·), φ_0, k, α)       second order unless meta.first_order
               L_task = L_query(θ, φ_k) + L_align(query)
    θ, φ_0, α  ← Adam(∇ (1/B) Σ_tasks L_task)               warm-up, clipping; NaN/Inf steps skipped

Loss terms. The support (inner) loss and the query loss are FastSpeech 2's, teacher-forced on the aligner's
durations: mel L1 (+ postnet mel L1 when there is a postnet) + log-duration MSE + pitch MSE + energy MSE; φ reaches
all of them (the speaker embedding feeds the variance predictors, the conditional norms the decoder). The aligner's
forward-sum loss is *not* in the inner loss -- the aligner does not see the speaker, so its gradient with respect to
φ is zero and it would only cost a forward per step -- but it is added to the outer loss on the query utterances
so the aligner keeps learning (it must when meta-training starts from scratch). Its bin loss is left to
``metatts train``. Evaluation (:func:`adaptation_curve`, meta-validation) reports the query mel L1 alone.

A run folder holds ``config.yaml``, ``checkpoint/`` (``model.safetensors`` loads into ``AcousticModel`` like any
checkpoint, so ``metatts.api.load`` works; ``inner_lr.safetensors`` holds the learned inner rates, read back by
:func:`load_inner_lr`; ``state.pt`` resumes), ``log.jsonl`` and ``tb/``.

Determinism. Episodes are a function of (meta.seed, step); the dropout of task ``i`` of step ``s`` is drawn from the
global RNG reseeded with (train.seed, s, i) inside ``fork_rng``. So a resumed run and a run whose meta-batch is split
over ``torchrun`` ranks compute the same tasks with the same dropout masks as one uninterrupted process.

Multi-process. Every rank draws the same meta-batch and takes its share (``EpisodeSampler.meta_batch(rank, world)``),
back-propagates Σ_{its tasks} L_task / B, and the gradients are summed over ranks (``all_reduce_gradients(average=
False)``), which is exact for unequal shares too; parameters are broadcast from rank 0 at start; rank 0 validates,
logs and saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from metatts.align.aligner import forward_sum_loss
from metatts.config import Config, config_from_dict, save_config
from metatts.episodes.collate import Collator
from metatts.episodes.sampler import Episode, EpisodeSampler
from metatts.meta import distributed as mdist
from metatts.meta.inner_loop import adapt, make_loss_fn
from metatts.meta.inner_lr import InnerLR
from metatts.model.acoustic import select_parameters
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss, LossTerms, LossWeights
from metatts.runtime.checkpoint import CheckpointError, CheckpointMeta, load_weights, read_meta, save_checkpoint
from metatts.runtime.env import resolve_device, rng_state, seed_everything, set_threads
from metatts.runtime.precision import autocast, grad_scaler, inner_loss_scale, resolve_precision
from metatts.train.common import (RunData, build_model, checkpoint_meta, compute_record, load_for_store,
                                  restore_training_state, warmup_inverse_sqrt)

INNER_LR_FILE = "inner_lr.safetensors"
QUERY_TERMS = ("mel", "postnet_mel", "duration", "pitch", "energy")  # FastSpeech 2 terms of the task losses


class MetaTrainingError(RuntimeError):
    """Meta-training cannot go on (too many consecutive non-finite steps); the last checkpoint is intact."""


class NotEnoughSpeakersError(ValueError):
    """The split has fewer speakers able to give an episode than a meta-batch needs."""


# ------------------------------------------------------------------------------------------------ one task
def aligned_batch(model: nn.Module, collator: Collator, ids: Sequence[str], device: torch.device) -> Batch:
    """Utterances on the new-speaker slot with the aligner's durations attached: computed once here, without a
    graph, so neither MAS nor the aligner runs inside the inner loop."""
    batch = collator(list(ids), new_speaker=True).to(device)
    return batch.with_durations(model.alignment(batch).durations)


def episode_batches(model: nn.Module, collator: Collator, episode: Episode,
                    device: torch.device) -> tuple[Batch, Batch]:
    """(support, query) of an episode, see :func:`aligned_batch`."""
    return (aligned_batch(model, collator, episode.support, device),
            aligned_batch(model, collator, episode.query, device))


@dataclass
class TaskLoss:
    query: LossTerms  # query losses at the adapted φ_k (with graph)
    support: list[Tensor]  # support loss before each inner step (detached)


def task_loss(model: nn.Module, support: Batch, query: Batch, lr: float | Mapping[str, Tensor],
              groups: Sequence[str], *, steps: int, first_order: bool = False,
              loss: FastSpeech2Loss | None = None, loss_scale: float | None = None) -> TaskLoss:
    """k inner steps on the support from the model's own φ_0, then the query losses at φ_k. Differentiable into
    every parameter of ``model`` and into ``lr`` (second order unless ``first_order``). ``loss_scale``: the inner
    loss scale under fp16 autocast (``metatts.runtime.precision.inner_loss_scale``)."""
    loss = loss or FastSpeech2Loss()
    fast = select_parameters(model, groups)
    inner = adapt(make_loss_fn(model, None, (support,), lambda out: loss(out, support).total), fast, steps, lr,
                  first_order=first_order, loss_scale=loss_scale)
    return TaskLoss(query=loss(functional_call(model, inner.fast, (query,)), query), support=inner.losses)


# --------------------------------------------------------------------------------------------- evaluation
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


def _as_lr(inner_lr: float | Mapping[str, Tensor] | InnerLR, device: torch.device) -> float | dict[str, Tensor]:
    if isinstance(inner_lr, InnerLR):
        inner_lr = inner_lr.as_dict()
    if isinstance(inner_lr, Mapping):
        return {n: a.detach().to(device) for n, a in inner_lr.items()}
    return float(inner_lr)


def adaptation_curve(model: nn.Module, inner_lr: float | Mapping[str, Tensor] | InnerLR, episodes: Sequence[Episode],
                     collator: Collator, steps_grid: Sequence[int], groups: Sequence[str]) -> AdaptationCurve:
    """Adapt ``groups`` from the model's slot on each episode's support with plain SGD (``inner_lr``: one float,
    or per-tensor rates such as a meta-trained ``InnerLR``) and record the query loss after each count in
    ``steps_grid``. Eval mode (no dropout), no graph kept; the model is left as it was.

    This is the one yardstick for every method: a meta-trained model with its learned rates, and the multi-speaker
    baseline fine-tuning the same group from its slot with the same step count and ``meta.inner_lr``.
    """
    grid = sorted(set(int(s) for s in steps_grid))
    if not grid or grid[0] < 0:
        raise ValueError(f"steps_grid must hold step counts >= 0, got {list(steps_grid)}")
    device = next(model.parameters()).device
    lr = _as_lr(inner_lr, device)
    loss = FastSpeech2Loss()
    postnet = getattr(model, "postnet", None) is not None
    was_training = model.training
    model.eval()
    try:
        fast0 = {n: p.detach() for n, p in select_parameters(model, groups).items()}
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in fast0}
        curve = AdaptationCurve(steps=grid, speakers=[], mel=[], total=[])
        for episode in episodes:
            support, query = episode_batches(model, collator, episode, device)
            support_fn = make_loss_fn(model, frozen, (support,), lambda out, b=support: loss(out, b).total)
            phi, done, mel_row, total_row = fast0, 0, [], []
            for target in grid:
                if target > done:
                    phi = adapt(support_fn, phi, target - done, lr, differentiable=False).fast
                    done = target
                with torch.no_grad():
                    terms = loss(functional_call(model, {**frozen, **phi}, (query,)), query)
                mel_row.append(float(terms.postnet_mel if postnet else terms.mel))
                total_row.append(float(terms.total))
            curve.speakers.append(episode.speaker)
            curve.mel.append(mel_row)
            curve.total.append(total_row)
    finally:
        model.train(was_training)
    return curve


# --------------------------------------------------------------------------------------------- checkpoints
def save_meta_checkpoint(directory: str | Path, model: nn.Module, inner_lr: InnerLR | None, meta: CheckpointMeta,
                         state: dict | None = None) -> Path:
    """A checkpoint folder plus ``inner_lr.safetensors``, swapped in atomically as one folder (a kill during the
    save leaves the previous checkpoint)."""
    files = {}
    if inner_lr is not None:
        meta = dataclasses.replace(meta, extra={**meta.extra, "inner_lr": {
            "file": INNER_LR_FILE, "mode": inner_lr.mode, "parameterization": inner_lr.parameterization,
            "names": inner_lr.names}})
        files[INNER_LR_FILE] = inner_lr.state_dict()
    return save_checkpoint(directory, model, meta, state, tensor_files=files)


def _inner_lr_tensors(checkpoint: Path, meta: CheckpointMeta) -> dict[str, Tensor] | None:
    info = meta.extra.get("inner_lr")
    if not info:
        return None
    path = checkpoint / info["file"]
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} records learned inner rates but has no {info['file']}")
    return load_file(str(path))


def load_inner_lr(checkpoint: str | Path) -> float | dict[str, Tensor]:
    """The inner learning rate(s) to adapt a checkpoint's speaker group with: the learned Meta-SGD rates of a meta
    checkpoint ({parameter name: α tensor}, ready for ``adapt(lr=...)``), else its config's ``meta.inner_lr``."""
    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    tensors = _inner_lr_tensors(checkpoint, meta)
    if tensors is None:
        return float(config_from_dict(meta.config).meta.inner_lr)
    info = meta.extra["inner_lr"]
    lr = {}
    for name in info["names"]:
        raw = tensors[f"raw.{name.replace('.', '__')}"]
        lr[name] = raw.exp() if info["parameterization"] == "log" else raw
    return lr


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
    started), so they get their own, larger ``meta.init_lr`` and ``meta.rates_lr``."""
    slot = select_parameters(model, groups)
    slot_ids = {id(p) for p in slot.values()}
    out = [{"params": [p for p in model.parameters() if id(p) not in slot_ids], "lr": meta.outer_lr, "name": "weights"},
           {"params": list(slot.values()), "lr": meta.init_lr, "name": "init"}]
    if inner_lr is not None:
        out.append({"params": list(inner_lr.parameters()), "lr": meta.rates_lr, "name": "rates"})
    return out


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


def _meta_train(config: Config, run: Path, context: mdist.DistContext, main: bool, *, resume: bool,
                init_from, progress: bool, log, started: float) -> MetaResult:
    meta = config.meta
    device = context.device if context.distributed else resolve_device(config.train.device)
    set_threads(config.train.threads)
    seed_everything(config.train.seed)
    data = RunData.load(config)

    # Episodes: every utterance of the meta-train speakers (the supervised held-out ones too); meta-val speakers
    # give the fixed validation episodes. Fail before building anything if a meta-batch cannot be filled.
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

    model = build_model(config, len(data.symbols), len(data.speakers)).to(device)
    groups = list(config.model.speaker_groups)
    inner_lr = (InnerLR(select_parameters(model, groups), init=meta.inner_lr, mode=meta.inner_lr_mode).to(device)
                if meta.learn_inner_lr else None)
    params = list(model.parameters()) + (list(inner_lr.parameters()) if inner_lr is not None else [])
    optimizer = torch.optim.Adam(_param_groups(model, groups, inner_lr, meta), betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 lambda s: warmup_inverse_sqrt(s, meta.warmup_steps))
    precision = resolve_precision(config.train.precision, device)
    scaler = grad_scaler(device, precision)  # fp16 only; it scales the inner loop's loss too (task_loss below)
    start_step, skipped, consecutive_bad = 0, 0, 0
    resumed_extra: dict | None = None  # the resumed checkpoint's metadata extras (its compute record)

    checkpoint = run / "checkpoint"
    if resume:
        state_meta = read_meta(checkpoint)
        resumed_extra = state_meta.extra
        if state_meta.kind != "meta":
            raise CheckpointError(f"{checkpoint} is a {state_meta.kind!r} checkpoint, not a meta-train one: "
                                  f"start from it with --init-from instead of --resume")
        load_weights(checkpoint, model)
        _load_inner_lr_into(checkpoint, state_meta, inner_lr)
        state = restore_training_state(checkpoint, optimizer, schedule, scaler)
        start_step, skipped = int(state["step"]), int(state["skipped"])
        consecutive_bad = int(state["consecutive_bad"])
        log(f"resuming {run} at meta-step {start_step}")
    elif init_from is not None:
        load_weights(init_from, model)
        from_meta = read_meta(init_from)
        if from_meta.kind == "meta" and inner_lr is not None:
            _load_inner_lr_into(Path(init_from), from_meta, inner_lr)
        log(f"initialized weights from {init_from} ({from_meta.kind} checkpoint, step {from_meta.step})")
    # Ranks may have built or loaded different tensors (other seeds, a stale file): rank 0's win.
    mdist.broadcast_parameters(model)
    if inner_lr is not None:
        mdist.broadcast_parameters(inner_lr)

    writer = log_file = None
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(config, run / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"), purge_step=start_step if resume else None)
        writer.add_custom_scalars({"meta-validation": {"query mel L1 after k inner steps": [
            "Multiline", [f"meta_val/mel_after_{k}" for k in range(meta.inner_steps + 1)]]}})
        log_file = (run / "log.jsonl").open("a")

    loss_fn = FastSpeech2Loss(LossWeights())
    result = MetaResult(run=run, step=start_step, skipped_steps=skipped)

    def save(step: int) -> None:
        state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "step": step, "skipped": result.skipped_steps,
                 "consecutive_bad": consecutive_bad}
        meta_info = checkpoint_meta(config, data, step, "meta")
        meta_info.extra["compute"] = compute_record(step, time.perf_counter() - started, resumed_extra,
                                                    None if resume else init_from)
        save_meta_checkpoint(checkpoint, model, inner_lr, meta_info, state)

    def validate(step: int) -> None:
        if not val_episodes:
            return
        # Validation must not move the training RNG, or a resumed run would diverge from this one.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            curve = adaptation_curve(model, inner_lr if inner_lr is not None else meta.inner_lr, val_episodes,
                                     data.collator, range(meta.inner_steps + 1), groups)
        mel = curve.mean("mel")
        for k, value in zip(curve.steps, mel):
            writer.add_scalar(f"meta_val/mel_after_{k}", value, step)
        record = {"step": step, "steps": curve.steps, "mel": mel, "total": curve.mean("total"),
                  "episodes": len(val_episodes)}
        result.val.append(record)
        log_file.write(json.dumps({"kind": "meta_val", **record}) + "\n")
        log_file.flush()

    def sync_mean(values: dict[str, float], count: int) -> dict[str, float]:
        # Every rank holds sums over its tasks; the meta-batch mean is Σ_ranks sum / B (same order on all ranks).
        return {k: mdist.all_reduce_mean(v) * context.world_size / count for k, v in values.items()}

    if main and not resume and start_step == 0:
        validate(0)
    bar = tqdm(range(start_step, meta.steps), initial=start_step, total=meta.steps, desc="meta-train",
               unit="step", disable=not progress)
    try:
        for step in bar:
            tick = time.perf_counter()
            episodes = sampler.meta_batch(step, meta.meta_batch, context.rank, context.world_size)
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            bad_reason = ""
            for i, episode in enumerate(episodes):
                index = context.rank + i * context.world_size  # position in the whole meta-batch
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(_task_seed(config.train.seed, step, index))
                    support = aligned_batch(model, data.collator, episode.support, device)
                    query = data.collator(list(episode.query), new_speaker=True).to(device)
                    with autocast(device, precision):
                        # On the query the aligner runs with a graph: its forward-sum loss trains it, and its
                        # (detached) MAS durations drive the query pass.
                        alignment = model.aligner(query.phonemes, query.phoneme_lengths, query.mels,
                                                  query.mel_lengths)
                        query = query.with_durations(alignment.durations)
                        aligner = forward_sum_loss(alignment, loss_fn.weights.blank_logprob)
                        # α = exp(log α) is rebuilt per task: each task's backward frees its graph.
                        lr = inner_lr.as_dict() if inner_lr is not None else meta.inner_lr
                        task = task_loss(model, support, query, lr, groups, steps=meta.inner_steps,
                                         first_order=meta.first_order, loss=loss_fn,
                                         loss_scale=inner_loss_scale(scaler))
                        objective = task.query.total + loss_fn.weights.forward_sum * aligner
                    # fp16: a non-finite loss is (nearly always) the loss scale overflowing the inner backward. It is
                    # back-propagated like any fp16 overflow, so the scaler skips the step and backs off.
                    if not scaler.is_enabled() and not bool(torch.isfinite(objective)):
                        bad_reason = f"non-finite loss in the task of speaker {episode.speaker}"
                        break
                    scaler.scale(objective / meta.meta_batch).backward()
                values = {f"query_{n}": float(getattr(task.query, n).detach()) for n in QUERY_TERMS}
                values.update(query_total=float(task.query.total.detach()), aligner=float(aligner.detach()),
                              objective=float(objective.detach()),
                              support_before=float(task.support[0]) if task.support else float("nan"))
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
            # All ranks must take the same decision: skip if any rank saw a non-finite loss.
            bad = mdist.all_reduce_mean(1.0 if bad_reason else 0.0) > 0
            grad_norm = float("nan")
            if not bad:
                mdist.all_reduce_gradients(params, average=False)
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip))
                if not scaler.is_enabled() and not math.isfinite(grad_norm):
                    bad, bad_reason = True, "non-finite meta-gradient"
            done = step + 1
            if bad:
                # A non-finite step would poison Adam's moments: skip it, count it, stop if it persists.
                optimizer.zero_grad(set_to_none=True)
                result.skipped_steps += 1
                consecutive_bad += 1
                reason = bad_reason or "non-finite loss on another rank"
                log(f"meta-step {done} skipped: {reason} ({consecutive_bad} in a row)")
                if main:
                    writer.add_scalar("meta/skipped_steps", result.skipped_steps, done)
                    log_file.write(json.dumps({"kind": "skip", "step": done, "reason": reason,
                                               "consecutive": consecutive_bad}) + "\n")
                    log_file.flush()
                if consecutive_bad >= meta.max_bad_steps:
                    raise MetaTrainingError(
                        f"{consecutive_bad} consecutive meta-steps with a non-finite loss or gradient (meta-step "
                        f"{done}; meta.max_bad_steps = {meta.max_bad_steps}); the last good checkpoint is "
                        f"{checkpoint}")
                schedule.step()
                result.step = done
                continue
            consecutive_bad = 0
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            if done % config.train.log_every == 0 or done == meta.steps:
                values = sync_mean(sums, meta.meta_batch)
                if main:
                    values.update(grad_norm=grad_norm, lr=schedule.get_last_lr()[0],
                                  seconds=time.perf_counter() - tick)
                    if inner_lr is not None:
                        with torch.no_grad():
                            rates = inner_lr.as_dict().values()
                            values["inner_lr_mean"] = float(torch.stack([a.mean() for a in rates]).mean())
                    for name, value in values.items():
                        writer.add_scalar(f"meta/{name}", value, done)
                    record = {"step": done, **values}
                    result.train.append(record)
                    log_file.write(json.dumps({"kind": "meta", **record}) + "\n")
                    log_file.flush()
                    bar.set_postfix(query_mel=f"{values['query_mel']:.3f}")
            if main and (done % config.train.val_every == 0 or done == meta.steps):
                validate(done)
            if main and (done % config.train.checkpoint_every == 0 or done == meta.steps):
                save(done)
            result.step = done
    finally:
        bar.close()
        if main:
            writer.close()
            log_file.close()
    result.seconds = time.perf_counter() - started
    return result


def _load_inner_lr_into(checkpoint: Path, meta: CheckpointMeta, inner_lr: InnerLR | None) -> None:
    tensors = _inner_lr_tensors(checkpoint, meta)
    if inner_lr is None or tensors is None:
        if inner_lr is not None and meta.kind == "meta":
            raise CheckpointError(f"{checkpoint} has no learned inner rates but meta.learn_inner_lr is true")
        return
    expected = inner_lr.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"{checkpoint}: its learned inner rates do not fit this config (meta.inner_lr_mode or "
                              f"model.speaker_groups differ)")
    inner_lr.load_state_dict(tensors)


def checkpoint_curve(checkpoint: str | Path, episodes: Sequence[Episode], store, steps_grid: Sequence[int], *,
                     inner_lr: float | Mapping[str, Tensor] | None = None, groups: Sequence[str] | None = None,
                     device: str = "cpu") -> AdaptationCurve:
    """:func:`adaptation_curve` of a checkpoint (``metatts train`` or ``meta-train``) on episodes of ``store``
    (a ``FeatureStore``). Defaults: the checkpoint's own inner rates (:func:`load_inner_lr`) and speaker groups."""
    _, config, model, collator = load_for_store(checkpoint, store)
    lr = load_inner_lr(checkpoint) if inner_lr is None else inner_lr
    return adaptation_curve(model.to(resolve_device(device)), lr, episodes, collator, steps_grid,
                            list(groups or config.model.speaker_groups))
