"""FastSpeech 2 losses plus the aligner's, every term masked to valid positions and returned by name."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from metatts.align.aligner import bin_loss, forward_sum_loss
from metatts.model.batch import Batch, ModelOutput


@dataclass
class LossWeights:
    """Weight of each term in the total (candidates for a ``train.loss`` config section)."""

    mel: float = 1.0
    postnet_mel: float = 1.0
    duration: float = 1.0
    pitch: float = 1.0
    energy: float = 1.0
    forward_sum: float = 1.0
    bin: float = 0.0  # RAD-TTS turns this on once the soft alignment has converged (e.g. ramp to 1 over 1-2k steps)
    blank_logprob: float = -1.0  # CTC blank of the forward-sum loss


@dataclass
class LossTerms:
    """Each term (a 0-d tensor; zero when it does not apply) and their weighted sum."""

    total: Tensor
    mel: Tensor
    postnet_mel: Tensor
    duration: Tensor
    pitch: Tensor
    energy: Tensor
    forward_sum: Tensor
    bin: Tensor

    def as_floats(self) -> dict[str, float]:
        """For logging: name -> float (one device sync for all terms)."""
        names = [f.name for f in fields(self)]
        values = torch.stack([getattr(self, n).detach().float() for n in names]).tolist()
        return dict(zip(names, values))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` (broadcastable) is True."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1)


class FastSpeech2Loss:
    """``loss(output, batch) -> LossTerms``. Mel terms are L1 over valid frames and bands; durations are MSE in
    the log(1 + frames) domain over valid phonemes; pitch and energy are MSE over valid frames; the aligner adds
    its forward-sum (and optional bin) loss when it ran. Weights are read at every call, so they can be scheduled.
    """

    def __init__(self, weights: LossWeights | None = None):
        self.weights = weights or LossWeights()

    def __call__(self, output: ModelOutput, batch: Batch) -> LossTerms:
        if not output.teacher_forced:
            raise ValueError("losses need a teacher-forced output (forward without use_predicted_durations): "
                             "with predicted durations the frames do not line up with the targets")
        w = self.weights
        zero = output.mel.new_zeros(())
        frame_mask = batch.mel_mask  # [B, T]
        mel = _masked_mean((output.mel - batch.mels).abs(), frame_mask[:, None, :])
        postnet = (_masked_mean((output.mel_postnet - batch.mels).abs(), frame_mask[:, None, :])
                   if output.mel_postnet is not None else zero)
        if output.duration_targets is not None:
            target = torch.log1p(output.duration_targets.to(output.log_durations.dtype))
            duration = _masked_mean((output.log_durations - target) ** 2, output.phoneme_mask)
        else:
            duration = zero
        pitch = _masked_mean((output.pitch - batch.pitch) ** 2, frame_mask)
        energy = _masked_mean((output.energy - batch.energy) ** 2, frame_mask)
        if output.alignment is not None:
            forward_sum = forward_sum_loss(output.alignment, w.blank_logprob)
            binarization = bin_loss(output.alignment) if w.bin > 0 else zero
        else:
            forward_sum = binarization = zero
        terms = LossTerms(total=zero, mel=mel, postnet_mel=postnet, duration=duration, pitch=pitch, energy=energy,
                          forward_sum=forward_sum, bin=binarization)
        terms.total = self.frame_total(terms) + self.phoneme_total(terms) + w.forward_sum * forward_sum \
            + w.bin * binarization
        return terms

    # The total is split by what each term averages over, so a loss computed over several batches (the support
    # clips in length buckets, ``metatts.adapt.fast``) can weight each part by its share of frames or phonemes.
    def frame_total(self, terms: LossTerms) -> Tensor:
        """The weighted terms that are means over frames: mel, postnet mel, pitch, energy."""
        w = self.weights
        return w.mel * terms.mel + w.postnet_mel * terms.postnet_mel + w.pitch * terms.pitch + w.energy * terms.energy

    def phoneme_total(self, terms: LossTerms) -> Tensor:
        """The weighted terms that are means over phonemes: duration."""
        return self.weights.duration * terms.duration


# What each term of FastSpeech2Loss averages over (its ``_masked_mean`` denominator, or the CTC batch mean).
TERM_UNITS = {"mel": "frames", "postnet_mel": "frames", "duration": "phonemes", "pitch": "frames",
              "energy": "frames", "forward_sum": "utterances", "bin": "frames"}
UNITS = ("frames", "phonemes", "utterances")


def unit_counts(batch: Batch) -> Tensor:
    """``[frames, phonemes, utterances]`` of ``batch`` (float64, on its device), in the order of ``UNITS``.

    A term's mean over a batch split into shards is Σ_shards term × count / Σ_shards count (count of its unit):
    distributed training weights each rank's terms this way, so W ranks equal one process with their joint batch.
    """
    return torch.stack([batch.mel_lengths.sum(), batch.phoneme_lengths.sum(),
                        torch.tensor(batch.size, device=batch.mel_lengths.device)]).double()
