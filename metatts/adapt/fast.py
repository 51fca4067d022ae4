"""Fast adaptation at test time: the meta-learned inner loop, run from φ0 on a new speaker's clips.

    clips ─ ClipSet.batch() ─ aligner (once, no graph) ─ batch with durations
    φ0 = the checkpoint's new-speaker slot (the speaker groups; ``groups`` may name others), plus its reference
         encoder's prediction from the clips when it has one (``adapt.start``; 0 steps is then zero-shot cloning)
    φ_{i+1} = φ_i − α ⊙ ∇φ L_support(θ, φ_i)        k steps, eval mode (no dropout: deterministic), no graph kept
    voice pack = φ_k (only the adapted tensors) + metadata (base checkpoint hash, steps, losses, clips, audio)

α is, by default, what the checkpoint learned: a meta checkpoint's per-parameter Meta-SGD rates (via
``load_inner_lr``; per step when meta-training learned one per inner step, the last reused for steps past those),
else its config's ``meta.inner_lr``. ``optimizer="adam"`` runs a stateful Adam instead (for
many more steps than meta-training used); its step size is per element, so the SGD rates do not transfer and it
has its own default (``ADAM_LR``). ``l2_anchor`` = λ adds λ‖φ − φ0‖² (L2-SP) to the support loss.

At synthesis time a pack can be blended with its initialization, φ = (1 − α)·φ0 + α·φ' (weight-space
interpolation as in Speech-FT): α = 0 is the un-adapted new-speaker voice, α = 1 the adapted one. φ0 is read from
the model the pack is applied to, which the pack's base-checkpoint hash guarantees is the one it came from.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metatts.adapt.adapters import OPTIMIZERS, make_adapter
from metatts.adapt.clips import ClipSet
from metatts.adapt.start import starting_params
from metatts.adapt.voicepack import VoicePack, check_fits, load_voice_pack, save_voice_pack
from metatts.checkpoints import load_inner_lr
from metatts.config import config_from_dict
from metatts.meta.inner_loop import LossFn
from metatts.model.acoustic import select_parameters
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.checkpoint import read_meta, weights_digest

ADAM_LR = 1e-2  # Adam's default per-element step when no lr is given (the SGD inner rates do not apply to Adam)
# A final support loss above this multiple of the initial one is a diverged adaptation (a too-large --lr): the voice
# is marked, warned about, and not saved unless forced. Adaptation that works lowers the loss.
DIVERGENCE_FACTOR = 5.0


@dataclass
class Voice:
    """An adapted voice: its voice pack (adapted tensors + metadata) and, when made in this process, the clips it
    was adapted on. Pass it to ``TTS.synthesize(..., voice=voice)``; ``save`` writes the pack."""

    pack: VoicePack
    clips: ClipSet | None = None

    @property
    def params(self) -> dict[str, Tensor]:
        return self.pack.params

    @property
    def info(self) -> dict:
        return self.pack.info

    @property
    def losses(self) -> list[float]:
        """Support loss at φ0, φ1, …, φk."""
        return list(self.pack.info.get("support_loss", []))

    @property
    def seconds(self) -> float:
        """Wall time of the adaptation (aligner + k steps), feature extraction excluded."""
        return float(self.pack.info.get("adapt_seconds", float("nan")))

    @property
    def bytes(self) -> int:
        """Bytes of the adapted tensors (the file adds a small header and the metadata)."""
        return self.pack.bytes

    def interpolated(self, alpha: float, model: nn.Module) -> dict[str, Tensor]:
        """φ = (1 − α)·φ0 + α·φ', with φ0 the current values of the same tensors in ``model`` (the base model)."""
        return interpolate(self.pack.params, model, alpha)

    @property
    def diverged(self) -> bool:
        """Whether the support loss grew by more than ``DIVERGENCE_FACTOR`` (the pack is then not saved unless
        forced)."""
        return self.pack.diverged

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the pack; a diverged adaptation is refused unless ``force``."""
        return save_voice_pack(path, self.pack, force=force)

    @classmethod
    def load(cls, path: str | os.PathLike, checkpoint: str | os.PathLike, model: nn.Module | None = None) -> "Voice":
        """A saved pack, checked against ``checkpoint`` (and ``model``'s parameters when given)."""
        return cls(load_voice_pack(path, checkpoint, model))


def interpolate(adapted: Mapping[str, Tensor], model: nn.Module, alpha: float) -> dict[str, Tensor]:
    """(1 − α)·φ0 + α·φ' per tensor, φ0 taken from ``model``. α must be in [0, 1]; α = 1 returns φ' itself."""
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be in [0, 1] (0: the un-adapted voice, 1: the adapted one), got {alpha}")
    if alpha == 1.0:
        return dict(adapted)
    check_fits(dict(adapted), model)
    named = dict(model.named_parameters())
    return {n: torch.lerp(named[n].detach().to(t.device), t, alpha) for n, t in adapted.items()}


# ------------------------------------------------------------------------------------------------ learning rates
def resolve_lr(checkpoint: str | os.PathLike, fast: Mapping[str, Tensor], lr: float | None, optimizer: str,
               config_lr: float) -> tuple[float | dict[str, Tensor] | list[dict[str, Tensor]], str]:
    """(rates for the inner loop, a description for the report). Learned per-step rates (``meta.inner_lr_per_step``)
    come back as a list, one rate dict per meta-trained step; steps past its end reuse the last
    (``inner_loop.adapt``)."""
    if lr is not None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        return float(lr), f"given {lr:g}"
    if optimizer == "adam":
        return ADAM_LR, f"adam default {ADAM_LR:g}"
    learned = load_inner_lr(checkpoint)
    if not isinstance(learned, (Mapping, list)):
        return float(learned), f"config meta.inner_lr {float(learned):g}"
    schedule = learned if isinstance(learned, list) else [learned]
    own = [n for n in fast if n in schedule[0]]
    if not own:
        return float(config_lr), f"config meta.inner_lr {config_lr:g} (no learned rate for these groups)"
    device = next(iter(fast.values())).device
    rates = [{name: step[name].to(device, tensor.dtype) if name in step else float(config_lr)
              for name, tensor in fast.items()} for step in schedule]
    mean = float(torch.cat([step[n].detach().flatten().float() for step in schedule for n in own]).mean())
    extra = f"; config meta.inner_lr {config_lr:g} for {len(fast) - len(own)} other tensors" if len(own) < len(fast) \
        else ""
    if isinstance(learned, list):
        return rates, (f"learned per-step for {len(rates)} steps, the last reused after (mean {mean:.3g}){extra}")
    return rates[0], f"learned per-parameter (mean {mean:.3g}){extra}"


# ------------------------------------------------------------------------------------------------ support loss
def length_buckets(lengths: Sequence[int], max_ratio: float = 1.3) -> list[list[int]]:
    """Indices grouped by length so that no bucket's longest item exceeds ``max_ratio`` × its shortest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= max_ratio * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def support_loss_fn(model: nn.Module, frozen: Mapping[str, Tensor], batches: Sequence[Batch],
                    loss: FastSpeech2Loss) -> LossFn:
    """``fast -> L_support``: the FastSpeech 2 loss of the clips as one batch, computed over length buckets.

    Padding a 2 s clip to a 7 s one costs frame-level work (and attention, quadratic in frames) for nothing, so
    the clips run in buckets of similar length and each term is recombined with the weight of its bucket's share
    of frames (mel, pitch, energy: masked means over frames) or of phonemes (duration), which gives the loss of the
    single padded batch (a test checks it). Batches must carry durations (the aligner's forward-sum term is not
    part of the support loss: the aligner does not see the speaker).
    """
    if any(b.durations is None for b in batches):
        raise ValueError("support batches need durations (model.alignment(batch).durations)")
    frames = [float(b.mel_lengths.sum()) for b in batches]
    phonemes = [float(b.phoneme_lengths.sum()) for b in batches]

    def loss_fn(fast: dict[str, Tensor]) -> Tensor:
        total = None
        for batch, f, p in zip(batches, frames, phonemes):
            terms = loss(functional_call(model, {**frozen, **fast}, (batch,)), batch)
            part = loss.frame_total(terms) * (f / sum(frames)) + loss.phoneme_total(terms) * (p / sum(phonemes))
            total = part if total is None else total + part
        return total

    return loss_fn


# ------------------------------------------------------------------------------------------------ adaptation
def adapt_voice(model: nn.Module, checkpoint: str | os.PathLike, clips: ClipSet, *, steps: int = 10,
                lr: float | None = None, groups: Sequence[str] | None = None, optimizer: str = "sgd",
                l2_anchor: float = 0.0, seed: int = 0, digest: str | None = None, meta=None) -> Voice:
    """Adapt ``groups`` (default: the config's ``model.speaker_groups``) of ``model`` -- the weights of
    ``checkpoint`` -- to ``clips`` with ``steps`` inner steps; see the module docstring. ``model`` is left as it
    was (its tensors and train/eval mode). ``digest``/``meta`` save re-reading the checkpoint when known."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not (math.isfinite(l2_anchor) and l2_anchor >= 0):
        raise ValueError(f"l2_anchor must be >= 0, got {l2_anchor}")
    meta = meta if meta is not None else read_meta(checkpoint)
    digest = digest if digest is not None else weights_digest(checkpoint)
    config = config_from_dict(meta.config)
    groups = list(groups) if groups else list(config.model.speaker_groups)
    phi0 = {n: p.detach() for n, p in select_parameters(model, groups).items()}
    if not phi0:
        raise ValueError(f"groups {', '.join(groups)} hold no parameter in this model")
    rates, lr_kind = resolve_lr(checkpoint, phi0, lr, optimizer, config.meta.inner_lr)
    device = next(model.parameters()).device
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in phi0}
    loss = FastSpeech2Loss()

    was_training = model.training
    model.eval()  # dropout off: the same clips and settings give the same voice
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            start = time.perf_counter()
            batches = []
            for bucket in length_buckets([c.frames for c in clips.clips]):
                batch = clips.batch(bucket).to(device)
                batches.append(batch.with_durations(model.alignment(batch).durations))  # MAS once, not per step
            fast0 = starting_params(model, groups, batches, differentiable=False)
            loss_fn = support_loss_fn(model, frozen, batches, loss)
            adapter = make_adapter(optimizer, loss_fn, fast0, rates, l2_anchor=l2_anchor)
            adapter.advance(steps)
            adapted = {n: t.detach().cpu().clone().contiguous() for n, t in adapter.params().items()}
            seconds = time.perf_counter() - start
            with torch.no_grad():  # L(φ_k), outside the timing: reported, not needed by the adaptation
                final = loss_fn(adapter.params())
    finally:
        model.train(was_training)
    losses = [float(x) for x in torch.stack([*adapter.losses, final.detach()]).tolist()]
    if not all(math.isfinite(x) for x in losses) or not all(bool(torch.isfinite(t).all()) for t in adapted.values()):
        raise ValueError(f"adaptation diverged (support loss {losses}): lower --lr or the number of steps")
    info = {
        "steps": steps, "optimizer": optimizer, "lr": lr_kind, "l2_anchor": l2_anchor, "groups": groups,
        "seed": seed, "support_loss": losses, "adapt_seconds": seconds, "feature_seconds": clips.seconds,
        "clips": [{"name": c.name, "seconds": round(c.seconds, 3), "phonemes": len(c.phonemes),
                   **({"unk": c.unknown} if c.unknown else {})} for c in clips.clips],
        "skipped": [{"name": Path(s.path).name, "stage": s.stage, "reason": s.reason} for s in clips.skipped],
        "audio": dict(meta.config.get("audio", {})), "checkpoint_step": meta.step, "checkpoint_kind": meta.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if losses[-1] > DIVERGENCE_FACTOR * losses[0]:
        info["diverged"] = True
        info["warning"] = (f"support loss grew from {losses[0]:.4g} to {losses[-1]:.4g}, "
                           f"{losses[-1] / max(losses[0], 1e-12):.3g} times")
    return Voice(VoicePack(params=adapted, base_checkpoint=digest, info=info), clips=clips)
