"""The whole per-utterance pipeline: conditioning, limits, aligned features, errors naming files, real speech."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from metatts.config.schema import AudioConfig
from metatts.features.audio import AudioError, SilentAudio, TooLong, TooShort
from metatts.features.extract import STAGES, FeatureExtractor, FrameFeatures

SR = 22050


def voiced_clip(seconds: float = 1.5, pad: float = 0.5, amplitude: float = 0.3, f0: float = 140.0) -> np.ndarray:
    """A harmonic-rich 'vowel' with silence (and a little noise) before and after."""
    t = np.arange(int(seconds * SR)) / SR
    voice = amplitude * scipy.signal.sawtooth(2 * np.pi * f0 * t)
    silence = np.zeros(int(pad * SR))
    y = np.concatenate([silence, voice, silence])
    return (y + 1e-5 * np.random.default_rng(0).standard_normal(len(y))).astype(np.float32)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(AudioConfig())


def test_features_are_aligned_trimmed_and_typed(extractor):
    timings: dict[str, float] = {}
    features = extractor(voiced_clip(), timings)
    assert isinstance(features, FrameFeatures)
    T = features.n_frames
    assert features.mel.shape == (80, T) and features.mel.dtype == np.float32
    assert features.pitch.shape == features.voiced.shape == features.energy.shape == (T,)
    assert features.voiced.dtype == bool and features.energy.dtype == np.float32
    # The 1 s of silence around the tone is trimmed (a short margin may remain), and T follows the kept length.
    assert 1.5 <= features.duration_seconds < 1.65
    assert T == int(round(features.duration_seconds * SR)) // 256
    assert abs(np.median(features.pitch[features.voiced]) - 140) < 3
    assert features.voiced.mean() > 0.8
    assert set(timings) == {"condition", "mel", "energy", "pitch"} and all(v >= 0 for v in timings.values())


def test_loudness_normalization_makes_features_level_independent(extractor):
    wave = voiced_clip()
    loud, quiet = extractor(wave), extractor(wave * np.float32(0.03))
    np.testing.assert_allclose(loud.mel, quiet.mel, atol=1e-3)
    np.testing.assert_allclose(loud.energy, quiet.energy, rtol=0.02, atol=1e-3)


def test_energy_is_the_l2_norm_of_the_magnitude(extractor):
    features = extractor(voiced_clip())
    # Louder frames in the middle of the tone, and energy tracks the mel (both from one STFT).
    middle = features.energy[10:-10]
    assert middle.min() > 10 * features.energy.min()
    assert np.corrcoef(features.energy, np.exp(features.mel).sum(axis=0))[0, 1] > 0.9


def test_length_limits_raise_distinct_errors(extractor):
    with pytest.raises(TooShort, match="too short"):
        extractor(voiced_clip(seconds=0.3))
    strict = FeatureExtractor(dataclasses.replace(AudioConfig(), max_seconds=1.0))
    with pytest.raises(TooLong, match="too long"):
        strict(voiced_clip(seconds=1.5))


def test_silent_wave_raises(extractor):
    with pytest.raises(SilentAudio):
        extractor(np.zeros(SR, dtype=np.float32))


def test_from_file_resamples_and_names_the_file_on_error(extractor, tmp_path):
    good = tmp_path / "good.flac"
    sf.write(good, voiced_clip()[::2].copy(), SR // 2)  # written at 11025 Hz: the loader resamples
    timings: dict[str, float] = {}
    features = extractor.from_file(good, timings)
    assert abs(np.median(features.pitch[features.voiced]) - 140) < 5
    assert set(timings) == set(STAGES)

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SR, dtype=np.float32), SR)
    with pytest.raises(SilentAudio) as info:
        extractor.from_file(silent)
    assert str(silent) in str(info.value)

    short = tmp_path / "short.wav"
    sf.write(short, voiced_clip(seconds=0.2), SR)
    with pytest.raises(TooShort) as info:
        extractor.from_file(short)
    assert str(short) in str(info.value) and info.value.reason.startswith("too short")

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError, match="broken.wav"):
        extractor.from_file(broken)


def test_real_speechocean_utterance(extractor, speechocean):
    path = speechocean / (speechocean / "data" / "wav.scp").read_text().split("\n")[0].split()[1]
    features = extractor.from_file(path)
    T = features.n_frames
    assert T > 20
    assert features.mel.shape == (80, T) and len(features.pitch) == len(features.energy) == len(features.voiced) == T
    assert 0.1 < features.voiced.mean() < 0.95
    assert 80 < np.median(features.pitch[features.voiced]) < 400
    assert np.all(features.pitch[~features.voiced] == 0)
    assert np.isfinite(features.mel).all() and features.mel.min() >= np.log(1e-5) - 1e-6
