"""The log-mel follows the HiFi-GAN V1 convention exactly."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from metatts.config.schema import AudioConfig
from metatts.features.mel import MelSpectrogram, frame_count, frame_energy, mel_frequencies

SR = 22050


def tone(freq: float, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * torch.pi * freq * t)).float()


@pytest.fixture(scope="module")
def mel() -> MelSpectrogram:
    return MelSpectrogram.from_config(AudioConfig())


def reference_log_mel(y: np.ndarray, a: AudioConfig) -> np.ndarray:
    """The same convention written independently with numpy/librosa."""
    pad = (a.n_fft - a.hop_length) // 2
    padded = np.pad(y.astype(np.float64), (pad, pad), mode="reflect")
    spec = librosa.stft(padded, n_fft=a.n_fft, hop_length=a.hop_length, win_length=a.win_length, window="hann",
                        center=False)
    magnitude = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=a.sample_rate, n_fft=a.n_fft, n_mels=a.n_mels, fmin=a.fmin, fmax=a.fmax)
    return np.log(np.maximum(basis @ magnitude, a.log_floor))


def test_matches_numpy_librosa_reference(mel):
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    y = (0.3 * np.sin(2 * np.pi * 180 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t) + 0.05 * rng.standard_normal(SR))
    y = y.astype(np.float32)
    ours = mel(torch.from_numpy(y)).numpy()
    expected = reference_log_mel(y, AudioConfig())
    assert ours.shape == expected.shape == (80, SR // 256)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_sine_peaks_in_the_band_centred_nearest_its_frequency(mel):
    log_mel = mel(tone(1000, 1.0))
    band = int(log_mel.mean(dim=-1).argmax())
    centres = mel_frequencies(mel)
    assert band == int(np.argmin(np.abs(centres - 1000)))


def test_silence_sits_exactly_at_the_log_floor(mel):
    log_mel = mel(torch.zeros(SR))
    assert torch.allclose(log_mel, torch.full_like(log_mel, np.log(1e-5)))
    assert mel(tone(440, 0.5, amplitude=1e-6)).min() >= np.log(1e-5) - 1e-6


@pytest.mark.parametrize("n", [512, 1000, 22050, 22050 + 255, 22050 + 256])
def test_frame_count_is_length_over_hop(mel, n):
    frames = mel(torch.randn(n) * 0.1).shape[-1]
    assert frames == n // 256 == mel.n_frames(n) == frame_count(n, 1024, 256)


def test_batch_equals_one_by_one_and_shapes(mel):
    waves = torch.randn(3, 8000) * 0.1
    batched = mel(waves)
    assert batched.shape == (3, 80, 8000 // 256)
    for i in range(3):
        torch.testing.assert_close(batched[i], mel(waves[i]), atol=1e-5, rtol=1e-5)


def test_spectra_share_one_stft(mel):
    wave = tone(300, 0.5)
    spectra = mel.spectra(wave)
    assert spectra.magnitude.shape == (513, spectra.log_mel.shape[-1])
    torch.testing.assert_close(spectra.log_mel, mel(wave))
    # Energy is the L2 norm of the magnitude, so it is linear in amplitude (up to the 1e-9 inside the sqrt).
    energy = frame_energy(spectra.magnitude)
    louder = frame_energy(mel.spectra(2 * wave).magnitude)
    torch.testing.assert_close(louder, 2 * energy, rtol=1e-3, atol=1e-3)


def test_filterbank_is_a_buffer_not_state(mel):
    assert mel.mel_basis.shape == (80, 513)
    assert mel.state_dict() == {}


def test_too_short_input_is_refused(mel):
    with pytest.raises(ValueError, match="too short"):
        mel(torch.zeros(200))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_input_runs_on_cuda(mel):
    wave = tone(440, 0.5)
    out = mel(wave.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), mel(wave), atol=1e-4, rtol=1e-4)
