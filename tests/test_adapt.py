"""Fast adaptation: real clips (vctk-mini p225, a speaker never seen in training) through the training pipeline, the
inner loop from φ0 on a tiny trained checkpoint, voice packs, interpolation, bad clips, and the CLI end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from metatts.adapt.clips import ClipError, ClipReader, find_clip_files, read_transcripts
from metatts.adapt.fast import Voice, adapt_voice, length_buckets, support_loss_fn
from metatts.adapt.voicepack import load_voice_pack
from metatts.api import load
from metatts.cli import main
from metatts.config import config_from_dict
from metatts.episodes.collate import Normalizer
from metatts.features.extract import FeatureExtractor
from metatts.meta.inner_lr import InnerLR
from metatts.model.acoustic import select_parameters
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.checkpoint import read_meta, weights_digest
from metatts.text.normalize import normalize_text
from metatts.text.phonemes import Phonemizer
from metatts.text.symbols import SymbolTable
from metatts.train.supervised import train
from tiny import TEXTS, TINY_MODEL, tiny_store

TINY = [*TINY_MODEL, "train.batch_size=4", "train.warmup_steps=2",
        "train.log_every=1", "train.val_every=1000", "train.checkpoint_every=1000", "train.threads=1",
        "train.lr=3e-3", "data.min_utterances_per_speaker=2", "meta.shots=1", "meta.queries=1"]
SLOT = {"speaker.slot_embedding", "speaker.slot_norms"}
QUIET = dict(progress=False, log=lambda *_: None)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained 20 steps on 3 espeak voices (p225 is never seen)."""
    root = tmp_path_factory.mktemp("adapt")
    tiny_store(root, ("m1", "f2", "m3"), TEXTS[:4])
    train(config_from_dict({}, [f"data.features={root / 'store'}", "train.steps=20", *TINY]), root / "run", **QUIET)
    return root / "run" / "checkpoint"


@pytest.fixture(scope="module")
def p225(vctk_mini) -> tuple[list[Path], list[str]]:
    """Five clips of p225 with their transcripts."""
    wavs = [vctk_mini / "wav48" / "p225" / f"p225_00{i}.wav" for i in range(1, 6)]
    texts = [(vctk_mini / "txt" / "p225" / f"p225_00{i}.txt").read_text().strip() for i in range(1, 6)]
    return wavs, texts


@pytest.fixture(scope="module")
def tts(checkpoint):
    return load(checkpoint, device="cpu", vocoder="griffinlim")


@pytest.fixture(scope="module")
def voice(tts, p225) -> Voice:
    return tts.adapt(*p225, steps=10)


# ------------------------------------------------------------------------------------------------ clips
def test_clips_go_through_the_training_pipeline(tts, p225):
    wavs, texts = p225
    clips = ClipReader.from_meta(tts.meta).read(wavs, texts)
    assert [c.name for c in clips.clips] == [w.name for w in wavs] and not clips.skipped
    config, meta = tts.config, tts.meta
    features = FeatureExtractor(config.audio).from_file(wavs[2])
    normalizer = Normalizer.from_dict(meta.stats)
    clip = clips.clips[2]
    assert clip.phonemes == Phonemizer(config.text).phonemize([texts[2]])[0]
    assert clip.text == normalize_text(texts[2])
    assert clip.phoneme_ids.tolist() == tts.symbols.encode(clip.phonemes)
    assert np.array_equal(clip.mel.numpy(), features.mel)
    assert np.allclose(clip.pitch.numpy(), normalizer.pitch(features.pitch, features.voiced))
    assert np.allclose(clip.energy.numpy(), normalizer.energy(features.energy))
    batch = clips.batch()
    assert batch.size == 5 and (batch.speakers == -1).all()
    assert batch.mel_lengths.tolist() == [c.frames for c in clips.clips]


def test_transcripts_from_tsv_folder_or_sidecars(tmp_path, vctk_mini):
    wav = vctk_mini / "wav48" / "p225" / "p225_001.wav"
    tsv = tmp_path / "t.tsv"
    tsv.write_text("# clip\ttext\np225_001.wav\tPlease call Stella.\n\np225_002\tAsk her.\n")
    assert read_transcripts(tsv) == {"p225_001.wav": "Please call Stella.", "p225_002": "Ask her."}
    assert read_transcripts(vctk_mini / "txt" / "p225")["p225_001"] == "Please call Stella."
    bad = tmp_path / "bad.tsv"
    bad.write_text("p225_001.wav Please call Stella.\n")
    with pytest.raises(ClipError, match=r"bad.tsv:1: expected clip_name<TAB>text"):
        read_transcripts(bad)
    with pytest.raises(ClipError, match="does not exist"):
        read_transcripts(tmp_path / "nope.tsv")
    # Folders take their audio files in name order; sidecar .txt files picked up by a glob are ignored.
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("b.wav", "a.flac", "a.txt", "notes.md"):
        shutil.copy(wav, folder / name) if name.endswith((".wav", ".flac")) else (folder / name).write_text("x")
    files, missing = find_clip_files([folder, folder / "a.txt", tmp_path / "ghost.wav"])
    assert [f.name for f in files] == ["a.flac", "b.wav"]
    assert [(m.id, m.reason) for m in missing] == [("ghost.wav", "file not found")]


def test_bad_clips_are_skipped_with_reasons_and_none_usable_is_an_error(tts, tmp_path, vctk_mini):
    good = vctk_mini / "wav48" / "p225" / "p225_001.wav"
    folder = tmp_path / "clips"
    folder.mkdir()
    rate = 22050
    shutil.copy(good, folder / "good.wav")
    (folder / "good.txt").write_text("Please call Stella.")
    sf.write(folder / "silent.wav", np.zeros(rate * 2, dtype=np.float32), rate)
    sf.write(folder / "short.wav", 0.3 * np.sin(np.arange(rate // 10) * 0.05).astype(np.float32), rate)
    (folder / "junk.wav").write_bytes(b"not audio at all" * 100)
    shutil.copy(good, folder / "untranscribed.wav")
    shutil.copy(good, folder / "dots.wav")
    shutil.copy(good, folder / "toolong_text.wav")
    for name, text in [("silent", "Hello."), ("short", "Hello."), ("junk", "Hello."), ("dots", "... !!!"),
                       ("toolong_text", " ".join(["Please call Stella and ask her to bring these things."] * 12))]:
        (folder / f"{name}.txt").write_text(text)
    clips = ClipReader.from_meta(tts.meta).read(folder)
    assert [c.name for c in clips.clips] == ["good.wav"]
    reasons = {Path(s.path).stem: s.reason for s in clips.skipped}
    assert set(reasons) == {"silent", "short", "junk", "untranscribed", "dots", "toolong_text"}
    assert "silent" in reasons["silent"]
    assert "too short" in reasons["short"]
    assert "unreadable" in reasons["junk"]
    assert "no transcript" in reasons["untranscribed"]
    assert "nothing pronounceable" in reasons["dots"]
    assert "frames for" in reasons["toolong_text"]
    report = "\n".join(clips.report())
    assert "clips used: 1" in report and "clips skipped: 6" in report and "untranscribed.wav: no transcript" in report

    (folder / "good.wav").unlink()
    with pytest.raises(ClipError, match="no usable clip among 6: .*silent"):
        ClipReader.from_meta(tts.meta).read(folder)
    with pytest.raises(ClipError, match="no audio files"):
        ClipReader.from_meta(tts.meta).read(tmp_path / "clips" / "good.txt")
    with pytest.raises(ClipError, match="2 texts for 1 clips"):
        ClipReader.from_meta(tts.meta).read([good], ["a", "b"])


def test_phonemes_unknown_to_the_table_skip_the_clip_or_read_as_unk(tts, vctk_mini):
    wav = vctk_mini / "wav48" / "p225" / "p225_001.wav"
    config = tts.config
    reduced = SymbolTable([s for s in tts.symbols.symbols if s != "ɛ"])  # "Stella" has ɛ
    normalizer = Normalizer.from_dict(tts.meta.stats)
    skipped = ClipReader(config.audio, config.text, reduced, normalizer).read([wav], ["Please call Stella."],
                                                                              require=False)
    assert not skipped.clips and "unknown to the checkpoint's symbol table: ɛ" in skipped.skipped[0].reason
    kept = ClipReader(config.audio, config.text, reduced, normalizer, unknown="unk").read([wav],
                                                                                         ["Please call Stella."])
    assert kept.clips[0].unknown == ["ɛ"] and reduced.unk_id in kept.clips[0].phoneme_ids.tolist()
    assert "read as <unk>" in "\n".join(kept.report())


# ------------------------------------------------------------------------------------------------ adaptation
def test_adaptation_lowers_the_support_loss_and_packs_only_the_speaker_group(voice, tts, checkpoint, tmp_path):
    losses = voice.losses
    assert len(losses) == 11 and all(np.isfinite(losses))
    assert losses[-1] < 0.95 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 8, losses  # SGD from φ0 goes down nearly every step
    assert set(voice.params) == SLOT == set(select_parameters(tts.model, tts.config.model.speaker_groups))
    assert voice.bytes == sum(p.numel() * 4 for p in voice.params.values())
    info = voice.info
    assert voice.pack.base_checkpoint == weights_digest(checkpoint)
    assert info["steps"] == 10 and info["optimizer"] == "sgd" and info["groups"] == ["speaker_embedding",
                                                                                       "speaker_norms"]
    assert info["lr"].startswith("config meta.inner_lr")  # a train checkpoint has no learned rates
    assert [c["name"] for c in info["clips"]] == [f"p225_00{i}.wav" for i in range(1, 6)] and info["skipped"] == []
    assert info["audio"] == read_meta(checkpoint).config["audio"]
    assert info["adapt_seconds"] > 0 and info["feature_seconds"] > 0
    path = voice.save(tmp_path / "p225.safetensors")
    assert voice.bytes < path.stat().st_size < 32 * 1024
    loaded = load_voice_pack(path, checkpoint, tts.model)
    assert all(torch.equal(loaded.params[n], voice.params[n]) for n in SLOT) and loaded.info == info


def test_adaptation_is_deterministic_and_leaves_the_model_alone(tts, checkpoint, voice, p225):
    before = {n: p.detach().clone() for n, p in tts.model.named_parameters()}
    tts.model.train()
    again = tts.adapt(*p225, steps=10)
    assert tts.model.training  # mode restored
    tts.model.eval()
    assert all(torch.equal(p, before[n]) for n, p in tts.model.named_parameters())
    assert all(torch.equal(again.params[n], voice.params[n]) for n in SLOT)
    assert again.losses == voice.losses


def test_length_buckets_give_the_loss_of_one_padded_batch(tts, voice):
    clips = voice.clips
    model = tts.model.eval()
    fast = {n: p.detach() for n, p in select_parameters(model, sorted(SLOT)).items()}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in fast}
    buckets = length_buckets([c.frames for c in clips.clips])
    assert 1 < len(buckets) < len(clips) and sorted(i for b in buckets for i in b) == list(range(len(clips)))
    one = clips.batch()
    one = one.with_durations(model.alignment(one).durations)
    parts = [clips.batch(b) for b in buckets]
    parts = [b.with_durations(model.alignment(b).durations) for b in parts]
    loss = FastSpeech2Loss()
    whole = support_loss_fn(model, frozen, [one], loss)(fast)
    assert torch.allclose(whole, loss(model(one), one).total, rtol=1e-5)
    assert torch.allclose(support_loss_fn(model, frozen, parts, loss)(fast), whole, rtol=1e-4)


def test_learned_inner_rates_of_a_meta_checkpoint_are_used(tts, checkpoint, voice, tmp_path):
    from metatts.checkpoints import save_model_checkpoint

    fast = select_parameters(tts.model, sorted(SLOT))
    meta = read_meta(checkpoint)
    meta.kind = "meta"
    rates = InnerLR(fast, init=0.05)
    meta_checkpoint = save_model_checkpoint(tmp_path / "meta", tts.model, meta, inner_lr=rates)
    learned = adapt_voice(tts.model, meta_checkpoint, voice.clips, steps=3)
    given = adapt_voice(tts.model, meta_checkpoint, voice.clips, steps=3, lr=0.05)
    assert learned.info["lr"].startswith("learned per-parameter (mean 0.05")
    assert all(torch.allclose(learned.params[n], given.params[n], atol=1e-6) for n in SLOT)


def test_options_adam_l2_anchor_and_groups(tts, checkpoint, voice):
    clips = voice.clips
    phi0 = {n: p.detach().clone() for n, p in select_parameters(tts.model, sorted(SLOT)).items()}
    adam = adapt_voice(tts.model, checkpoint, clips, steps=5, optimizer="adam")
    assert adam.losses[-1] < adam.losses[0] and adam.info["lr"] == "adam default 0.01"

    def distance(v: Voice) -> float:
        return float(sum(((v.params[n] - phi0[n]) ** 2).sum() for n in SLOT))

    free = adapt_voice(tts.model, checkpoint, clips, steps=5)
    anchored = adapt_voice(tts.model, checkpoint, clips, steps=5, l2_anchor=2.0)
    assert distance(anchored) < distance(free)
    norms_only = adapt_voice(tts.model, checkpoint, clips, steps=2, groups=["speaker_norms"])
    assert set(norms_only.params) == {"speaker.slot_norms"}
    unfrozen = adapt_voice(tts.model, checkpoint, clips, steps=1, groups=["speaker_norms", "mel_head"])
    assert set(unfrozen.params) == {"speaker.slot_norms", "mel_head.weight", "mel_head.bias"}
    with pytest.raises(ValueError, match="neither a parameter group"):
        adapt_voice(tts.model, checkpoint, clips, steps=1, groups=["speaker_nroms"])
    with pytest.raises(ValueError, match="optimizer"):
        adapt_voice(tts.model, checkpoint, clips, steps=1, optimizer="rmsprop")


def test_interpolation_spans_the_initial_and_the_adapted_voice(tts, voice):
    text = "Please call Stella."
    initial = tts.mels(text)[1][0]
    adapted = tts.mels(text, voice=voice)[1][0]
    assert initial.shape != adapted.shape or not torch.allclose(initial, adapted)
    assert torch.equal(tts.mels(text, voice=voice, alpha=0.0)[1][0], initial)
    assert torch.equal(tts.mels(text, voice=voice, alpha=1.0)[1][0], adapted)
    half = voice.interpolated(0.5, tts.model)
    named = dict(tts.model.named_parameters())
    for n in SLOT:
        assert torch.allclose(half[n], (named[n].detach() + voice.params[n]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        tts.synthesize(text, voice=voice, alpha=1.5)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_adapt_then_synthesize_with_the_pack(checkpoint, vctk_mini, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(1, 4):
        shutil.copy(vctk_mini / "wav48" / "p225" / f"p225_00{i}.wav", clips)
    (clips / "broken.wav").write_bytes(b"junk" * 50)
    tsv = tmp_path / "transcripts.tsv"
    tsv.write_text("".join(f"p225_00{i}.wav\t{(vctk_mini / 'txt' / 'p225' / f'p225_00{i}.txt').read_text().strip()}\n"
                           for i in range(1, 4)) + "broken.wav\tHello.\n")
    pack = tmp_path / "out" / "p225.safetensors"
    code = main(["adapt", "--checkpoint", str(checkpoint), "--clips", str(clips), "--transcripts", str(tsv),
                 "--steps", "3", "--l2", "0.1", "--out", str(pack)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "clips used: 3" in out and "broken.wav: unreadable" in out
    assert "support loss per step: 0:" in out and "3:" in out
    assert f"{pack.stat().st_size} bytes" in out
    code = main(["synthesize", "--checkpoint", str(checkpoint), "--voice", str(pack), "--text", "Please call Stella.",
                 "--vocoder", "griffinlim", "--out", str(tmp_path / "wav")])
    assert code == 0
    wave, rate = sf.read(tmp_path / "wav" / "0001.wav")
    assert rate == 22050 and len(wave) > 0.2 * rate


def test_cli_adapt_errors_exit_2_with_one_line(checkpoint, vctk_mini, tmp_path, capsys):
    base = ["adapt", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "v.safetensors")]
    wav = str(vctk_mini / "wav48" / "p225" / "p225_001.wav")
    cases = [
        (["--clips", str(vctk_mini / "wav48" / "p225")], "no usable clip among 10: .*no transcript"),
        (["--clips", wav, "--transcripts", str(tmp_path / "none.tsv")], "transcripts file .* does not exist"),
        (["--clips", wav, "--transcripts", str(vctk_mini / "txt" / "p225"), "--steps", "-1"], "steps must be >= 0"),
        (["--clips", wav, "--transcripts", str(vctk_mini / "txt" / "p225"), "--groups", "nothing"],
         "--groups nothing: a voice pack holds only speaker groups"),
        (["--clips", wav, "--transcripts", str(vctk_mini / "txt" / "p225"), "--groups", "mel_head"],
         "--groups mel_head: a voice pack holds only speaker groups"),
        (["--clips", wav], "no transcript"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("metatts adapt: error:") and len(err.splitlines()) == 1, err
        assert __import__("re").search(message, err), (message, err)
    assert not (tmp_path / "v.safetensors").exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_text("nope")
    assert main(["synthesize", "--checkpoint", str(checkpoint), "--voice", str(junk), "--text", "Hi.", "--out",
                 str(tmp_path / "wav")]) == 2
    assert "not a voice pack" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad input
def test_unsupported_files_in_a_clips_folder_get_a_skipped_line(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "b.mp3").write_bytes(b"ID3")
    (tmp_path / "c.png").write_bytes(b"\x89PNG")
    (tmp_path / "a.txt").write_text("A transcript, expected beside a clip.")
    (tmp_path / ".DS_Store").write_bytes(b"")
    files, skipped = find_clip_files(tmp_path)
    assert [f.name for f in files] == ["a.wav"]
    assert {Path(s.path).name: s.reason.split(" (")[0] for s in skipped} == {
        "b.mp3": "not a supported audio file", "c.png": "not a supported audio file"}


def test_libritts_normalized_transcripts_beside_clips_are_found(tts, vctk_mini, tmp_path):
    chapter = tmp_path / "103" / "1240"
    chapter.mkdir(parents=True)
    text = (vctk_mini / "txt" / "p225" / "p225_001.txt").read_text().strip()
    shutil.copy(vctk_mini / "wav48" / "p225" / "p225_001.wav", chapter / "103_1240_000001_000000.wav")
    (chapter / "103_1240_000001_000000.normalized.txt").write_text(text)
    (chapter / "103_1240_000001_000000.original.txt").write_text("ignored when the normalized one is there")
    clips = ClipReader.from_meta(tts.meta).read(chapter)
    assert [c.name for c in clips.clips] == ["103_1240_000001_000000.wav"] and clips.skipped == []
    assert clips.clips[0].text == normalize_text(text)
    assert read_transcripts(chapter) == {"103_1240_000001_000000": text}


def test_a_diverging_adaptation_warns_and_is_not_saved_unless_forced(tts, checkpoint, voice, tmp_path):
    try:
        wild = adapt_voice(tts.model, checkpoint, voice.clips, steps=3, lr=1e4)
    except ValueError as error:  # the loss went non-finite: refused outright, nothing to save
        assert "adaptation diverged" in str(error)
        return
    assert wild.diverged and "support loss grew from" in wild.info["warning"], wild.losses
    assert wild.losses[-1] > 5 * wild.losses[0]
    with pytest.raises(ValueError, match="not saved: the adaptation diverged"):
        wild.save(tmp_path / "wild.safetensors")
    assert not (tmp_path / "wild.safetensors").exists() and list(tmp_path.iterdir()) == []
    assert wild.save(tmp_path / "wild.safetensors", force=True).is_file()
    assert not voice.diverged
