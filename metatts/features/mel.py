"""Log-mel spectrogram in exactly the universal HiFi-GAN V1 convention (jik876/hifi-gan ``meldataset.py``).

Any deviation (centre padding, power instead of magnitude, log10, another filterbank norm) makes mels that the
pretrained vocoder renders as noise, so the steps below mirror that file one for one:

1. reflect-pad ``(n_fft - hop) / 2`` samples on both sides;
2. ``torch.stft(center=False, window=hann(win_length), onesided, return_complex)``;
3. magnitude ``sqrt(re² + im² + 1e-9)`` (magnitude, not power);
4. mel filterbank ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (slaney norm, htk=False);
5. natural log of the mel clamped at ``log_floor``.

Frame count: with that padding, frame ``i`` covers samples ``[i*hop - pad, i*hop - pad + n_fft)``, centred at
``i*hop + hop/2``, and a signal of ``n`` samples gives ``n // hop`` frames (for ``n >= hop``; reflect padding also
needs ``n > pad``). Pitch (``pitch.py``) uses the same framing, so frame ``i`` means the same audio everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np
import torch
from torch import Tensor, nn

from metatts.config.schema import AudioConfig

# The constant inside HiFi-GAN's magnitude: keeps sqrt differentiable at exact zeros and gives silent bins a
# floor of ~3.2e-5 (so a silent frame's mel still reaches log_floor only through the clamp).
MAGNITUDE_EPSILON = 1e-9


@dataclass
class Spectra:
    """One STFT, two views: ``log_mel`` [..., n_mels, frames] and the linear ``magnitude`` [..., n_fft//2+1,
    frames] it came from (energy is computed from the magnitude, so the STFT runs once)."""

    log_mel: Tensor
    magnitude: Tensor


def reflect_pad_amount(n_fft: int, hop_length: int) -> int:
    """Samples of reflect padding on each side; ``(n_fft - hop) // 2`` as HiFi-GAN's ``int((n_fft-hop)/2)``."""
    return (n_fft - hop_length) // 2


def frame_count(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Frames the HiFi-GAN framing gives for ``n_samples``: ``1 + (n + 2*pad - n_fft) // hop``, which is
    ``n // hop`` when ``n_fft - hop`` is even (all usual settings); 0 when the signal is shorter than a frame."""
    padded = n_samples + 2 * reflect_pad_amount(n_fft, hop_length)
    return max(0, 1 + (padded - n_fft) // hop_length)


def frame_energy(magnitude: Tensor) -> Tensor:
    """Per-frame energy as FastSpeech2 defines it: the L2 norm over frequency of the STFT magnitude."""
    return torch.linalg.vector_norm(magnitude, dim=-2)


class MelSpectrogram(nn.Module):
    """Waveform → log-mel, owning its mel filterbank and Hann window as buffers.

    ``module(wave)`` takes [B, T] or [T] float audio in [-1, 1] at ``sample_rate`` and returns the log-mel
    [B, n_mels, T // hop] (or [n_mels, T // hop] for a 1-D input); ``module.spectra(wave)`` also returns the linear
    magnitude. Computation follows the input's device: the buffers are moved to it when needed, so the module
    can stay on the CPU while a CUDA batch goes through (``.to(device)`` avoids the copy).
    """

    def __init__(self, sample_rate: int = 22050, n_fft: int = 1024, hop_length: int = 256, win_length: int = 1024,
                 n_mels: int = 80, fmin: float = 0.0, fmax: float | None = 8000.0, log_floor: float = 1e-5):
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) is longer than n_fft ({n_fft})")
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self.log_floor = log_floor
        self.pad = reflect_pad_amount(n_fft, hop_length)
        basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        # persistent=False: both are functions of the constructor values, so they do not belong in checkpoints.
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    @classmethod
    def from_config(cls, audio: AudioConfig) -> "MelSpectrogram":
        return cls(sample_rate=audio.sample_rate, n_fft=audio.n_fft, hop_length=audio.hop_length,
                   win_length=audio.win_length, n_mels=audio.n_mels, fmin=audio.fmin, fmax=audio.fmax,
                   log_floor=audio.log_floor)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for a signal of ``n_samples`` samples (``n_samples // hop_length``)."""
        return frame_count(n_samples, self.n_fft, self.hop_length)

    def magnitude(self, wave: Tensor) -> Tensor:
        """Linear STFT magnitude [B, n_fft//2+1, frames] (or without B for 1-D input)."""
        if wave.dim() not in (1, 2):
            raise ValueError(f"expected a waveform [T] or [B, T], got shape {tuple(wave.shape)}")
        if wave.shape[-1] <= self.pad:
            raise ValueError(f"{wave.shape[-1]} samples is too short for reflect padding of {self.pad} "
                             f"(need more than {self.pad}, and at least {self.hop_length} for one frame)")
        batched = wave.dim() == 2
        # F.pad's reflect mode wants a channel dimension: [B, 1, T].
        padded = nn.functional.pad(wave.reshape(-1, 1, wave.shape[-1]), (self.pad, self.pad), mode="reflect")
        spec = torch.stft(padded.squeeze(1), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window.to(device=wave.device, dtype=wave.dtype), center=False,
                          normalized=False, onesided=True, return_complex=True)
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + MAGNITUDE_EPSILON)
        return magnitude if batched else magnitude.squeeze(0)

    def log_mel_from_magnitude(self, magnitude: Tensor) -> Tensor:
        """Mel projection and log compression of a linear magnitude from ``magnitude``."""
        mel = torch.matmul(self.mel_basis.to(device=magnitude.device, dtype=magnitude.dtype), magnitude)
        return torch.log(torch.clamp(mel, min=self.log_floor))

    def spectra(self, wave: Tensor) -> Spectra:
        """Log-mel and the linear magnitude from a single STFT."""
        magnitude = self.magnitude(wave)
        return Spectra(log_mel=self.log_mel_from_magnitude(magnitude), magnitude=magnitude)

    def forward(self, wave: Tensor) -> Tensor:
        return self.log_mel_from_magnitude(self.magnitude(wave))

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
                f"win_length={self.win_length}, n_mels={self.n_mels}, fmin={self.fmin}, fmax={self.fmax}, "
                f"log_floor={self.log_floor}")


def mel_frequencies(module: MelSpectrogram) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of ``module``, as librosa places them (band i peaks here)."""
    return librosa.mel_frequencies(n_mels=module.n_mels + 2, fmin=module.fmin,
                                   fmax=module.fmax if module.fmax is not None else module.sample_rate / 2)[1:-1]
