"""`metatts train`: multi-speaker training of the acoustic model over the meta-train speakers.

This is both a product (a voice bank) and the baseline meta-learning must beat. A run folder holds::

    config.yaml        the resolved config
    checkpoint/        the latest checkpoint (weights, metadata, training state for --resume)
    log.jsonl          one line per logged step and per validation
    tb/                TensorBoard: loss terms, learning rate, validation mels, alignment plots, audio

``--resume`` continues a run exactly (optimizer, schedule, step, RNG; the batch sampler is a function of the
step); ``--init-from`` starts a new run from another checkpoint's weights only.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from metatts.config import Config, save_config
from metatts.episodes.sampler import BatchSampler
from metatts.model.losses import FastSpeech2Loss, LossWeights
from metatts.runtime.checkpoint import load_weights, read_meta, save_checkpoint
from metatts.runtime.env import resolve_device, rng_state, seed_everything, set_threads
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


def train(config: Config, run: str | Path, *, resume: bool = False, init_from: str | Path | None = None,
          progress: bool = True, log=print, vocoder=None) -> TrainResult:
    """Train ``config.train.steps`` updates into the run folder ``run``. ``vocoder`` (optional) renders
    validation audio for TensorBoard."""
    run = Path(run)
    started = time.perf_counter()
    device = resolve_device(config.train.device)
    set_threads(config.train.threads)
    seed_everything(config.train.seed)
    data = RunData.load(config)
    model = build_model(config, len(data.symbols), len(data.speakers)).to(device)
    # Low-rank adapters stay at zero effect here: trained on every speaker they would only re-parameterize the
    # shared weights; they are per-voice fast weights, learned by meta-training and adaptation.
    adapters = set(model.parameter_groups()["adapters"])
    trained = [p for n, p in model.named_parameters() if n not in adapters]
    optimizer = torch.optim.Adam(trained, lr=config.train.lr, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_inverse_sqrt(s, config.train.warmup_steps))
    amp = config.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_step, skipped = 0, 0
    resumed_extra: dict | None = None  # the resumed checkpoint's metadata extras (its compute record)

    checkpoint = run / "checkpoint"
    if resume:
        meta = read_meta(checkpoint)
        resumed_extra = meta.extra
        load_weights(checkpoint, model)
        state = restore_training_state(checkpoint, optimizer, schedule, scaler)
        start_step, skipped = int(state["step"]), int(state["skipped"])
        log(f"resuming {run} at step {start_step} (checkpoint kind {meta.kind})")
    elif init_from is not None:
        fresh = warm_start(init_from, model)
        log(f"initialized weights from {init_from}"
            + (f" ({', '.join(fresh)} kept fresh: another corpus's speakers)" if fresh else ""))
    run.mkdir(parents=True, exist_ok=True)
    save_config(config, run / "config.yaml")

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run / "tb"), purge_step=start_step if resume else None)
    loss_fn = FastSpeech2Loss(LossWeights())
    sampler = BatchSampler(data.train, config.train.batch_size, seed=config.train.seed)
    result = TrainResult(run=run, step=start_step, skipped_steps=skipped)
    consecutive_bad = 0
    model.train()
    log_file = (run / "log.jsonl").open("a", buffering=1)  # line-buffered: readable while training

    def save(step: int) -> None:
        state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "step": step, "skipped": result.skipped_steps}
        meta = checkpoint_meta(config, data, step, "train")
        meta.extra["compute"] = compute_record(step, time.perf_counter() - started, resumed_extra,
                                               None if resume else init_from)
        save_checkpoint(checkpoint, model, meta, state)

    if start_step == 0 and config.train.steps > 0:
        # The untrained model's validation loss: the start that later validation losses are read against.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
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
            batch = data.collator(sampler.batch(step)).to(device)
            with torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext():
                terms = loss_fn(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(terms.total):
                # A non-finite loss would poison Adam's moments: skip the update, count it, stop if it persists.
                result.skipped_steps += 1
                consecutive_bad += 1
                if consecutive_bad >= 10:
                    raise TrainingError(f"10 consecutive non-finite losses at step {step}; the last good "
                                        f"checkpoint is {checkpoint}")
                schedule.step()
                continue
            consecutive_bad = 0
            scaler.scale(terms.total).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trained, config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            done = step + 1
            if done % config.train.log_every == 0 or done == config.train.steps:
                values = terms.as_floats()
                for name, value in values.items():
                    writer.add_scalar(f"train/{name}", value, done)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], done)
                record = {"step": done, **values}
                result.train_losses.append(record)
                log_file.write(json.dumps({"kind": "train", **record}) + "\n")
                bar.set_postfix(mel=f"{values['mel']:.3f}", total=f"{values['total']:.3f}")
            if done % config.train.val_every == 0 or done == config.train.steps:
                # Validation must not move the training RNG, or a resumed run would diverge from this one.
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    values = validate(model, data, device, config.train.batch_size)
                    if values:
                        for name, value in values.items():
                            writer.add_scalar(f"val/{name}", value, done)
                        record = {"step": done, **values}
                        result.val_losses.append(record)
                        log_file.write(json.dumps({"kind": "val", **record}) + "\n")
                    _log_media(writer, model, data, device, done, vocoder)
            if done % config.train.checkpoint_every == 0 or done == config.train.steps:
                save(done)
            result.step = done
    finally:
        bar.close()
        writer.close()
        log_file.close()
    result.seconds = time.perf_counter() - started
    return result
