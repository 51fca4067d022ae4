"""Griffin-Lim vocoder: no weights, any mel convention, always available — the fallback and the baseline.

Three steps, each undoing one step of the HiFi-GAN log-mel analysis:
  1. exp undoes the natural log (values at the log floor mean "silence" and become 0);
  2. mel → linear magnitude by non-negative least squares against the same slaney mel basis, solved with a few
     multiplicative updates started from the clamped pseudo-inverse (the pseudo-inverse alone leaves negative
     and ringing bins that the phase search then has to live with);
  3. phase recovery by fast Griffin-Lim (Perraudin, Balazs & Søndergaard 2013): alternate projections between
     "has this magnitude" and "is the STFT of a signal", with momentum extrapolation (0.99), which reaches in
     ~30 iterations what plain Griffin-Lim needs hundreds for.

The STFT follows the mel exactly: reflect-pad (n_fft - hop) / 2 on each side, frames at multiples of hop with
no centring, periodic Hann window. So T frames come from, and go back to, T * hop samples. The iterations work
on the padded signal (their fixed point is a real signal's STFT) and the padding is cut at the end.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from metatts.vocoder.base import MelConvention, Vocoder, VocoderError


class GriffinLim(Vocoder):
    """Log-mel → wave by mel inversion and fast Griffin-Lim. Works on the device of its input."""

    def __init__(self, convention: MelConvention, n_iter: int = 32, momentum: float = 0.99,
                 nnls_iter: int = 30, seed: int = 0) -> None:
        super().__init__(convention)
        c = convention
        if (c.n_fft - c.hop_length) % 2:
            raise VocoderError(f"Griffin-Lim needs n_fft - hop_length even to pad both sides equally, got "
                               f"{c.n_fft} - {c.hop_length}")
        if not 0 <= momentum < 1:
            raise VocoderError(f"Griffin-Lim momentum must be in [0, 1), got {momentum}")
        if n_iter < 0 or nnls_iter < 0:
            raise VocoderError("Griffin-Lim iteration counts must be >= 0")
        self.n_iter = n_iter
        self.momentum = momentum
        self.nnls_iter = nnls_iter
        self.seed = seed
        basis = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax)
        self.mel_basis = torch.from_numpy(basis).float()  # [n_mels, n_freq]
        self.mel_pinv = torch.from_numpy(np.linalg.pinv(basis)).float()  # [n_freq, n_mels]
        # torch.stft centres a shorter window inside n_fft; the inverse must use the very same padded window.
        left = (c.n_fft - c.win_length) // 2
        self.window = F.pad(torch.hann_window(c.win_length), (left, c.n_fft - c.win_length - left))

    @property
    def name(self) -> str:
        return "Griffin-Lim"

    @property
    def pad(self) -> int:
        return (self.n_fft - self.hop_length) // 2

    # --- analysis and synthesis in the mel's framing -------------------------------------------------------
    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, L] → complex [B, n_freq, L // hop] in the mel's framing (reflect-padded, not centred)."""
        padded = F.pad(wave.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        return self._stft_padded(padded)

    def _stft_padded(self, padded: torch.Tensor) -> torch.Tensor:
        return torch.stft(padded, self.n_fft, self.hop_length, window=self.window.to(padded.device, padded.dtype),
                          center=False, return_complex=True)

    def _istft_padded(self, spec: torch.Tensor, padded_length: int) -> torch.Tensor:
        """Least-squares inverse (overlap-add of windowed frames over the summed squared window). torch.istft
        refuses center=False because the window envelope is zero at the very first sample; here that sample
        lies in the padding, which is cut, so a tiny clamp on the envelope is enough."""
        window = self.window.to(spec.device, spec.real.dtype)
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[:, None]  # [B, n_fft, T]
        fold = dict(output_size=(1, padded_length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        wave = F.fold(frames, **fold).flatten(1)
        ones = torch.ones(1, self.n_fft, spec.shape[-1], device=spec.device, dtype=window.dtype)
        envelope = F.fold(ones * (window ** 2)[:, None], **fold).flatten(1)
        return wave / envelope.clamp_min(1e-8)

    # --- the three steps ---------------------------------------------------------------------------------
    def mel_to_linear(self, log_mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T] log-mel → [B, n_freq, T] non-negative linear magnitude whose mel is closest to it."""
        basis = self.mel_basis.to(log_mel.device, log_mel.dtype)
        # Magnitudes at the floor were "at most the floor" in analysis: read them as silence.
        mel = (log_mel.exp() - self.log_floor).clamp_min(0.0)
        linear = (self.mel_pinv.to(log_mel.device, log_mel.dtype) @ mel).clamp_min(0.0)
        # Lee-Seung multiplicative updates minimise ||basis @ x - mel||² while keeping x >= 0; bins the basis
        # does not cover (above fmax) keep their zero start. The small start value lets clamped bins recover.
        linear = linear + 1e-6 * (basis.sum(0)[:, None] > 0)
        numerator = basis.T @ mel
        gram = basis.T @ basis
        for _ in range(self.nnls_iter):
            linear = linear * numerator / (gram @ linear + 1e-10)
        return linear

    def phase_recovery(self, magnitude: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """[B, n_freq, T] magnitude → [B, T * hop] wave whose STFT magnitude approximates it."""
        n_iter = self.n_iter if n_iter is None else n_iter
        frames = magnitude.shape[-1]
        padded_length = frames * self.hop_length + 2 * self.pad
        # A local generator: the same mel gives the same wave, whatever else uses the global RNG.
        gen = torch.Generator().manual_seed(self.seed)
        phase = torch.rand(magnitude.shape, generator=gen, dtype=magnitude.dtype).to(magnitude.device) * (2 * torch.pi)
        angles = torch.polar(torch.ones_like(magnitude), phase)
        previous = torch.zeros_like(angles)
        for _ in range(n_iter):
            rebuilt = self._stft_padded(self._istft_padded(magnitude * angles, padded_length))
            # Extrapolate away from the previous projection (the "fast" in fast Griffin-Lim), then keep the phase.
            angles = rebuilt - (self.momentum / (1 + self.momentum)) * previous
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        wave = self._istft_padded(magnitude * angles, padded_length)
        return wave[:, self.pad:padded_length - self.pad]

    def synthesize(self, log_mel: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        return self.phase_recovery(self.mel_to_linear(log_mel), n_iter).clamp(-1.0, 1.0)
