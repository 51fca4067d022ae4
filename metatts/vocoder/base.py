"""The one interface every vocoder implements, and the check that pairs it with an acoustic model.

A vocoder only makes sense for mels computed exactly the way it was trained on: the same sample rate, STFT
size, hop, window, mel band edges and log floor. A mismatch rarely crashes — it produces buzzy or pitch-shifted
audio — so the convention is a value carried by every vocoder and compared, field by field, before use.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch

from metatts.config.schema import AudioConfig


class VocoderError(RuntimeError):
    """A vocoder cannot be loaded or used as asked; the message says which parameter, key or shape is wrong."""


@dataclass(frozen=True)
class MelConvention:
    """How the log-mel a vocoder expects was computed (the HiFi-GAN convention: natural log of a clamped
    slaney-normalised mel magnitude). Defaults are the universal HiFi-GAN V1 checkpoint's."""

    sample_rate: int = 22050  # Hz
    n_fft: int = 1024  # STFT size in samples
    hop_length: int = 256  # samples per mel frame; the vocoder outputs exactly this many per frame
    win_length: int = 1024  # Hann window length in samples
    n_mels: int = 80  # mel bands
    fmin: float = 0.0  # lowest mel band edge (Hz)
    fmax: float = 8000.0  # highest mel band edge (Hz)
    log_floor: float = 1e-5  # magnitude clamp before the log; sets the level silence is encoded at

    @classmethod
    def from_audio_config(cls, audio: AudioConfig) -> MelConvention:
        return cls(**{f.name: getattr(audio, f.name) for f in fields(cls)})


def convention_mismatches(expected: MelConvention, actual: MelConvention) -> list[str]:
    """Human-readable lines, one per differing field (empty when the conventions agree)."""
    lines = []
    for f in fields(MelConvention):
        a, b = getattr(expected, f.name), getattr(actual, f.name)
        # Floats arrive from YAML and JSON as 8000 or 8000.0; only a real difference counts.
        if not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12):
            lines.append(f"{f.name}: vocoder expects {a}, audio config has {b}")
    return lines


class Vocoder(ABC):
    """Turns log-mels [B, n_mels, T] into waveforms [B, T * hop_length] in [-1, 1].

    Padded batches are fine: frame t only influences samples near t * hop_length, so callers cut each
    output to its own ``frames * hop_length``. A single mel [n_mels, T] gives a single wave [T * hop_length].
    The output is on the input's device.
    """

    def __init__(self, convention: MelConvention) -> None:
        self.convention = convention

    # The audio parameters, read-only, so code can ask ``vocoder.sample_rate`` without knowing the convention type.
    @property
    def sample_rate(self) -> int:
        return self.convention.sample_rate

    @property
    def hop_length(self) -> int:
        return self.convention.hop_length

    @property
    def n_fft(self) -> int:
        return self.convention.n_fft

    @property
    def win_length(self) -> int:
        return self.convention.win_length

    @property
    def n_mels(self) -> int:
        return self.convention.n_mels

    @property
    def fmin(self) -> float:
        return self.convention.fmin

    @property
    def fmax(self) -> float:
        return self.convention.fmax

    @property
    def log_floor(self) -> float:
        return self.convention.log_floor

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        if not isinstance(log_mel, torch.Tensor):
            raise VocoderError(f"{self.name} takes a torch.Tensor log-mel, got {type(log_mel).__name__}")
        single = log_mel.dim() == 2
        batch = log_mel.unsqueeze(0) if single else log_mel
        if batch.dim() != 3:
            raise VocoderError(f"{self.name} takes a log-mel [B, n_mels, T] or [n_mels, T], got shape "
                               f"{tuple(log_mel.shape)}")
        if batch.shape[1] != self.n_mels:
            hint = " (it looks transposed: use [B, n_mels, T])" if batch.shape[2] == self.n_mels else ""
            raise VocoderError(f"{self.name} expects {self.n_mels} mel bands on dim 1, got shape "
                               f"{tuple(log_mel.shape)}{hint}")
        if batch.shape[2] == 0:
            wave = batch.new_zeros(batch.shape[0], 0)
        else:
            wave = self.synthesize(batch.float()).to(log_mel.device)
        return wave[0] if single else wave

    @abstractmethod
    def synthesize(self, log_mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] float log-mel (checked) -> [B, T * hop_length] wave in [-1, 1]."""

    def __repr__(self) -> str:
        c = self.convention
        return (f"{self.name}({c.sample_rate} Hz, hop {c.hop_length}, n_fft {c.n_fft}, {c.n_mels} mels "
                f"{c.fmin:g}-{c.fmax:g} Hz)")


def check_audio_params(vocoder: Vocoder, audio: AudioConfig | MelConvention) -> None:
    """Raise VocoderError naming every parameter where the vocoder's convention differs from ``audio``."""
    actual = audio if isinstance(audio, MelConvention) else MelConvention.from_audio_config(audio)
    lines = convention_mismatches(vocoder.convention, actual)
    if lines:
        raise VocoderError(f"{vocoder.name} was made for other mels than this audio config produces:\n  "
                           + "\n  ".join(lines)
                           + "\nPrepare the features with the vocoder's parameters, or choose another vocoder "
                             "(a checkpoint trained on these parameters, or griffinlim, which follows any config).")
