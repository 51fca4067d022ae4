"""`metatts train`: multi-speaker training of the acoustic model over the meta-train speakers.

This is both a product (a voice bank) and the baseline meta-learning must beat. A run folder holds::

    config.yaml        the resolved config
    checkpoint/        the latest checkpoint (weights, metadata, training state for --resume)
    log.jsonl          one line per logged step and per validation
    tb/                TensorBoard: loss terms, learning rate, validation mels, alignment plots, audio

``--resume`` continues a run exactly (optimizer, schedule, step; the batch is a function of the step, and dropout
and new-speaker routing of step ``s`` on rank ``r`` are drawn from the RNG reseeded with (train.seed, s, r));
``--init-from`` starts a new run from another checkpoint's weights only.

Multi-process (``torchrun``, WORLD_SIZE set): DistributedDataParallel over gloo (CPU) or NCCL (one GPU per rank).
Plain training has no ``autograd.grad`` through the graph, so DDP's backward hooks work here (meta-training splits
its meta-batch by hand instead, ``metatts.meta.distributed``). ``train.batch_size`` is per process: the sampler
draws the global batch of batch_size x W utterances of step ``s`` and rank ``r`` takes every W-th of it. The loss
terms are means over frames, phonemes or utterances, so each rank weights its terms by its share of those counts
(one small all-reduce per step, which also makes the skip-a-non-finite-step decision the same on every rank): W
ranks take exactly the step one process would take with the global batch. Rank 0 validates, logs and saves; the
checkpoint records the world size and the global batch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from metatts.config import Config, save_config
from metatts.episodes.sampler import BatchSampler
from metatts.meta import distributed as mdist
from metatts.model.losses import TERM_UNITS, UNITS, FastSpeech2Loss, LossTerms, LossWeights, unit_counts
from metatts.runtime.checkpoint import load_weights, read_meta, save_checkpoint
from metatts.runtime.env import resolve_device, rng_state, seed_everything, set_threads
from metatts.runtime.precision import autocast, grad_scaler, resolve_precision
from metatts.train.common import (RunData, build_model, checkpoint_meta, compute_record, mel_image,
                                  restore_training_state, warm_start, warmup_inverse_sqrt)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite losses); the last checkpoint is intact."""


@dataclass
class TrainResult:
    run: Path
    step: int
    train_losses: list[dict] = field(default_factory=list)  # logged steps: {"step", "total", "mel", ...}
    val_losses: list[dict] = field(default_factory=list)  # {"step", "mel", "total"}
    skipped_steps: int = 0
    seconds: float = 0.0


def _bin_weight(step: int, start: int, ramp: int) -> float:
    """The aligner's binarization loss is off while the soft alignment forms, then ramps in (RAD-TTS). It depends
    on the step alone (not the run length), so extending a run with --resume keeps the same schedule."""
    return min(max((step - start) / ramp, 0.0), 1.0)


@torch.no_grad()
def validate(model, data: RunData, device: torch.device, batch_size: int) -> dict:
    """Teacher-forced losses on the held-out utterances of the meta-train speakers (eval mode)."""
    if not data.val:
        return {}
    was_training = model.training
    model.eval()
    loss = FastSpeech2Loss()
    totals: dict[str, float] = {}
    count = 0
    ids = [e.id for e in data.val]
    for start in range(0, len(ids), batch_size):
        batch = data.collator(ids[start:start + batch_size]).to(device)
        terms = loss(model(batch), batch).as_floats()
        n = batch.size
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value * n
        count += n
    model.train(was_training)
    return {name: value / count for name, value in totals.items()}


def _log_media(writer, model, data: RunData, device: torch.device, step: int, vocoder) -> None:
    """Ground truth vs synthesized mel, the alignment and audio of one validation utterance."""
    from metatts.align.aligner import plot_alignment

    entry = data.val[0] if data.val else data.train[0]
    batch = data.collator([entry.id]).to(device)
    synthesis = model.infer(batch.phonemes, batch.phoneme_lengths, batch.speakers)
    frames = int(synthesis.mel_lengths[0])
    writer.add_image("val/mel_target", mel_image(batch.mels[0]), step)
    writer.add_image("val/mel_synthesized", mel_image(synthesis.mels[0, :, :frames]), step)
    alignment = model.alignment(batch)
    t, n = int(batch.mel_lengths[0]), int(batch.phoneme_lengths[0])
    figure = Path(writer.log_dir) / "alignment-latest.png"
    plot_alignment(alignment.soft[0, :t, :n], figure, durations=alignment.durations[0, :n], title=f"step {step}")
    import matplotlib.image

    writer.add_image("val/alignment", matplotlib.image.imread(figure)[..., :3], step, dataformats="HWC")
    if vocoder is not None:
        wave = vocoder(synthesis.mels[:, :, :frames].float().cpu())[0]
        writer.add_audio("val/synthesized", wave[None], step, sample_rate=vocoder.sample_rate)


def _step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}:train:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


_TERMS = tuple(TERM_UNITS)
_UNIT_OF_TERM = [UNITS.index(TERM_UNITS[name]) for name in _TERMS]


@dataclass
class _GlobalStep:
    """What the ranks agree on after one all-reduce: whether to skip, this rank's loss to back-propagate and the
    global batch's loss terms for the log."""

    bad: bool
    objective: Tensor
    values: dict[str, float]


def _global_step(terms: LossTerms, counts: Tensor, weights: LossWeights, world: int) -> _GlobalStep:
    """Weight this rank's loss terms so that DDP's gradient average is the gradient of the global batch's loss:
    term_t x count_t(rank) x W / count_t(all ranks), whose mean over ranks is the term over the joint batch."""
    values = torch.stack([getattr(terms, name).detach().double() for name in _TERMS])
    bad = (~torch.isfinite(terms.total.detach())).double().reshape(1)
    stats = torch.cat([counts, bad, values * counts[_UNIT_OF_TERM]])
    dist.all_reduce(stats)
    totals = stats[:len(UNITS)]
    if float(stats[len(UNITS)]) > 0:
        return _GlobalStep(bad=True, objective=terms.total, values={})
    share = (counts * world / totals).float()
    objective = sum(getattr(weights, name) * getattr(terms, name) * share[u] for name, u in zip(_TERMS, _UNIT_OF_TERM))
    means = (stats[len(UNITS) + 1:] / totals[_UNIT_OF_TERM]).tolist()
    out = dict(zip(_TERMS, means))
    out["total"] = sum(getattr(weights, name) * out[name] for name in _TERMS)
    return _GlobalStep(bad=False, objective=objective, values=out)


def train(config: Config, run: str | Path, *, resume: bool = False, init_from: str | Path | None = None,
          progress: bool = True, log=print, vocoder=None) -> TrainResult:
    """Train ``config.train.steps`` updates into the run folder ``run``. ``vocoder`` (optional) renders
    validation audio for TensorBoard. Under ``torchrun`` (WORLD_SIZE set) every batch is split over the ranks."""
    run = Path(run)
    started = time.perf_counter()
    owns_group = not (dist.is_available() and dist.is_initialized())
    context = mdist.init_from_env()
    main = context.rank == 0
    try:
        return _train(config, run, context, main, resume=resume, init_from=init_from, progress=progress and main,
                      log=log if main else (lambda *_: None), vocoder=vocoder, started=started)
    finally:
        if owns_group and context.distributed:
            mdist.shutdown()


def _train(config: Config, run: Path, context: mdist.DistContext, main: bool, *, resume: bool, init_from,
           progress: bool, log, vocoder, started: float) -> TrainResult:
    device = context.device if context.distributed else resolve_device(config.train.device)
    world = context.world_size
    set_threads(config.train.threads)
    seed_everything(config.train.seed)
    data = RunData.load(config)
    if len(data.train) < world:
        raise TrainingError(f"{len(data.train)} training utterances cannot be split over {world} processes")
    model = build_model(config, len(data.symbols), len(data.speakers)).to(device)
    # Low-rank adapters stay at zero effect here: trained on every speaker they would only re-parameterize the
    # shared weights; they are per-voice fast weights, learned by meta-training and adaptation.
    adapters = set(model.parameter_groups()["adapters"])
    trained = [p for n, p in model.named_parameters() if n not in adapters]
    optimizer = torch.optim.Adam(trained, lr=config.train.lr, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_inverse_sqrt(s, config.train.warmup_steps))
    precision = resolve_precision(config.train.precision, device)
    scaler = grad_scaler(device, precision)
    start_step, skipped = 0, 0
    resumed_extra: dict | None = None  # the resumed checkpoint's metadata extras (its compute record)
    # The global batch: every rank draws it and takes its share (capped at the training set, like one process).
    sampler = BatchSampler(data.train, config.train.batch_size * world, seed=config.train.seed)
    batch_record = {"per_process": config.train.batch_size, "world_size": world, "global": sampler.batch_size}

    checkpoint = run / "checkpoint"
    if resume:
        meta = read_meta(checkpoint)
        resumed_extra = meta.extra
        load_weights(checkpoint, model)
        state = restore_training_state(checkpoint, optimizer, schedule, scaler)
        start_step, skipped = int(state["step"]), int(state["skipped"])
        log(f"resuming {run} at step {start_step} (checkpoint kind {meta.kind})")
        before = meta.extra.get("batch", {}).get("global")
        if before is not None and before != sampler.batch_size:
            log(f"note: global batch {sampler.batch_size} (batch_size {config.train.batch_size} x {world} processes) "
                f"but the run so far used {before}: from here on batches differ from the original run's")
    elif init_from is not None:
        fresh = warm_start(init_from, model)
        log(f"initialized weights from {init_from}"
            + (f" ({', '.join(fresh)} kept fresh: another corpus's speakers)" if fresh else ""))
    # Globally unused parameters (the new-speaker slot when no utterance of a batch is routed to it) keep no
    # gradient, as in one process; wrapping broadcasts rank 0's weights (a resumed or --init-from run loaded the
    # same file on every rank anyway).
    net = DistributedDataParallel(model, find_unused_parameters=True) if context.distributed else model
    writer = log_file = None
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(config, run / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"), purge_step=start_step if resume else None)
        log_file = (run / "log.jsonl").open("a", buffering=1)  # line-buffered: readable while training
    loss_fn = FastSpeech2Loss(LossWeights())
    result = TrainResult(run=run, step=start_step, skipped_steps=skipped)
    consecutive_bad = 0
    model.train()
    forked = [device] if device.type == "cuda" else []

    def save(step: int) -> None:
        state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "step": step, "skipped": result.skipped_steps}
        meta = checkpoint_meta(config, data, step, "train")
        meta.extra["compute"] = compute_record(step, time.perf_counter() - started, resumed_extra,
                                               None if resume else init_from)
        meta.extra["batch"] = batch_record
        save_checkpoint(checkpoint, model, meta, state)

    if main and start_step == 0 and config.train.steps > 0:
        # The untrained model's validation loss: the start that later validation losses are read against.
        with torch.random.fork_rng(devices=forked):
            values = validate(model, data, device, config.train.batch_size)
        if values:
            result.val_losses.append({"step": 0, **values})
            log_file.write(json.dumps({"kind": "val", "step": 0, **values}) + "\n")
            for name, value in values.items():
                writer.add_scalar(f"val/{name}", value, 0)
    bar = tqdm(range(start_step, config.train.steps), initial=start_step, total=config.train.steps,
               desc="train", unit="step", disable=not progress)
    try:
        for step in bar:
            loss_fn.weights.bin = _bin_weight(step, config.train.bin_loss_start, config.train.bin_loss_ramp)
            batch = data.collator(sampler.batch(step, context.rank, world)).to(device)
            with torch.random.fork_rng(devices=forked):
                torch.manual_seed(_step_seed(config.train.seed, step, context.rank))
                with autocast(device, precision):
                    terms = loss_fn(net(batch), batch)
            if context.distributed:
                agreed = _global_step(terms, unit_counts(batch), loss_fn.weights, world)
            else:
                agreed = _GlobalStep(bad=not bool(torch.isfinite(terms.total)), objective=terms.total, values={})
            optimizer.zero_grad(set_to_none=True)
            if agreed.bad:
                # A non-finite loss would poison Adam's moments: skip the update, count it, stop if it persists.
                result.skipped_steps += 1
                consecutive_bad += 1
                if consecutive_bad >= 10:
                    raise TrainingError(f"10 consecutive non-finite losses at step {step}; the last good "
                                        f"checkpoint is {checkpoint}")
                schedule.step()
                continue
            consecutive_bad = 0
            scaler.scale(agreed.objective).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trained, config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            done = step + 1
            if main and (done % config.train.log_every == 0 or done == config.train.steps):
                values = agreed.values or terms.as_floats()
                for name, value in values.items():
                    writer.add_scalar(f"train/{name}", value, done)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], done)
                record = {"step": done, **values}
                result.train_losses.append(record)
                log_file.write(json.dumps({"kind": "train", **record}) + "\n")
                bar.set_postfix(mel=f"{values['mel']:.3f}", total=f"{values['total']:.3f}")
            if main and (done % config.train.val_every == 0 or done == config.train.steps):
                # Validation must not move the training RNG, or a resumed run would diverge from this one.
                with torch.random.fork_rng(devices=forked):
                    values = validate(model, data, device, config.train.batch_size)
                    if values:
                        for name, value in values.items():
                            writer.add_scalar(f"val/{name}", value, done)
                        record = {"step": done, **values}
                        result.val_losses.append(record)
                        log_file.write(json.dumps({"kind": "val", **record}) + "\n")
                    _log_media(writer, model, data, device, done, vocoder)
            if main and (done % config.train.checkpoint_every == 0 or done == config.train.steps):
                save(done)
            result.step = done
    finally:
        bar.close()
        if main:
            writer.close()
            log_file.close()
    result.seconds = time.perf_counter() - started
    return result
