"""Reading audio and conditioning it before features: load (any rate, any channel count) → mono float32 at the
target rate, trim leading/trailing silence, normalize loudness.

Everything here works on 1-D ``np.float32`` arrays; errors are ``AudioError`` subclasses whose ``reason`` is a
short sentence a corpus preparation step can record (``Skipped.reason``) and whose message names the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

# Levels below this are treated as digital silence: 16-bit dither alone sits near -90 dBFS, so nothing quieter than
# -80 dBFS over a whole clip is speech, and scaling it to a speech level would only amplify noise by 60+ dB.
SILENCE_DBFS = -80.0


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, corrupt, empty, silent, or out of length limits.

    ``reason`` is the cause alone; ``path`` the file when known. ``str(error)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def with_path(self, path: str | os.PathLike) -> "AudioError":
        """The same error (same class) naming ``path``; used when a stage that saw only samples raised it."""
        return self if self.path is not None else type(self)(self.reason, path)


class SilentAudio(AudioError):
    """The clip holds no signal above digital silence."""


class TooShort(AudioError):
    """After trimming, the clip is shorter than ``AudioConfig.min_seconds``."""


class TooLong(AudioError):
    """After trimming, the clip is longer than ``AudioConfig.max_seconds``."""


def resample(y: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a mono signal with soxr at its default "HQ" quality (20-bit precision; the passband reaches
    well past the 8 kHz mel fmax at 22.05 kHz): several times faster than scipy's polyphase filters, and "VHQ"
    would only cost more time for nothing an 80-band log-mel resolves."""
    if from_rate == to_rate:
        return np.ascontiguousarray(y, dtype=np.float32)
    return soxr.resample(np.ascontiguousarray(y, dtype=np.float32), from_rate, to_rate, quality="HQ")


def scorer_input(wave: np.ndarray, sample_rate: int, to_rate: int) -> np.ndarray:
    """A waveform as an evaluation model takes it: mono, finite, resampled to ``to_rate`` and clipped to [-1, 1]
    (synthesized audio can overshoot 1, and int16 conversions would wrap it around). ``AudioError`` for an empty,
    non-mono or non-finite wave."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise AudioError(f"expected a mono waveform [T], got shape {wave.shape}")
    if wave.size == 0:
        raise AudioError("no samples (zero-length audio)")
    if not np.isfinite(wave).all():
        raise AudioError("samples are not finite (NaN or inf)")
    return np.clip(resample(wave, sample_rate, to_rate), -1.0, 1.0)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read a wav/flac/ogg file (any rate, any channel count) as mono float32 at ``sample_rate``.

    Channels are averaged. Raises ``AudioError`` naming the file for a missing, empty, unreadable or corrupt
    file, a file with no samples, or samples that are not finite.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError("file not found", path)
    if os.path.getsize(path) == 0:
        raise AudioError("empty file (0 bytes)", path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        # libsndfile's own message says what is wrong with the header ("Format not recognised", ...).
        raise AudioError(f"unreadable or corrupt audio ({error})", path) from error
    if data.shape[0] == 0:
        raise AudioError("no samples (zero-length audio)", path)
    y = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(y).all():
        raise AudioError("samples are not finite (NaN or inf)", path)
    return resample(y, rate, sample_rate)


def frame_rms(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS of frames centred at ``t * hop_length`` (zero-padded at the edges), as ``librosa.feature.rms``.

    Computed from a running sum of squares, O(n) whatever the frame length; returns ``1 + len(y) // hop_length``
    values.
    """
    half = frame_length // 2
    power = np.square(y, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(np.pad(power, (half, half)))))
    starts = np.arange(1 + (len(y) + 2 * half - frame_length) // hop_length) * hop_length
    sums = cumulative[starts + frame_length] - cumulative[starts]
    # Round-off in the running sum can leave tiny negatives where the signal is exactly zero.
    return np.sqrt(np.maximum(sums, 0.0) / frame_length)


@dataclass(frozen=True)
class TrimBounds:
    """The kept span ``y[start:end]`` of a trimmed signal."""

    start: int
    end: int


def silence_bounds(y: np.ndarray, top_db: float, frame_length: int = 2048, hop_length: int = 512,
                   margin: int = 0) -> TrimBounds:
    """Where the non-silent part of ``y`` starts and ends, with ``librosa.effects.trim`` semantics.

    A frame is non-silent when its RMS is within ``top_db`` of the loudest frame's; the span runs from the first
    non-silent frame to one hop past the last, widened by ``margin`` samples on each side (a little air keeps
    soft onsets and releases that the frame threshold cuts). ``top_db <= 0`` keeps everything. A signal with no
    non-silent frame keeps nothing (``start == end``).
    """
    if top_db <= 0 or len(y) == 0:
        return TrimBounds(0, len(y))
    rms = frame_rms(y, frame_length, hop_length)
    amin = 1e-5  # librosa.amplitude_to_db's floor: frames below -100 dBFS all count as equally quiet
    db = 20.0 * np.log10(np.maximum(rms, amin)) - 20.0 * np.log10(max(amin, float(rms.max())))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return TrimBounds(0, 0)
    start = int(loud[0]) * hop_length
    end = min(len(y), (int(loud[-1]) + 1) * hop_length)
    return TrimBounds(max(0, start - margin), min(len(y), end + margin))


def trim_silence(y: np.ndarray, top_db: float, frame_length: int = 2048, hop_length: int = 512,
                 margin: int = 0) -> np.ndarray:
    """``y`` without leading and trailing silence; see ``silence_bounds`` for the rule."""
    bounds = silence_bounds(y, top_db, frame_length, hop_length, margin)
    return y[bounds.start:bounds.end]


def active_rms(y: np.ndarray, gate_db: float = 30.0, frame_length: int = 1024, hop_length: int = 256) -> float:
    """RMS over the frames within ``gate_db`` of the loudest one: the level of the speech, not of the pauses.

    A plain RMS would make a clip with long pauses come out louder after normalization than the same sentence
    said without them; gating (a simple form of ITU-T P.56 active speech level) makes the level independent of
    pause length.
    """
    rms = frame_rms(y, frame_length, hop_length)
    peak = float(rms.max()) if rms.size else 0.0
    if peak <= 0.0:
        return 0.0
    active = rms >= peak * 10.0 ** (-gate_db / 20.0)
    return float(np.sqrt(np.mean(np.square(rms[active]))))


def normalize_loudness(y: np.ndarray, target_dbfs: float, peak_limit: float, gate_db: float = 30.0) -> np.ndarray:
    """Scale ``y`` so that its active-speech RMS is ``target_dbfs``, then scale down (never up) so that the
    absolute peak is at most ``peak_limit``. Raises ``SilentAudio`` ("all silent") when the level is below
    ``SILENCE_DBFS`` rather than dividing by (nearly) zero."""
    level = active_rms(y, gate_db)
    if level <= 10.0 ** (SILENCE_DBFS / 20.0):
        raise SilentAudio(f"all silent (level below {SILENCE_DBFS:.0f} dBFS)")
    gain = 10.0 ** (target_dbfs / 20.0) / level
    peak = float(np.max(np.abs(y))) * gain
    if peak > peak_limit:
        # A single gain for the whole clip: a limiter/compressor would change the voice's dynamics.
        gain *= peak_limit / peak
    return (y * np.float32(gain)).astype(np.float32, copy=False)
