"""Evaluation metrics on known inputs: EER on constructed scores, MCD/F0 conventions and their response to noise,
time stretch and pitch shift on real speech, speaker similarity with the pretrained Resemblyzer encoder."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from metatts.features.audio import SilentAudio, TooShort, load_audio
from metatts.evaluation.metrics import (
    MCD_CONSTANT,
    SpeakerEncoder,
    compare_audio,
    compare_mels,
    equal_error_rate,
    f0_rmse,
    mean_embedding,
    mel_cepstral_distortion,
    mel_cepstrum,
    mel_l1,
    similarity_matrix,
    speaker_similarity,
    verification_eer,
)

SR = 22050


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vctk_waves(vctk_mini):
    """utterance id -> 22.05 kHz waveform, for the utterances these tests use."""
    ids = ["p225_001", "p225_002", "p225_003", "p225_004", "p226_001", "p226_002", "p226_004"]
    return {u: load_audio(vctk_mini / "wav48" / u[:4] / f"{u}.wav", SR) for u in ids}


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("resemblyzer", reason="speaker metrics need the eval extra (resemblyzer)")
    return SpeakerEncoder(device="cpu")


# --- EER ---------------------------------------------------------------------------------------------------------


def test_eer_of_separable_scores_is_zero():
    eer, threshold = equal_error_rate([0.9, 0.8, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0])
    assert eer == 0.0
    assert 0.3 < threshold <= 0.7


def test_eer_of_identical_distributions_is_one_half():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(20000)
    labels = rng.random(20000) < 0.3
    eer, _ = equal_error_rate(scores, labels)
    assert abs(eer - 0.5) < 0.02
    assert equal_error_rate(np.full(6, 0.4), [1, 0, 1, 0, 0, 1]) == (0.5, 0.4)  # all tied: one diagonal segment


def test_eer_of_reversed_scores_is_one():
    assert equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])[0] == 1.0


def test_eer_hand_computed_crossing_on_a_segment():
    # Accept if score >= t. ROC (false alarm, miss) from high t to low: t=0.9 (0, 1/2), t=0.6 (1/3, 1/2),
    # t=0.5 (1/3, 0). miss - fa goes 1/6 -> -1/3 between t=0.6 and t=0.5, a third of the way: EER = 1/3 and
    # threshold = 0.6 - 0.1/3.
    eer, threshold = equal_error_rate([0.9, 0.5, 0.6, 0.1, 0.05], [1, 1, 0, 0, 0])
    assert eer == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.6 - 0.1 / 3)
    # A tie between a positive and a negative makes a diagonal ROC segment: (0, 1/2) at t=0.9 to (1/2, 0) at
    # t=0.5 crosses the diagonal halfway: EER 1/4, threshold 0.7.
    eer, threshold = equal_error_rate([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert eer == pytest.approx(0.25)
    assert threshold == pytest.approx(0.7)


def test_eer_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="positive and negative"):
        equal_error_rate([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        equal_error_rate([0.1, np.nan], [1, 0])


def test_verification_eer_builds_meta_tts_trials():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16)

    def noisy(k, n):
        return centres[k] + 0.05 * rng.standard_normal((n, 16))

    synth = {"a": noisy(0, 2), "b": noisy(1, 3), "c": noisy(2, 2)}
    real = {"a": noisy(0, 4), "b": noisy(1, 4), "d": noisy(3, 4)}  # no real "c", no synthesized "d"
    result = verification_eer(synth, real)
    # Positives: a (2x4) + b (3x4); negatives: everything else of the 7 x 12 synthesized-real pairs.
    assert (result.n_positive, result.n_negative, result.n_skipped) == (20, 64, 0)
    assert result.eer == 0.0
    synth["a"][0] = np.nan  # an unusable clip: its 12 trials are dropped, not scored
    assert verification_eer(synth, real).n_skipped == 12
    with pytest.raises(ValueError, match="no positive trial"):
        verification_eer({"x": noisy(0, 1)}, {"y": noisy(1, 1)})


def test_similarity_helpers():
    a, b = np.array([1.0, 0.0, 1.0]), np.array([2.0, 0.0, 0.0])
    assert speaker_similarity(a, b) == pytest.approx(1 / math.sqrt(2))
    matrix = similarity_matrix(np.stack([a, b]), np.stack([b, a, [np.nan] * 3]))
    assert matrix[:, :2] == pytest.approx(np.array([[1 / math.sqrt(2), 1.0], [1.0, 1 / math.sqrt(2)]]))
    assert np.isnan(matrix[:, 2]).all()
    centroid = mean_embedding(np.stack([a / np.linalg.norm(a), [np.nan] * 3, b / 2]))
    assert np.linalg.norm(centroid) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no usable embedding"):
        mean_embedding(np.full((2, 3), np.nan))


# --- MCD, F0, mel L1 ---------------------------------------------------------------------------------------------


def test_mel_cepstrum_convention_and_constant():
    # A cosine ripple of amplitude eps at quefrency 3 on the log-mel is exactly c_3 = eps, so the per-frame MCD is
    # MCD_CONSTANT * eps; a constant offset (level, c_0) costs nothing.
    rng = np.random.default_rng(2)
    log_mel = rng.normal(-4.0, 2.0, size=(80, 50))
    ripple = 0.1 * np.cos(np.pi * 3 * (np.arange(80) + 0.5) / 80)[:, None]
    assert mel_cepstrum(log_mel + ripple)[:, 2] - mel_cepstrum(log_mel)[:, 2] == pytest.approx(np.full(50, 0.1))
    assert mel_cepstral_distortion(log_mel, log_mel + ripple, alignment="truncate") == pytest.approx(MCD_CONSTANT * 0.1)
    assert mel_cepstral_distortion(log_mel, log_mel + 1.5) == pytest.approx(0.0, abs=1e-9)
    assert MCD_CONSTANT == pytest.approx(6.1418, abs=1e-4)


def test_identical_audio_has_zero_mcd_and_f0_error(vctk_waves):
    wave = vctk_waves["p225_002"]
    result = compare_audio(wave, wave.copy(), SR)
    assert result.mcd_db == 0.0 and result.f0_rmse_cents == 0.0 and result.voicing_error == 0.0
    assert result.frames_a == result.frames_b == result.pairs == len(wave) // 256
    assert result.voiced_pairs > 50
    assert mel_cepstral_distortion(wave, wave, SR) == 0.0
    assert f0_rmse(wave, wave, SR) == 0.0


def test_mcd_accepts_precomputed_mels_and_other_rates(vctk_waves):
    from metatts.features.mel import MelSpectrogram

    a, b = vctk_waves["p225_001"], vctk_waves["p225_002"]
    mel = MelSpectrogram()
    mels = [mel(torch.from_numpy(w)).numpy() for w in (a, b)]
    from_mels = mel_cepstral_distortion(mels[0], mels[1])
    assert from_mels == pytest.approx(mel_cepstral_distortion(a, b, SR), rel=1e-5)
    assert 3.0 < from_mels < 15.0
    assert compare_mels(mels[0], mels[1]).frames_a == mels[0].shape[1]
    at_16k = [librosa.resample(w, orig_sr=SR, target_sr=16000) for w in (a, b)]
    assert mel_cepstral_distortion(*at_16k, 16000) == pytest.approx(from_mels, abs=1.0)  # band-limited, so close
    with pytest.raises(ValueError, match="sample_rate is required"):
        mel_cepstral_distortion(a, b)


def test_mcd_grows_with_noise(vctk_waves):
    wave = vctk_waves["p225_002"]
    noise = np.random.default_rng(3).standard_normal(len(wave)).astype(np.float32)
    mcds = [mel_cepstral_distortion(wave, wave + level * noise, SR) for level in (0.003, 0.01, 0.03)]
    assert 0.0 < mcds[0] < mcds[1] < mcds[2]


def test_dtw_aligns_a_time_stretched_copy(vctk_waves):
    wave = vctk_waves["p225_002"]
    stretched = librosa.effects.time_stretch(wave, rate=1.1)
    aligned = compare_audio(wave, stretched, SR)
    truncated = compare_audio(wave, stretched, SR, alignment="truncate")
    assert aligned.frames_b < aligned.frames_a <= aligned.pairs
    assert aligned.mcd_db < 0.5 * truncated.mcd_db
    assert aligned.voicing_error < 0.5 * truncated.voicing_error


@pytest.mark.parametrize("utterance", ["p225_002", "p226_002"])
def test_f0_rmse_of_a_semitone_shift_is_about_100_cents(vctk_waves, utterance):
    wave = vctk_waves[utterance]
    shifted = librosa.effects.pitch_shift(wave, sr=SR, n_steps=1)
    result = compare_audio(wave, shifted, SR)
    assert result.voiced_pairs > 50
    assert result.f0_rmse_cents == pytest.approx(100, abs=20)
    assert result.f0_fine_rmse_cents == pytest.approx(100, abs=20)
    assert result.gross_pitch_error < 0.05


def test_gross_pitch_errors_are_split_from_the_fine_rmse(vctk_waves):
    # p225_003 has a few creaky/onset frames where YIN slips an octave in one rendition (about 3% of the
    # voiced pairs): the plain RMSE doubles, the fine RMSE still reads the semitone.
    wave = vctk_waves["p225_003"]
    shifted = librosa.effects.pitch_shift(wave, sr=SR, n_steps=1)
    result = compare_audio(wave, shifted, SR)
    assert 0 < result.gross_pitch_error < 0.06
    assert result.f0_fine_rmse_cents == pytest.approx(100, abs=20)
    assert result.f0_rmse_cents > result.f0_fine_rmse_cents


def test_mel_l1_is_masked():
    a = torch.zeros(2, 4, 6)
    b = torch.ones(2, 4, 6)
    b[0, :, 3:] = 100.0  # beyond length 3: must not count
    b[1, :, :] = 2.0
    assert mel_l1(a, b, torch.tensor([3, 6])) == pytest.approx((1.0 * 4 * 3 + 2.0 * 4 * 6) / (4 * 9))
    with pytest.raises(ValueError, match="lengths"):
        mel_l1(a, b, torch.tensor([3, 7]))
    with pytest.raises(ValueError, match="one shape"):
        mel_l1(a, b[:, :, :5], torch.tensor([3, 5]))


# --- speaker encoder ---------------------------------------------------------------------------------------------


def test_identical_audio_has_similarity_one(encoder, vctk_waves):
    wave = vctk_waves["p225_002"]
    assert speaker_similarity(encoder.embed(wave, SR), encoder.embed(wave.copy(), SR)) > 0.999


def test_embed_many_matches_embed_and_resemblyzer(encoder, vctk_waves):
    import resemblyzer

    waves = [vctk_waves["p225_001"], vctk_waves["p226_001"]]
    many = encoder.embed_many(waves, SR)
    assert many.shape == (2, 256) and np.linalg.norm(many, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert np.allclose(many[1], encoder.embed(waves[1], SR), atol=1e-5)
    reference = encoder.encoder.embed_utterance(resemblyzer.preprocess_wav(
        librosa.resample(waves[0], orig_sr=SR, target_sr=16000)))
    assert speaker_similarity(many[0], reference) > 0.999  # only the resampler differs


def test_same_speaker_is_more_similar_than_different_speakers(encoder, vctk_waves):
    p225 = encoder.embed_many([vctk_waves[u] for u in ("p225_001", "p225_002", "p225_004")], SR)
    p226 = encoder.embed_many([vctk_waves[u] for u in ("p226_001", "p226_002", "p226_004")], SR)
    within = similarity_matrix(p225, p225)[np.triu_indices(3, 1)].mean()
    across = similarity_matrix(p225, p226).mean()
    assert within > across + 0.1
    speaker = encoder.speaker_embedding([vctk_waves["p225_003"]], SR)
    assert speaker_similarity(speaker, mean_embedding(p225)) > speaker_similarity(speaker, mean_embedding(p226))


def test_unusable_audio_raises_or_gives_nan(encoder, vctk_waves):
    with pytest.raises(SilentAudio):
        encoder.embed(np.zeros(SR, dtype=np.float32), SR)
    with pytest.raises(TooShort):
        encoder.embed(vctk_waves["p225_002"][: SR // 4], SR)
    rows = encoder.embed_many([np.zeros(SR, dtype=np.float32), vctk_waves["p225_002"]], SR, on_error="nan")
    assert np.isnan(rows[0]).all() and np.isfinite(rows[1]).all()
    speaker = encoder.speaker_embedding([np.zeros(SR, dtype=np.float32), vctk_waves["p225_002"]], SR,
                                        on_error="nan")
    assert np.allclose(speaker, rows[1], atol=1e-6)
