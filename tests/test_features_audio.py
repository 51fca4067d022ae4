"""Loading, trimming and loudness normalization."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf

from metatts.features.audio import (AudioError, SilentAudio, active_rms, frame_rms, load_audio, normalize_loudness,
                                    silence_bounds, trim_silence)

SR = 22050


def tone(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(440, 0.5), tone(660, 0.5, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    y = load_audio(path, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


def test_resample_48k_to_22050_keeps_duration_and_frequency(tmp_path):
    path = tmp_path / "hi.wav"
    sf.write(path, tone(1000, 2.0, sr=48000), 48000)
    y = load_audio(path, SR)
    assert abs(len(y) - 2 * SR) <= 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * SR / len(y)
    assert abs(peak_hz - 1000) < 2


def test_flac_16k_is_read_and_upsampled(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(300, 1.0, sr=16000), 16000)
    y = load_audio(path, SR)
    assert abs(len(y) - SR) <= 1
    assert 0.3 < np.abs(y).max() < 0.6


def test_corrupt_file_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as info:
        load_audio(path, SR)
    assert str(path) in str(info.value)
    assert "corrupt" in info.value.reason


def test_zero_byte_file_raises(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        load_audio(path, SR)


def test_header_without_samples_raises(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(path, SR)


def test_missing_file_raises(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav", SR)


def test_with_path_keeps_the_subclass():
    error = SilentAudio("all silent").with_path("x.wav")
    assert isinstance(error, SilentAudio) and str(error) == "x.wav: all silent"


def test_frame_rms_matches_librosa():
    ramp = np.linspace(0, 1, 10_000, dtype=np.float32)
    y = np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * ramp
    np.testing.assert_allclose(frame_rms(y, 2048, 512), librosa.feature.rms(y=y)[0], rtol=1e-4, atol=1e-6)


def test_trim_removes_leading_and_trailing_silence():
    noise = np.random.default_rng(2).standard_normal(3 * SR).astype(np.float32) * 1e-4
    y = noise.copy()
    y[SR:2 * SR] += tone(440, 1.0)
    trimmed = trim_silence(y, top_db=40)
    # At most one analysis frame (2048 samples, centred) of context is kept on either side of the tone.
    assert SR <= len(trimmed) <= SR + 2 * 2048
    bounds = silence_bounds(y, top_db=40)
    assert SR - 2048 <= bounds.start <= SR and 2 * SR <= bounds.end <= 2 * SR + 2048


def test_trim_matches_librosa_semantics_and_margin_widens():
    noise = np.random.default_rng(3).standard_normal(3 * SR).astype(np.float32) * 1e-3
    y = noise.copy()
    y[7000:50000] += tone(220, 43000 / SR)
    for top_db in (20, 40, 60):
        _, (start, end) = librosa.effects.trim(y, top_db=top_db)
        bounds = silence_bounds(y, top_db)
        assert (bounds.start, bounds.end) == (start, end)
    plain, wide = silence_bounds(y, 40), silence_bounds(y, 40, margin=300)
    assert (wide.start, wide.end) == (plain.start - 300, plain.end + 300)


def test_trim_disabled_with_top_db_zero():
    y = np.concatenate([np.zeros(5000, np.float32), tone(440, 0.5)])
    assert len(trim_silence(y, top_db=0)) == len(y)


def test_normalize_reaches_target_level_over_speech_not_pauses():
    speech = tone(200, 1.0, amplitude=0.05)
    with_pauses = np.concatenate([speech, np.zeros(2 * SR, np.float32), speech])
    out_short = normalize_loudness(speech, target_dbfs=-20, peak_limit=0.99)
    out_long = normalize_loudness(with_pauses, target_dbfs=-20, peak_limit=0.99)
    assert 20 * np.log10(active_rms(out_short)) == pytest.approx(-20, abs=0.1)
    # The pauses barely change the gain (edge frames only); a plain RMS would raise it by sqrt(2) (+3 dB).
    assert np.abs(out_long).max() == pytest.approx(np.abs(out_short).max(), rel=0.02)
    assert out_short.dtype == np.float32


def test_normalize_limits_the_peak():
    y = tone(200, 1.0, amplitude=0.01)
    y[1000] = 0.9  # one click, far above the speech level
    out = normalize_loudness(y, target_dbfs=-20, peak_limit=0.95)
    assert np.abs(out).max() == pytest.approx(0.95, rel=1e-5)


@pytest.mark.parametrize("level", [0.0, 1e-6])
def test_all_silent_raises(level):
    y = np.full(SR, level, dtype=np.float32)
    with pytest.raises(SilentAudio, match="all silent"):
        normalize_loudness(y, target_dbfs=-20, peak_limit=0.95)
