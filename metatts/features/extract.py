"""Per-utterance frame features: load → resample → trim → length limits → loudness → mel, energy, pitch.

Every output has the same frame count T = n_samples // hop_length (see ``mel.py`` for the framing), so frame i of
the mel, the energy and the pitch describe the same 1024 samples.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from metatts.config.schema import AudioConfig
from metatts.features.audio import (AudioError, SilentAudio, TooLong, TooShort, load_audio, normalize_loudness,
                                    silence_bounds)
from metatts.features.mel import MelSpectrogram, frame_energy
from metatts.features.pitch import PitchTracker

# Stages reported in ``timings`` (seconds, accumulated across calls so a benchmark can sum over a corpus):
# load = read + resample, condition = trim + length limits + loudness, then the three features.
STAGES = ("load", "condition", "mel", "energy", "pitch")


@dataclass
class FrameFeatures:
    """Features of one utterance, all with ``n_frames`` frames.

    mel: [n_mels, T] float32 natural-log mel (HiFi-GAN convention); pitch: [T] float32 F0 in Hz, 0 where
    unvoiced; voiced: [T] bool; energy: [T] float32 L2 norm over frequency of the STFT magnitude;
    duration_seconds: length of the conditioned (trimmed) waveform the features were computed from;
    trim_start_seconds: where that waveform begins in the input (leading silence trimmed), so times of the input
    (e.g. a TextGrid's) map to frames as ``(t - trim_start_seconds) * sample_rate / hop_length``.
    """

    mel: np.ndarray
    pitch: np.ndarray
    voiced: np.ndarray
    energy: np.ndarray
    duration_seconds: float
    n_frames: int
    trim_start_seconds: float = 0.0


@contextmanager
def _timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


class FeatureExtractor:
    """Turns audio into ``FrameFeatures`` under one ``AudioConfig``.

    ``trim_margin_seconds`` of audio is kept around the detected speech (the RMS threshold cuts soft onsets and
    releases otherwise). The mel module owns its filterbank; the extractor runs on the CPU in float32 because
    preparation is parallelized over processes, not devices.
    """

    def __init__(self, audio: AudioConfig, trim_margin_seconds: float = 0.01):
        self.audio = audio
        self.trim_margin = int(round(trim_margin_seconds * audio.sample_rate))
        self.mel = MelSpectrogram.from_config(audio)
        self.pitch = PitchTracker.from_config(audio)

    def condition(self, wave: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Trim, loudness-normalize and check the length limits of a mono waveform at ``audio.sample_rate``.

        Raises ``SilentAudio``, ``TooShort`` or ``TooLong`` (all ``AudioError``) with the reason.
        """
        return self._condition(wave, timings)[0]

    def _condition(self, wave: np.ndarray, timings: dict[str, float] | None) -> tuple[np.ndarray, float]:
        """``condition``, and the seconds of leading audio it trimmed."""
        a = self.audio
        with _timed(timings, "condition"):
            bounds = silence_bounds(wave, a.trim_top_db, margin=self.trim_margin)
            wave = wave[bounds.start:bounds.end]
            seconds = len(wave) / a.sample_rate
            if len(wave) == 0:
                raise SilentAudio("all silent (nothing left after trimming)")
            # Length before loudness: a clip that is out of limits is rejected without the extra pass.
            if seconds < a.min_seconds:
                raise TooShort(f"too short: {seconds:.2f} s after trimming (min_seconds = {a.min_seconds})")
            if seconds > a.max_seconds:
                raise TooLong(f"too long: {seconds:.2f} s after trimming (max_seconds = {a.max_seconds})")
            wave = normalize_loudness(wave, a.target_dbfs, a.peak_limit)
        return wave, bounds.start / a.sample_rate

    @torch.inference_mode()
    def features(self, wave: np.ndarray, timings: dict[str, float] | None = None) -> FrameFeatures:
        """Mel, energy and pitch of ``wave`` as given (no trimming or normalization)."""
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        with _timed(timings, "mel"):
            spectra = self.mel.spectra(torch.from_numpy(wave))
            mel = spectra.log_mel.numpy()
        with _timed(timings, "energy"):
            energy = frame_energy(spectra.magnitude).numpy()
        with _timed(timings, "pitch"):
            track = self.pitch(wave)
        n_frames = mel.shape[1]
        if not (len(energy) == len(track.f0) == n_frames):
            raise RuntimeError(f"frame counts disagree: mel {n_frames}, energy {len(energy)}, pitch {len(track.f0)}")
        return FrameFeatures(mel=mel, pitch=track.f0, voiced=track.voiced, energy=energy.astype(np.float32),
                             duration_seconds=len(wave) / self.audio.sample_rate, n_frames=n_frames)

    def __call__(self, wave: np.ndarray, timings: dict[str, float] | None = None) -> FrameFeatures:
        """Features of a mono waveform at ``audio.sample_rate``: condition, then extract."""
        conditioned, trim_start = self._condition(wave, timings)
        features = self.features(conditioned, timings)
        features.trim_start_seconds = trim_start
        return features

    def from_file(self, path: str | os.PathLike, timings: dict[str, float] | None = None) -> FrameFeatures:
        """Features of an audio file; any ``AudioError`` names ``path``."""
        try:
            with _timed(timings, "load"):
                wave = load_audio(path, self.audio.sample_rate)
            return self(wave, timings)
        except AudioError as error:
            if error.path is not None:
                raise
            raise error.with_path(path) from error
