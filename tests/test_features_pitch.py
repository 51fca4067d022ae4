"""YIN pitch: accuracy on tones, no octave errors on harmonic-rich tones, voicing, framing shared with the mel."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from metatts.config.schema import AudioConfig
from metatts.features.mel import MelSpectrogram
from metatts.features.pitch import PitchTracker, interpolate_unvoiced

SR = 22050


def seconds(n: float) -> np.ndarray:
    return np.arange(int(n * SR)) / SR


@pytest.fixture(scope="module")
def tracker() -> PitchTracker:
    return PitchTracker.from_config(AudioConfig())


def test_pure_tone_200hz(tracker):
    track = tracker((0.5 * np.sin(2 * np.pi * 200 * seconds(1.0))).astype(np.float32))
    assert track.voiced.mean() > 0.9
    assert np.all(np.abs(track.f0[track.voiced] - 200) < 5)
    assert np.all(track.f0[~track.voiced] == 0)
    assert np.median(track.aperiodicity[track.voiced]) < 0.05


def test_sawtooth_120hz_has_no_octave_errors(tracker):
    # A sawtooth's harmonics are strong, so d'(T/2) dips too; YIN must still read the period, not half of it.
    track = tracker((0.5 * scipy.signal.sawtooth(2 * np.pi * 120 * seconds(1.0))).astype(np.float32))
    assert track.voiced.mean() > 0.9
    assert np.all(np.abs(track.f0[track.voiced] - 120) < 3)


def test_weak_fundamental_strong_second_harmonic_reads_the_fundamental(tracker):
    # d'(T/2) dips to ~0.15 (below the 0.2 threshold) before the deep dip at T: plain first-dip YIN reads 220 Hz.
    t = seconds(1.0)
    y = (0.3 * np.sin(2 * np.pi * 110 * t) + np.sin(2 * np.pi * 220 * t)).astype(np.float32) * 0.4
    track = tracker(y)
    assert track.voiced.mean() > 0.9
    assert np.all(np.abs(track.f0[track.voiced] - 110) < 3)


@pytest.mark.parametrize("freq", [65.0, 400.0, 590.0])
def test_search_range_edges(tracker, freq):
    track = tracker((0.5 * scipy.signal.square(2 * np.pi * freq * seconds(0.5))).astype(np.float32))
    assert np.median(track.f0[track.voiced]) == pytest.approx(freq, rel=0.01)


def test_white_noise_and_silence_are_unvoiced(tracker):
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    noisy = tracker(noise)
    assert noisy.voiced.mean() < 0.05 and np.median(noisy.aperiodicity) > 0.5
    silent = tracker(np.zeros(SR, np.float32))
    assert not silent.voiced.any() and np.all(silent.f0 == 0)


def test_quiet_hum_in_pauses_is_gated(tracker):
    # 60 Hz mains hum 60 dB below the voice is periodic, but it is not voice.
    t = seconds(2.0)
    y = 1e-3 * np.sin(2 * np.pi * 60 * t)
    y[:SR] += np.sin(2 * np.pi * 180 * t[:SR])
    track = tracker(y.astype(np.float32))
    second_half = slice(SR // 256 + 4, None)
    assert not track.voiced[second_half].any()
    assert track.voiced[4: SR // 256 - 4].all()  # the first frames straddle the reflect padding


@pytest.mark.parametrize("n", [4000, 22050, 22050 + 200])
def test_frames_line_up_with_the_mel(tracker, n):
    mel = MelSpectrogram.from_config(AudioConfig())
    t = np.arange(n) / SR
    # Voice starts at a known sample: both features must switch on at the same frame.
    onset = n // 2
    y = np.where(np.arange(n) >= onset, 0.5 * np.sin(2 * np.pi * 150 * t), 0.0).astype(np.float32)
    track = tracker(y)
    log_mel = mel(torch.from_numpy(y))
    assert len(track.f0) == log_mel.shape[-1] == tracker.n_frames(n) == n // 256
    loud = (log_mel.max(dim=0).values > np.log(1e-5) + 1).numpy()
    # Both frames whose window reaches the onset light up the mel; pitch needs most of the window voiced.
    first_loud, first_voiced = int(np.argmax(loud)), int(np.argmax(track.voiced))
    assert 0 <= first_voiced - first_loud <= 3


def test_frequency_step_is_tracked_at_the_right_frames(tracker):
    t = seconds(1.0)
    y = np.where(t < 0.5, np.sin(2 * np.pi * 150 * t), np.sin(2 * np.pi * 300 * t)).astype(np.float32) * 0.5
    f0 = tracker(y).f0
    switch = int(0.5 * SR) // 256  # frame whose centre (i*hop + hop/2) is nearest the step
    assert np.all(np.abs(f0[5:switch - 3] - 150) < 3)
    assert np.all(np.abs(f0[switch + 4:-5] - 300) < 6)


def test_interpolate_unvoiced_linear_with_edge_hold():
    f0 = np.array([0, 0, 100, 0, 0, 130, 0], dtype=np.float32)
    np.testing.assert_allclose(interpolate_unvoiced(f0), [100, 100, 100, 110, 120, 130, 130])
    voiced = np.array([0, 0, 1, 0, 0, 1, 0], dtype=bool)
    np.testing.assert_allclose(interpolate_unvoiced(f0, voiced), [100, 100, 100, 110, 120, 130, 130])
    assert np.all(interpolate_unvoiced(np.zeros(4, np.float32)) == 0)


def test_refuses_a_frame_too_short_for_fmin():
    with pytest.raises(ValueError, match="too short"):
        PitchTracker(frame_length=512, fmin=60.0)
