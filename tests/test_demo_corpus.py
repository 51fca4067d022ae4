"""The espeak-ng demo corpus: voices, synthesis, sentences, LibriTTS layout, determinism, atomicity."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from metatts.corpus.demo import (DEMO_VARIANTS, EspeakSynthesizer, demo_speakers, espeak_synthesize,
                                 make_demo_corpus, variant_timbre, voice_variant_dir)
from metatts.corpus.sentences import WRITTEN, sentences_for_speaker
from metatts.text.normalize import normalize_text

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it rests under a tree."


@pytest.fixture(scope="module")
def synth() -> EspeakSynthesizer:
    return EspeakSynthesizer()


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _frames(audio: np.ndarray, size: int = 1024, hop: int = 256) -> np.ndarray:
    n = 1 + (len(audio) - size) // hop
    return np.stack([audio[i * hop:i * hop + size] for i in range(n)]) * np.hanning(size)


def _speech(frames: np.ndarray) -> np.ndarray:
    energy = (frames ** 2).sum(1)
    return frames[energy > 0.05 * energy.max()]  # loud frames: voiced speech, not pauses


def _mean_log_spectrum(audio: np.ndarray, sr: int) -> np.ndarray:
    """Long-term log spectrum in 40 bands up to 8 kHz, level removed (loudness is not identity)."""
    power = np.abs(np.fft.rfft(_speech(_frames(audio)), axis=1)) ** 2
    freqs = np.fft.rfftfreq(1024, 1 / sr)
    edges = np.linspace(0, 8000, 41)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges, edges[1:])], 1)
    m = 10 * np.log10(bands + 1e-10).mean(0)
    return m - m.mean()


def _median_f0(audio: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch (60-500 Hz) over the loud frames."""
    lo, hi = sr // 500, sr // 60
    f0 = []
    for frame in _speech(_frames(audio)):
        ac = np.correlate(frame, frame, "full")[len(frame) - 1:]
        f0.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0))


# --- voices -------------------------------------------------------------------------------------------------

def test_at_least_40_distinct_variants_are_available():
    assert len(DEMO_VARIANTS) >= 40 and len(set(DEMO_VARIANTS)) == len(DEMO_VARIANTS)
    assert all((voice_variant_dir() / v).is_file() for v in DEMO_VARIANTS)
    timbres = [variant_timbre(v) for v in DEMO_VARIANTS]
    assert all(timbres) and len(set(timbres)) == len(timbres)  # no two differ only in pitch/rate/echo


def test_pitch_only_variants_count_as_one_speaker():
    assert variant_timbre("Gene") == variant_timbre("Gene2")  # these two files differ only in pitch
    assert variant_timbre("m3") != variant_timbre("f2")


def test_demo_speakers_are_distinct():
    speakers = demo_speakers(40)
    assert len({s.id for s in speakers}) == 40 and len({s.voice for s in speakers}) == 40
    assert all("_" not in s.id for s in speakers)  # LibriTTS file names split on "_"
    assert {s.gender for s in speakers} == {"F", "M"}
    crossed = demo_speakers(2 * len(DEMO_VARIANTS), accents=("en-us", "en-gb"))
    assert len({(s.variant, s.accent) for s in crossed}) == len(crossed) == len({s.id for s in crossed})
    with pytest.raises(ValueError):
        demo_speakers(len(DEMO_VARIANTS) + 1)


# --- synthesis ----------------------------------------------------------------------------------------------

def test_espeak_synthesize_returns_float_audio():
    audio, sr = espeak_synthesize("Hello there, how are you?", "en-us+m3")
    assert sr == 22050 and audio.dtype == np.float32
    assert 0.8 < len(audio) / sr < 4 and 0.05 < np.abs(audio).max() <= 1.0


def test_synthesis_is_a_pure_function_of_text_voice_seed(synth):
    first = synth.synthesize_int16(SENTENCE, "en-us+f2", seed=3)
    synth.synthesize_int16("Something else entirely, said by someone else.", "en-us+klatt4", seed=9)
    again = synth.synthesize_int16(SENTENCE, "en-us+f2", seed=3)
    # espeak carries state from one utterance to the next; reloading the library per call removes it
    assert np.array_equal(first, again)
    assert np.array_equal(first, EspeakSynthesizer().synthesize_int16(SENTENCE, "en-us+f2", seed=3))


def test_blank_text_gives_no_samples(synth):
    assert len(synth.synthesize_int16("", "en-us")) == 0
    assert len(synth.synthesize_int16(" \n ", "en-us+m3")) == 0


def test_unknown_voices_are_rejected(synth):
    with pytest.raises(ValueError, match="variant"):
        synth.synthesize_int16("hello", "en-us+nosuchvariant")  # espeak itself would fall back silently
    with pytest.raises(ValueError, match="voice"):
        synth.synthesize_int16("hello", "xx-nosuchlanguage")


def test_speakers_sound_measurably_different(synth):
    sr = synth.sample_rate
    male, female = synth.synthesize(SENTENCE, "en-us+m1"), synth.synthesize(SENTENCE, "en-us+f1")
    assert _median_f0(female, sr) - _median_f0(male, sr) > 50  # Hz

    def distance(a: str, b: str) -> float:
        ea, eb = (_mean_log_spectrum(synth.synthesize(SENTENCE, f"en-us+{v}"), sr) for v in (a, b))
        return float(np.sqrt(((ea - eb) ** 2).mean()))

    # Two male voices of similar pitch differ in timbre by much more than a pitch-only change does.
    pitch_only = distance("Gene", "Gene2")
    assert distance("m3", "klatt4") > 2 * pitch_only
    assert distance("m7", "Reed") > 2 * pitch_only


# --- sentences ----------------------------------------------------------------------------------------------

def test_sentences_are_seeded_distinct_and_partly_shared():
    a = sentences_for_speaker("m1", 25, seed=0)
    assert a == sentences_for_speaker("m1", 25, seed=0) and len(set(a)) == 25
    assert a != sentences_for_speaker("m1", 25, seed=1)
    b = sentences_for_speaker("f1", 25, seed=0)
    shared = set(a) & set(b)
    assert 0 < len(shared) < 25  # held-out speakers say some sentences others said, and some new ones
    assert set(a) & set(WRITTEN) and set(a) - set(WRITTEN)


def test_sentences_exercise_the_normalizer():
    texts = [s for i in range(10) for s in sentences_for_speaker(f"s{i}", 25, seed=0)]
    assert sum(normalize_text(t) != t for t in texts) >= 10
    assert all(normalize_text(t) for t in texts)


# --- the corpus ---------------------------------------------------------------------------------------------

UTT_RE = re.compile(r"^(?P<spk>[^_]+)_(?P<chapter>\d+)_\d{6}_\d{6}$")


def test_small_corpus_layout(tmp_path):
    info = make_demo_corpus(tmp_path / "demo", speakers=3, sentences_per_speaker=3, seed=0)
    root = tmp_path / "demo"
    assert info.created and info.root == root and info.utterances == 9 and len(info.speakers) == 3
    wavs = sorted((root / info.subset).rglob("*.wav"))
    assert len(wavs) == 9
    for wav_path in wavs:
        m = UTT_RE.match(wav_path.stem)
        assert m, wav_path.name
        # <subset>/<speaker>/<chapter>/<speaker>_<chapter>_<nnnnnn>_<nnnnnn>.wav
        assert wav_path.parent.name == m["chapter"] and wav_path.parent.parent.name == m["spk"]
        assert wav_path.parent.parent.parent.name == info.subset
        with wave.open(str(wav_path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
            assert w.getnframes() > 22050 // 2
        original = wav_path.with_suffix(".original.txt").read_text(encoding="utf-8").strip()
        normalized = wav_path.with_suffix(".normalized.txt").read_text(encoding="utf-8").strip()
        assert normalized == normalize_text(original)
    speakers_tsv = (root / "speakers.tsv").read_text(encoding="utf-8").splitlines()
    assert len(speakers_tsv) == 4 and speakers_tsv[0].startswith("READER\tGENDER")
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert all(s.voice in readme and s.id in readme for s in info.speakers)
    assert sum(1 for _ in (root / info.subset).rglob("*.trans.tsv")) == 3


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = make_demo_corpus(tmp_path / "a", speakers=2, sentences_per_speaker=3, seed=7)
    b = make_demo_corpus(tmp_path / "b", speakers=2, sentences_per_speaker=3, seed=7)
    c = make_demo_corpus(tmp_path / "c", speakers=2, sentences_per_speaker=3, seed=8)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_rerun_is_a_no_op_and_conflicts_are_refused(tmp_path):
    root = tmp_path / "demo"
    make_demo_corpus(root, speakers=2, sentences_per_speaker=2, seed=0)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = make_demo_corpus(root, speakers=2, sentences_per_speaker=2, seed=0)
    assert not again.created and {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    with pytest.raises(FileExistsError, match="other parameters"):
        make_demo_corpus(root, speakers=2, sentences_per_speaker=2, seed=1)
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        make_demo_corpus(tmp_path / "other", speakers=2, sentences_per_speaker=2)


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path):
    root = tmp_path / "demo"

    def die(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_demo_corpus(root, speakers=2, sentences_per_speaker=3, progress=die)
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_partial_corpus_of_a_killed_run_is_cleaned_up(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".demo.partial-{int(dead.stdout)}"
    (stale / "demo").mkdir(parents=True)
    make_demo_corpus(tmp_path / "demo", speakers=1, sentences_per_speaker=1)
    assert not stale.exists() and (tmp_path / "demo" / "demo_corpus.json").is_file()


@pytest.mark.slow
def test_every_demo_variant_differs_more_than_a_pitch_change(synth):
    """Each pair of DEMO_VARIANTS differs in long-term spectrum by more than Gene vs Gene2 (pitch only)."""
    sr = synth.sample_rate
    texts = [SENTENCE, "Her voice was soft, but her choice was firm, and she shared the rare pear."]

    def embed(variant: str) -> np.ndarray:
        audio = np.concatenate([synth.synthesize(t, f"en-us+{variant}") for t in texts])
        return _mean_log_spectrum(audio, sr)

    pitch_only = float(np.sqrt(((embed("Gene") - embed("Gene2")) ** 2).mean()))
    e = np.stack([embed(v) for v in DEMO_VARIANTS])
    d = np.sqrt(((e[:, None] - e[None]) ** 2).mean(-1))
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert d[i, j] > 1.5 * pitch_only, (DEMO_VARIANTS[i], DEMO_VARIANTS[j], d[i, j], pitch_only)
