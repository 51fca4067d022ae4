"""`prepare` with `data.textgrids`: phonemes and durations from MFA TextGrids, skips, collate and training on them."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from metatts.config import ConfigError, config_from_dict
from metatts.corpus.demo import espeak_synthesize
from tiny import TINY_MODEL
from metatts.episodes.collate import Collator, Normalizer
from metatts.features.prepare import prepare
from metatts.features.store import FeatureStore, read_summary
from metatts.runtime.checkpoint import load_weights
from metatts.text.symbols import BASE_SYMBOLS, SymbolTable
from metatts.train.common import RunData, build_model
from metatts.train.supervised import train

SENTENCES = ["The quick brown fox jumps.", "She sells sea shells by the shore.", "A big dog ran home today.",
             "Please call Stella soon."]
# ARPAbet labels as MFA's english_us_arpa model writes them; "sp" is a short pause inside the utterance.
PHONES = ["DH", "AH0", "K", "W", "IH1", "K", "sp", "B", "R", "AW1", "N"]
LEAD_SECONDS = 0.4  # silence put before each recording: the features start after it once it is trimmed
TINY = [*TINY_MODEL, "train.batch_size=4", "train.warmup_steps=2",
        "train.log_every=1", "train.val_every=2", "train.checkpoint_every=2", "train.threads=1"]


def _textgrid(intervals: list[tuple[float, float, str]]) -> str:
    """A TextGrid in Praat's long text format with one "words" and one "phones" tier."""
    end = intervals[-1][1]

    def tier(name: str, items: list[tuple[float, float, str]]) -> str:
        body = "".join(f"        intervals [{i + 1}]:\n            xmin = {a!r}\n            xmax = {b!r}\n"
                       f"            text = \"{text}\"\n" for i, (a, b, text) in enumerate(items))
        return (f"        class = \"IntervalTier\"\n        name = \"{name}\"\n"
                f"        xmin = 0\n        xmax = {end!r}\n        intervals: size = {len(items)}\n{body}")

    return (f"File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\nxmin = 0\nxmax = {end!r}\ntiers? <exists>\n"
            f"size = 2\nitem []:\n    item [1]:\n{tier('words', [(0.0, end, 'words')])}"
            f"    item [2]:\n{tier('phones', intervals)}")


def _speech_span(wave: np.ndarray, rate: int) -> tuple[float, float]:
    """Seconds where the speech starts and ends (10 ms frames within 50 dB of the loudest)."""
    frame = rate // 100
    rms = np.sqrt(np.mean(np.square(wave[: len(wave) // frame * frame].reshape(-1, frame)), axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-50 / 20))
    return loud[0] * frame / rate, (loud[-1] + 1) * frame / rate


def _phone_intervals(wave: np.ndarray, rate: int, labels=PHONES) -> list[tuple[float, float, str]]:
    """Leading silence "", the labels evenly over the speech, trailing "sil": an alignment of known times."""
    start, end = _speech_span(wave, rate)
    edges = np.linspace(start, end, len(labels) + 1).round(4)
    return ([(0.0, float(edges[0]), "")] + [(float(a), float(b), p) for a, b, p in zip(edges, edges[1:], labels)]
            + [(float(edges[-1]), len(wave) / rate, "sil")])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Folder corpus of two espeak voices; TextGrids for all but m1_3 (none) and f2_3 (broken)."""
    root = tmp_path_factory.mktemp("tgcorpus")
    grids: dict[str, list[tuple[float, float, str]]] = {}
    for voice in ("m1", "f2"):
        (root / "corpus" / voice).mkdir(parents=True)
        (root / "grids" / voice).mkdir(parents=True)
        for i, text in enumerate(SENTENCES):
            wave, rate = espeak_synthesize(text, f"en-us+{voice}")
            wave = np.concatenate([np.zeros(int(LEAD_SECONDS * rate), dtype=np.float32), wave])
            utt = f"{voice}_{i}"
            sf.write(root / "corpus" / voice / f"{utt}.wav", wave, rate)
            (root / "corpus" / voice / f"{utt}.txt").write_text(text)
            if utt == "m1_3":
                continue
            if utt == "f2_3":
                (root / "grids" / voice / f"{utt}.TextGrid").write_text("File type = \"ooTextFile\"\nnot a grid\n")
                continue
            grids[utt] = _phone_intervals(wave, rate)
            (root / "grids" / voice / f"{utt}.TextGrid").write_text(_textgrid(grids[utt]))
    return root / "corpus", root / "grids", grids


def _config(corpus: Path, grids: Path, store: Path, *overrides: str):
    return config_from_dict({}, [f"data.corpus={corpus}", f"data.features={store}", f"data.textgrids={grids}",
                                 "data.layout=folder", "data.val_speakers=0", "data.test_speakers=0",
                                 "data.workers=1", "data.min_utterances_per_speaker=2", "meta.shots=1",
                                 "meta.queries=1", *overrides])


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tgstore") / "store"
    prepare(_config(*corpus[:2], path), progress=False, log=lambda *_: None)
    return path


def test_config_checks_the_textgrid_options():
    with pytest.raises(ConfigError, match="data.textgrid_silence"):
        config_from_dict({}, ["data.textgrid_silence=<pad>"])
    with pytest.raises(ConfigError, match="data.textgrid_tier"):
        config_from_dict({}, ["data.textgrid_tier= "])


def test_phonemes_and_durations_come_from_the_textgrids(corpus, store):
    _, _, grids = corpus
    report = json.loads((store / "report.json").read_text())
    assert report["usable"] == 6
    entries = FeatureStore(store).by_id
    assert set(entries) == set(grids)
    # Inner "sp" becomes the pause symbol; leading "" and trailing "sil" join the first and last phone.
    expected = [p if p != "sp" else "," for p in PHONES]
    for utt, intervals in grids.items():
        entry = entries[utt]
        assert entry.phonemes == expected
        assert len(entry.durations) == len(expected) and min(entry.durations) >= 1
        assert sum(entry.durations) == entry.frames
        # Inner boundaries are the TextGrid's times shifted by the trimmed leading audio (~LEAD_SECONDS).
        trim = read_summary(store / entry.path).trim_start_seconds
        assert LEAD_SECONDS - 0.05 < trim < intervals[1][0]
        frame_rate = 22050 / 256
        ends = np.cumsum(entry.durations)[:-1]
        want = np.round((np.array([b for _, b, _ in intervals[1:-2]]) - trim) * frame_rate)
        assert np.abs(ends - want).max() <= 1, (utt, ends, want)
    symbols = SymbolTable.from_json((store / "symbols.json").read_text())
    assert symbols.symbols[:len(BASE_SYMBOLS)] == BASE_SYMBOLS  # extended append-only
    assert {"DH", "AH0", "AW1", "IH1"} <= set(symbols.symbols)


def test_utterances_without_or_with_a_broken_textgrid_are_skipped_with_the_reason(store):
    skipped = {item["id"]: item for item in json.loads((store / "report.json").read_text())["skipped"]}
    assert skipped["m1_3"]["stage"] == "textgrid" and skipped["m1_3"]["reason"].startswith("no TextGrid")
    assert skipped["f2_3"]["stage"] == "textgrid" and skipped["f2_3"]["reason"].startswith("TextGridError")
    assert "f2_3.TextGrid" in skipped["f2_3"]["reason"]


def test_a_textgrid_that_does_not_cover_the_audio_is_skipped(corpus, tmp_path):
    audio, grids, intervals = corpus
    short = tmp_path / "grids"
    (short / "m1").mkdir(parents=True)
    half = [(a, b, t) for a, b, t in intervals["m1_0"] if b <= intervals["m1_0"][-1][1] / 2]
    (short / "m1" / "m1_0.TextGrid").write_text(_textgrid(half))
    for utt in ("m1_1", "m1_2"):
        (short / "m1" / f"{utt}.TextGrid").write_text((grids / "m1" / f"{utt}.TextGrid").read_text())
    report = prepare(_config(audio, short, tmp_path / "store"), progress=False, log=lambda *_: None)
    reasons = {item["id"]: item["reason"] for item in report.skipped}
    assert "covers" in reasons["m1_0"] and reasons["m1_0"].startswith("TextGridError")
    assert report.usable == 2 and sum(r.startswith("no TextGrid") for r in reasons.values()) == 5


def test_changed_textgrids_reuse_the_audio_features(corpus, store, tmp_path):
    audio, grids, intervals = corpus
    relabeled = tmp_path / "grids"
    for utt, items in intervals.items():
        (relabeled / utt[:2]).mkdir(parents=True, exist_ok=True)
        items = [(a, b, "AA1" if t == "K" else t) for a, b, t in items]
        (relabeled / utt[:2] / f"{utt}.TextGrid").write_text(_textgrid(items))
    copy = tmp_path / "store"
    copy.mkdir()
    (copy / ".metatts-output").write_bytes((store / ".metatts-output").read_bytes())  # as a killed run leaves it
    for path in (store / "utts").rglob("*.safetensors"):
        target = copy / path.relative_to(store)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    report = prepare(_config(audio, relabeled, copy), progress=False, log=lambda *_: None)
    assert (report.extracted, report.reused) == (0, 6)  # durations live in the manifest, not in feature files
    entry = FeatureStore(copy).by_id["m1_0"]
    assert "AA1" in entry.phonemes and "K" not in entry.phonemes
    assert entry.durations == FeatureStore(store).by_id["m1_0"].durations


def test_collator_yields_the_durations_and_training_uses_them(store, tmp_path):
    features = FeatureStore(store)
    normalizer = Normalizer.from_dict(json.loads((store / "stats.json").read_text())["global"])
    collator = Collator(features, SymbolTable.from_json(features.symbols_json), {}, normalizer)
    ids = ["m1_0", "f2_1", "f2_2"]
    batch = collator(ids)
    assert batch.durations is not None and batch.durations.dtype == torch.long
    assert batch.durations.shape == batch.phonemes.shape
    assert torch.equal(batch.durations.sum(1), batch.mel_lengths)
    for row, utt in enumerate(ids):
        durations = features.by_id[utt].durations
        assert batch.durations[row, :len(durations)].tolist() == durations
        assert not batch.durations[row, len(durations):].any()  # padding is 0

    config = config_from_dict({}, [f"data.features={store}", "train.steps=2", "data.min_utterances_per_speaker=2",
                                   "data.val_speakers=0", "data.test_speakers=0", "meta.shots=1",
                                   "meta.queries=1", *TINY])
    result = train(config, tmp_path / "run", progress=False, log=lambda *_: None)
    assert result.step == 2 and all(np.isfinite(r["total"]) for r in result.train_losses)
    data = RunData.load(config)
    model = build_model(config, len(data.symbols), len(data.speakers))
    load_weights(tmp_path / "run" / "checkpoint", model)
    model.eval()
    batch = data.collator(ids)
    with torch.no_grad():
        output = model(batch)
    assert output.alignment is None  # the built-in aligner did not run
    assert torch.equal(output.duration_targets, batch.durations)
