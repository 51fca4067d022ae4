"""What goes into the acoustic model and what comes out: named fields with explicit lengths, never tuples.

Layout conventions (the whole package follows them):
- phoneme ids ``[B, L]`` with 0 as padding; mels ``[B, n_mels, T]`` (log-mel, channels first, as features are stored);
- frame-level pitch and energy ``[B, T]``, already normalized by the caller (z-scored log-F0 with unvoiced frames
  interpolated, z-scored energy), so the model needs no statistics to read them;
- ``speakers`` holds a row of the speaker table, or ``NEW_SPEAKER`` (-1) for the learned new-speaker slot that
  meta-learning and fast adaptation use.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from metatts.align.aligner import AlignmentOutput

NEW_SPEAKER = -1  # speaker id meaning "use the new-speaker slot (φ) instead of a row of the training table"


def lengths_to_mask(lengths: Tensor, max_length: int) -> Tensor:
    """``[B]`` lengths -> ``[B, max_length]`` bool mask, True at valid positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def _moved(obj, device: torch.device | str):
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), Tensor)})


@dataclass
class Batch:
    """A padded batch of utterances for training or teacher-forced evaluation.

    ``durations`` (frames per phoneme, e.g. from TextGrids or cached aligner output) is optional: when given it
    replaces the built-in aligner and must sum to ``mel_lengths`` per utterance.
    """

    phonemes: Tensor  # [B, L] long, 0 = padding
    phoneme_lengths: Tensor  # [B] long
    mels: Tensor  # [B, n_mels, T] log-mel
    mel_lengths: Tensor  # [B] long
    pitch: Tensor  # [B, T] normalized log-F0 per frame
    energy: Tensor  # [B, T] normalized energy per frame
    speakers: Tensor  # [B] long: row of the speaker table, or NEW_SPEAKER
    durations: Tensor | None = None  # [B, L] long, optional external durations

    def __post_init__(self) -> None:
        # Shape checks only (no device sync), so a collate bug fails here with the field's name, not deep inside.
        b, length = self.phonemes.shape
        frames = self.mels.shape[-1]
        expect = {"phoneme_lengths": (b,), "mel_lengths": (b,), "pitch": (b, frames), "energy": (b, frames),
                  "speakers": (b,)}
        if self.durations is not None:
            expect["durations"] = (b, length)
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Batch.{name}: expected shape {shape}, got {tuple(getattr(self, name).shape)}")
        if self.mels.dim() != 3 or self.mels.shape[0] != b:
            raise ValueError(f"Batch.mels: expected [B={b}, n_mels, T], got {tuple(self.mels.shape)}")

    @property
    def size(self) -> int:
        return self.phonemes.shape[0]

    @property
    def phoneme_mask(self) -> Tensor:
        return lengths_to_mask(self.phoneme_lengths, self.phonemes.shape[1])

    @property
    def mel_mask(self) -> Tensor:
        return lengths_to_mask(self.mel_lengths, self.mels.shape[-1])

    def to(self, device: torch.device | str) -> Batch:
        return _moved(self, device)

    def with_durations(self, durations: Tensor | None) -> Batch:
        """The same batch with external durations set (e.g. aligner durations cached for an inner loop)."""
        return replace(self, durations=durations)


@dataclass
class ModelOutput:
    """What a forward pass produced. Frame-level fields have the batch's T when ``teacher_forced``."""

    mel: Tensor  # [B, n_mels, T] mel head output, zero at padded frames
    mel_postnet: Tensor | None  # [B, n_mels, T] after the postnet's residual, or None without a postnet
    mel_lengths: Tensor  # [B] frames produced (sum of the durations used)
    mel_mask: Tensor  # [B, T] True at valid frames
    phoneme_mask: Tensor  # [B, L] True at valid phonemes
    log_durations: Tensor  # [B, L] predicted log(1 + frames)
    durations: Tensor  # [B, L] long, the durations the length regulator used
    duration_targets: Tensor | None  # [B, L] long, aligner or external durations (None if neither ran)
    pitch: Tensor  # [B, T] predicted normalized pitch per frame
    energy: Tensor  # [B, T] predicted normalized energy per frame
    alignment: AlignmentOutput | None  # the built-in aligner's output when it ran (no external durations)
    teacher_forced: bool  # True when durations, pitch and energy came from the batch (losses are defined)


@dataclass
class Synthesis:
    """Result of ``AcousticModel.infer``."""

    mels: Tensor  # [B, n_mels, T] log-mel, zero beyond mel_lengths
    mel_lengths: Tensor  # [B]
    durations: Tensor  # [B, L] long frames per phoneme

    def to(self, device: torch.device | str) -> Synthesis:
        return _moved(self, device)

