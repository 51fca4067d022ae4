"""`metatts prepare`: feature store contents, cache reuse and invalidation, resume after a kill, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metatts.cli import main
from metatts.config import config_from_dict
from metatts.corpus.demo import espeak_synthesize
from metatts.corpus.splits import SplitError
from metatts.features.prepare import prepare
from metatts.features.store import FeatureStore, read_features

SENTENCES = ["The quick brown fox jumps.", "She sells sea shells by the shore.", "A big dog ran home today.",
             "Please call Stella soon.", "We walked along the river bank.", "My cat likes warm milk."]


def _corpus(root: Path, speakers=("m1", "f2"), per_speaker=6) -> Path:
    """A folder-layout corpus of real synthesized speech: <speaker>/<utt>.wav + .txt."""
    for voice in speakers:
        folder = root / voice
        folder.mkdir(parents=True)
        for i, text in enumerate(SENTENCES[:per_speaker]):
            wave, rate = espeak_synthesize(text, f"en-us+{voice}")
            sf.write(folder / f"{voice}_{i}.wav", wave, rate)
            (folder / f"{voice}_{i}.txt").write_text(text)
    return root


def _config(corpus: Path, store: Path, *overrides: str):
    return config_from_dict({}, [f"data.corpus={corpus}", f"data.features={store}", "data.layout=folder",
                                 "data.val_speakers=0", "data.test_speakers=0", "data.workers=1",
                                 "data.min_utterances_per_speaker=3", "meta.shots=1", "meta.queries=1",
                                 *overrides])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"))


def test_store_holds_aligned_features_stats_and_symbols(corpus, tmp_path):
    report = prepare(_config(corpus, tmp_path / "store"), progress=False, log=lambda *_: None)
    assert (report.usable, report.extracted, report.reused, report.speakers) == (12, 12, 0, 2)
    store = FeatureStore(tmp_path / "store")
    assert len(store) == 12 and set(store.speakers()) == {"m1", "f2"}
    entry = store.entries[0]
    features = store.load(entry.id)
    assert features.mel.shape == (80, entry.frames)
    assert features.pitch.shape == features.energy.shape == features.voiced.shape == (entry.frames,)
    assert entry.phonemes and "|" in entry.phonemes  # word boundaries kept
    # The female variant speaks higher than the male one: the per-speaker stats see it.
    assert store.speaker_stats["f2"].log_f0_mean > store.speaker_stats["m1"].log_f0_mean + 0.2
    for name in ("stats.json", "symbols.json", "splits.json", "config.yaml", "report.json"):
        assert (tmp_path / "store" / name).is_file()


def test_rerun_reuses_and_changed_config_reextracts(corpus, tmp_path):
    store = tmp_path / "store"
    prepare(_config(corpus, store), progress=False, log=lambda *_: None)
    again = prepare(_config(corpus, store), progress=False, log=lambda *_: None)
    assert (again.extracted, again.reused) == (0, 12)
    changed = prepare(_config(corpus, store, "audio.trim_top_db=30"), progress=False, log=lambda *_: None)
    assert (changed.extracted, changed.reused) == (12, 0)


def test_changed_audio_content_is_reextracted(tmp_path):
    corpus = _corpus(tmp_path / "corpus", speakers=("m3",), per_speaker=3)
    store = tmp_path / "store"
    config = _config(corpus, store, "data.min_utterances_per_speaker=2")
    prepare(config, progress=False, log=lambda *_: None)
    old = read_features(store / "utts/m3/m3_0.safetensors").mel.clone()
    wave, rate = espeak_synthesize("Completely different words now.", "en-us+m3")
    sf.write(corpus / "m3" / "m3_0.wav", wave, rate)
    report = prepare(config, progress=False, log=lambda *_: None)
    assert (report.extracted, report.reused) == (1, 2)
    assert read_features(store / "utts/m3/m3_0.safetensors").mel.shape != old.shape


def test_damaged_files_and_leftovers_of_a_killed_run(corpus, tmp_path):
    store = tmp_path / "store"
    prepare(_config(corpus, store), progress=False, log=lambda *_: None)
    victim = next((store / "utts" / "m1").glob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:100])  # a truncated file must not read as valid
    leftover = victim.with_name(f".{victim.name}.tmp-999")
    leftover.write_bytes(b"partial")
    (store / "manifest.jsonl").unlink()
    report = prepare(_config(corpus, store), progress=False, log=lambda *_: None)
    assert (report.extracted, report.reused) == (1, 11)
    assert not leftover.exists()
    assert read_features(victim).mel.shape[0] == 80


@pytest.mark.slow
def test_prepare_killed_with_sigkill_resumes_to_the_same_store(tmp_path):
    corpus = _corpus(tmp_path / "corpus", speakers=("m1", "f2", "m3"), per_speaker=6)
    args = ["prepare", "--corpus", str(corpus), "--workers", "1", "--quiet", "--set", "data.layout=folder",
            "--set", "data.val_speakers=0", "--set", "data.test_speakers=0",
            "--set", "data.min_utterances_per_speaker=3", "--set", "meta.shots=1", "--set", "meta.queries=1"]
    reference = tmp_path / "reference"
    assert main(args + ["--out", str(reference)]) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "metatts.cli", *args, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(killed.glob("utts/*/*.safetensors"))) < 4:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "manifest.jsonl").exists(), "the kill should land before the manifest is written"
    assert main(args + ["--out", str(killed)]) == 0
    report = json.loads((killed / "report.json").read_text())
    assert report["reused"] >= 4 and report["reused"] + report["extracted"] == 18
    ours, theirs = FeatureStore(killed), FeatureStore(reference)
    assert [e.id for e in ours.entries] == [e.id for e in theirs.entries]
    for entry in ours.entries:
        assert np.array_equal(ours.load(entry.id).mel.numpy(), theirs.load(entry.id).mel.numpy())


def test_bad_input_is_skipped_with_reasons_and_the_rest_is_processed(tmp_path):
    corpus = _corpus(tmp_path / "corpus", speakers=("m1",), per_speaker=4)
    folder = corpus / "m1"
    (folder / "corrupt.wav").write_bytes(os.urandom(2000))
    (folder / "corrupt.txt").write_text("Some words here.")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "empty.txt").write_text("Some words here.")
    sf.write(folder / "silent.wav", np.zeros(22050 * 2, dtype=np.float32), 22050)
    (folder / "silent.txt").write_text("Some words here.")
    sf.write(folder / "short.wav", espeak_synthesize("Hi.", "en-us+m1")[0][:2000], 22050)
    (folder / "short.txt").write_text("Hi.")
    long_wave = np.concatenate([espeak_synthesize(SENTENCES[0], "en-us+m1")[0]] * 12)
    sf.write(folder / "long.wav", long_wave, 22050)
    (folder / "long.txt").write_text(SENTENCES[0])
    sf.write(folder / "notext.wav", espeak_synthesize("Hello there.", "en-us+m1")[0], 22050)
    sf.write(folder / "blank.wav", espeak_synthesize("Hello there.", "en-us+m1")[0], 22050)
    (folder / "blank.txt").write_text("   ")
    sf.write(folder / "symbols.wav", espeak_synthesize("Hello there.", "en-us+m1")[0], 22050)
    (folder / "symbols.txt").write_text("... !!! ???")
    (folder / "orphan.txt").write_text("A transcript without audio.")
    config = _config(corpus, tmp_path / "store", "audio.max_seconds=12", "data.min_utterances_per_speaker=2")
    report = prepare(config, progress=False, log=lambda *_: None)
    assert report.usable == 4
    reasons = {item["id"].removeprefix("m1_"): item["reason"].lower() for item in report.skipped}
    assert set(reasons) >= {"corrupt", "empty", "silent", "short", "long", "notext", "blank", "symbols", "orphan"}
    assert "silent" in reasons["silent"]
    assert "short" in reasons["short"] and "long" in reasons["long"]
    assert "pronounceable" in reasons["symbols"]
    saved = json.loads((tmp_path / "store" / "report.json").read_text())
    assert len(saved["skipped"]) == len(report.skipped) and "m1/corrupt.wav" in json.dumps(saved["skipped"])


def test_missing_or_unknown_corpus_exits_nonzero_naming_path_and_layouts(tmp_path, capsys):
    assert main(["prepare", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.md").write_text("nothing here")
    assert main(["prepare", "--corpus", str(tmp_path / "junk"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "junk") in err and "libritts" in err and "kaldi" in err


def test_a_split_that_no_longer_fits_changes_no_store_file(corpus, tmp_path):
    store = tmp_path / "store"
    prepare(_config(corpus, store), progress=False, log=lambda *_: None)
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    with pytest.raises(SplitError, match="other settings"):
        prepare(_config(corpus, store, "data.test_speakers=1"), progress=False, log=lambda *_: None)
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before
