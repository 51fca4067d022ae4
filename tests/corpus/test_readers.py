"""Corpus readers on the real sets in ../shared/data and on tiny generated corpora of every layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metatts.corpus.readers import CorpusError, CorpusScan, detect_layout, read_corpus


def _wav(path: Path) -> Path:
    """A real, tiny audio file (readers only need it to exist, but it should be decodable like the real thing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    sf.write(path, np.zeros(160, dtype=np.float32), 16000, format=fmt)
    return path


def _txt(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _reasons(scan: CorpusScan) -> dict[str, str]:
    return {s.id: s.reason for s in scan.skipped}


# ---------------------------------------------------------------------------------------------- real sets


def test_vctk_mini_reads_40_utterances_and_skips_28_transcripts_without_audio(vctk_mini):
    scan = read_corpus(vctk_mini)
    assert scan.layout == "vctk" and scan.name == "vctk-mini"
    assert scan.speakers() == {"p225": 10, "p226": 10, "p227": 10, "p228": 10}
    assert len(scan.skipped) == 28
    assert all(s.stage == "read" and s.reason.startswith("transcript without audio") for s in scan.skipped)
    assert all(s.path.endswith(".txt") and os.path.exists(s.path) for s in scan.skipped)
    first = scan.utterances[0]
    assert (first.id, first.speaker, first.text) == ("p225_001", "p225", "Please call Stella.")
    assert all(os.path.isfile(u.audio_path) for u in scan.utterances)
    assert scan.utterances == sorted(scan.utterances, key=lambda u: (u.speaker, u.id))


def test_speechocean_kaldi_reads_96_speakers_of_20(speechocean):
    for path in (speechocean, speechocean / "data"):  # the corpus folder or its data dir
        scan = read_corpus(path)
        assert scan.layout == "kaldi"
        assert scan.name == "speechocean762-adults"
        assert len(scan.speakers()) == 96 and set(scan.speakers().values()) == {20}
        assert scan.skipped == []
        assert all(os.path.isfile(u.audio_path) and u.text == u.text.strip() and u.text for u in scan.utterances)
        utt = next(u for u in scan.utterances if u.id == "000240010")
        assert (utt.speaker, utt.text) == ("0024", "IT WAS GOOD FOR ME")


# ----------------------------------------------------------------------------------------------- libritts


def _libritts_subset(subset: Path) -> None:
    for spk, chapters in (("19", ("198", "227")), ("26", ("495", "496"))):
        for chapter in chapters:
            folder = subset / spk / chapter
            for n in range(2):
                utt = f"{spk}_{chapter}_000000_00000{n}"
                _wav(folder / f"{utt}.wav")
                _txt(folder / f"{utt}.normalized.txt", f"Normalized {spk} {chapter} {n}.\n")
                _txt(folder / f"{utt}.original.txt", f"Original {spk} {chapter} {n}.\n")
            _txt(folder / f"{spk}_{chapter}.trans.tsv", "ignored\n")


@pytest.mark.parametrize("root_is_subset", [True, False])
def test_libritts_speaker_is_not_the_chapter(tmp_path, root_is_subset):
    libritts = tmp_path / "LibriTTS"
    _libritts_subset(libritts / "dev-clean")
    _txt(libritts / "SPEAKERS.txt", "; header\n")
    root = libritts / "dev-clean" if root_is_subset else libritts
    assert detect_layout(root) == "libritts"
    scan = read_corpus(root)
    assert scan.speakers() == {"19": 4, "26": 4}
    assert scan.skipped == []
    utt = scan.utterances[0]
    assert (utt.id, utt.speaker, utt.text) == ("19_198_000000_000000", "19", "Normalized 19 198 0.")


def test_libritts_subsets_are_merged(tmp_path):
    _libritts_subset(tmp_path / "LibriTTS" / "dev-clean")
    _wav(tmp_path / "LibriTTS" / "test-clean" / "61" / "70968" / "61_70968_000000_000000.wav")
    _txt(tmp_path / "LibriTTS" / "test-clean" / "61" / "70968" / "61_70968_000000_000000.normalized.txt", "Hi.")
    assert read_corpus(tmp_path / "LibriTTS").speakers() == {"19": 4, "26": 4, "61": 1}


def test_libritts_falls_back_to_original_and_skips_the_rest(tmp_path):
    chapter = tmp_path / "sub" / "40" / "222"
    _wav(chapter / "a.wav"), _txt(chapter / "a.original.txt", "  Only   original.\n")
    _wav(chapter / "b.wav"), _txt(chapter / "b.normalized.txt", ""), _txt(chapter / "b.original.txt", "Orig b.")
    _wav(chapter / "c.wav")  # no transcript at all
    _txt(chapter / "d.normalized.txt", "No audio.")
    _wav(chapter / "e.wav"), _txt(chapter / "e.normalized.txt", "\n  \n")  # empty, no original to fall back to
    scan = read_corpus(tmp_path / "sub")
    assert {u.id: u.text for u in scan.utterances} == {"a": "Only original.", "b": "Orig b."}
    reasons = _reasons(scan)
    assert reasons["c"].startswith("audio without transcript")
    assert reasons["d"].startswith("transcript without audio")
    assert reasons["e"] == "empty transcript"


# --------------------------------------------------------------------------------------------------- vctk


def _vctk_092(root: Path) -> None:
    for spk in ("p225", "p226"):
        for n in (1, 2):
            _txt(root / "txt" / spk / f"{spk}_00{n}.txt", f"Sentence {n} of {spk}.\n")
            _wav(root / "wav48_silence_trimmed" / spk / f"{spk}_00{n}_mic1.flac")
            if not (spk == "p226" and n == 2):  # as in the real corpus, some mic2 files are missing
                _wav(root / "wav48_silence_trimmed" / spk / f"{spk}_00{n}_mic2.flac")


@pytest.mark.parametrize("mic", ["mic1", "mic2"])
def test_vctk_092_selects_the_microphone(tmp_path, mic):
    _vctk_092(tmp_path / "VCTK-Corpus-0.92")
    scan = read_corpus(tmp_path / "VCTK-Corpus-0.92", vctk_mic=mic)
    assert scan.layout == "vctk"
    assert all(u.audio_path.endswith(f"_{mic}.flac") for u in scan.utterances)
    assert [u.id for u in scan.utterances][:2] == ["p225_001", "p225_002"]  # ids carry no microphone
    if mic == "mic1":
        assert len(scan.utterances) == 4 and scan.skipped == []
    else:
        assert len(scan.utterances) == 3
        assert [(s.id, s.reason) for s in scan.skipped] == [
            ("p226_002", "transcript without audio: no wav48_silence_trimmed/p226/p226_002_mic2.flac")]


def test_vctk_audio_without_transcript_and_empty_transcript(tmp_path):
    _txt(tmp_path / "txt" / "p225" / "p225_001.txt", "Hello.")
    _txt(tmp_path / "txt" / "p225" / "p225_002.txt", "   \n")
    for n in (1, 2, 3):
        _wav(tmp_path / "wav48" / "p225" / f"p225_00{n}.wav")
    _wav(tmp_path / "wav48" / "p315" / "p315_001.wav")  # VCTK's p315 has audio and no txt folder
    scan = read_corpus(tmp_path)
    assert [u.id for u in scan.utterances] == ["p225_001"]
    reasons = _reasons(scan)
    assert reasons["p225_002"] == "empty transcript"
    assert reasons["p225_003"] == "audio without transcript: no txt/p225/p225_003.txt"
    assert reasons["p315_001"] == "audio without transcript: no txt/p315/p315_001.txt"


def test_vctk_rejects_unknown_microphone(vctk_mini):
    with pytest.raises(CorpusError, match="mic3"):
        read_corpus(vctk_mini, vctk_mic="mic3")


# -------------------------------------------------------------------------------------------------- kaldi


def _kaldi(root: Path, wav_lines: list[str], text_lines: list[str], utt2spk_lines: list[str]) -> Path:
    data = root / "data"
    _txt(data / "wav.scp", "\n".join(wav_lines) + "\n")
    _txt(data / "text", "\n".join(text_lines) + "\n")
    _txt(data / "utt2spk", "\n".join(utt2spk_lines) + "\n")
    return data


def test_kaldi_resolves_paths_and_skips_every_bad_entry(tmp_path):
    corpus = tmp_path / "kcorpus"
    _wav(corpus / "audio" / "u1.flac")
    _wav(corpus / "data" / "local" / "u2.wav")  # relative to the data dir
    absolute = _wav(tmp_path / "elsewhere" / "u3.wav")
    _wav(corpus / "audio" / "u8.flac")
    data = _kaldi(corpus, [
        "u1 audio/u1.flac",
        "u2 local/u2.wav",
        f"u3 {absolute}",
        "u4 sox audio/u4.wav -t wav - |",
        "u5 audio/missing.flac",
        "u6 feats.ark:123",
        "u1 audio/other.flac",  # duplicate id: the first line wins
        "u8 audio/u8.flac",
        "u9 audio/u1.flac",
    ], [
        "u1 HELLO   WORLD", "u2 SECOND", "u3 THIRD", "u4 PIPED", "u5 GONE", "u6 ARK", "u7 NO AUDIO", "u8",
    ], [
        "u1 s1", "u2 s1", "u3 s2", "u4 s2", "u5 s2", "u6 s2", "u7 s2", "u8 s2",
    ])
    assert detect_layout(corpus) == "kaldi" and detect_layout(data) == "kaldi"
    scan = read_corpus(corpus)
    assert [(u.id, u.speaker, u.text) for u in scan.utterances] == [
        ("u1", "s1", "HELLO WORLD"), ("u2", "s1", "SECOND"), ("u3", "s2", "THIRD")]
    by_id = {u.id: u for u in scan.utterances}
    assert by_id["u1"].audio_path == str(corpus / "audio" / "u1.flac")
    assert by_id["u2"].audio_path == str(data / "local" / "u2.wav")
    assert by_id["u3"].audio_path == str(absolute)
    reasons = [(s.id, s.reason) for s in scan.skipped]
    assert ("u1", "duplicate utterance id 'u1' on line 7 of wav.scp: kept line 1") in reasons
    reasons = dict(reasons)
    assert "piped command" in reasons["u4"]
    assert reasons["u5"].startswith("audio file not found: audio/missing.flac")
    assert "archive offsets" in reasons["u6"]
    assert reasons["u7"] == "transcript without audio: no entry in wav.scp"
    assert reasons["u8"] == "empty transcript"
    assert reasons["u9"] == "audio without transcript: no entry in text"


def test_kaldi_spk2utt_and_missing_speaker(tmp_path):
    _wav(tmp_path / "a.wav"), _wav(tmp_path / "b.wav")
    data = tmp_path / "data"
    _txt(data / "wav.scp", "a a.wav\nb b.wav\n")
    _txt(data / "text", "a ONE\nb TWO\n")
    _txt(data / "spk2utt", "spk a\n")
    scan = read_corpus(data)
    assert [(u.id, u.speaker) for u in scan.utterances] == [("a", "spk")]
    assert _reasons(scan) == {"b": "no speaker for this utterance in utt2spk"}
    assert scan.name == tmp_path.name  # a data dir called "data" is named after its corpus


def test_kaldi_refuses_segments(tmp_path):
    data = _kaldi(tmp_path, ["rec a.wav"], ["u1 HI"], ["u1 s"])
    _txt(data / "segments", "u1 rec 0.0 1.0\n")
    with pytest.raises(CorpusError, match="segments"):
        read_corpus(tmp_path)


# ------------------------------------------------------------------------------------------------- folder


def test_folder_speaker_dirs(tmp_path):
    root = tmp_path / "mine"
    for spk in ("alice", "bob"):
        _wav(root / spk / "001.wav"), _txt(root / spk / "001.txt", f"{spk} one")
    _wav(root / "bob" / "bob_002.flac"), _txt(root / "bob" / "bob_002.txt", "bob two")
    _wav(root / "bob" / "003.wav"), _wav(root / "bob" / "003.flac"), _txt(root / "bob" / "003.txt", "three")
    _wav(root / "bob" / "004.wav")  # no transcript
    _txt(root / "bob" / "005.txt", "no audio")
    _txt(root / "README.txt", "not a transcript: the root has no audio")
    assert detect_layout(root) == "folder"
    scan = read_corpus(root)
    # Same file names under two speakers must not collide; names already starting with the speaker stay.
    assert [(u.id, u.speaker, u.text) for u in scan.utterances] == [
        ("alice_001", "alice", "alice one"), ("bob_001", "bob", "bob one"), ("bob_002", "bob", "bob two"),
        ("bob_003", "bob", "three")]
    assert scan.utterances[3].audio_path.endswith("003.wav")  # .wav preferred over .flac
    reasons = _reasons(scan)
    assert set(reasons) == {"bob_003", "bob_004", "bob_005"}
    assert reasons["bob_003"] == "another audio file for the same utterance is preferred: 003.wav"
    assert reasons["bob_004"] == "audio without transcript: no 004.txt"
    assert reasons["bob_005"].startswith("transcript without audio")


def test_folder_loose_files_are_one_speaker_named_after_the_corpus(tmp_path):
    root = tmp_path / "narrator"
    _wav(root / "a.wav"), _txt(root / "a.txt", "Hi.")
    scan = read_corpus(root, name="nina")
    assert [(u.id, u.speaker, u.corpus) for u in scan.utterances] == [("nina_a", "nina", "nina")]


def test_folder_ljspeech_metadata_uses_normalized_text(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    _wav(root / "wavs" / "LJ001-0001.wav"), _wav(root / "wavs" / "LJ001-0002.wav")
    _wav(root / "wavs" / "LJ001-0003.wav")
    _txt(root / "metadata.csv", "LJ001-0001|Dr. Smith, 1st|Doctor Smith, first\n"
                                "LJ001-0002|two columns only\n"
                                "LJ001-0003|raw|\n"  # empty normalized column: the raw text is used
                                "LJ001-0004|no audio|no audio\n"
                                "LJ001-0001|again|again\n"
                                "a|b|c|d\n")
    assert detect_layout(root) == "folder"
    scan = read_corpus(root)
    assert [(u.id, u.speaker, u.text) for u in scan.utterances] == [
        ("LJ001-0001", "LJSpeech-1.1", "Doctor Smith, first"), ("LJ001-0002", "LJSpeech-1.1", "two columns only"),
        ("LJ001-0003", "LJSpeech-1.1", "raw")]
    reasons = [(s.id, s.reason) for s in scan.skipped]
    assert ("LJ001-0004", "transcript without audio: no wavs/LJ001-0004.wav|.flac") in reasons
    assert any(i == "LJ001-0001" and r.startswith("duplicate utterance id") for i, r in reasons)
    assert any(i == "a" and "4 fields" in r for i, r in reasons)
    assert len(reasons) == 3


def test_folder_metadata_with_speaker_column(tmp_path):
    # Three columns with per-speaker folders in wavs/: id|speaker|text.
    root = tmp_path / "multi"
    _wav(root / "wavs" / "ann" / "x1.wav"), _wav(root / "wavs" / "ben" / "x2.flac")
    _txt(root / "metadata.csv", "x1|ann|First.\nx2|ben|Second.\n")
    scan = read_corpus(root)
    assert [(u.id, u.speaker, u.text) for u in scan.utterances] == [("x1", "ann", "First."), ("x2", "ben", "Second.")]
    # A header names the columns, so a flat wavs/ can hold several speakers too.
    flat = tmp_path / "flat"
    _wav(flat / "wavs" / "x1.wav"), _wav(flat / "wavs" / "x2.wav")
    _txt(flat / "metadata.csv", "text|id|speaker\nFirst.|x1|ann\nSecond.|x2|ben\n")
    scan = read_corpus(flat)
    assert [(u.id, u.speaker, u.text) for u in scan.utterances] == [("x1", "ann", "First."), ("x2", "ben", "Second.")]


def test_transcripts_are_utf8_stripped_and_bad_bytes_skipped(tmp_path):
    root = tmp_path / "f"
    _wav(root / "spk" / "a.wav"), (root / "spk" / "a.txt").write_bytes("\ufeff  Café\tnaïve \n".encode("utf-8"))
    _wav(root / "spk" / "b.wav"), (root / "spk" / "b.txt").write_bytes(b"\xff\xfe bad")
    scan = read_corpus(root)
    assert [u.text for u in scan.utterances] == ["Café naïve"]
    assert _reasons(scan) == {"spk_b": "transcript is not valid UTF-8"}


# ------------------------------------------------------------------------------------------- errors, misc


def test_nonexistent_path_raises(tmp_path):
    with pytest.raises(CorpusError, match="does not exist") as err:
        read_corpus(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_layout_names_the_path_and_the_layouts_tried(tmp_path):
    _txt(tmp_path / "notes.txt", "nothing here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError) as err:
        read_corpus(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and all(layout in message for layout in ("kaldi", "vctk", "libritts", "folder"))
    with pytest.raises(CorpusError, match="unknown corpus layout 'timit'"):
        read_corpus(tmp_path, layout="timit")
    with pytest.raises(CorpusError, match="not a VCTK corpus"):
        read_corpus(tmp_path, layout="vctk")


def test_hidden_files_are_ignored(tmp_path):
    root = tmp_path / "c"
    _wav(root / "spk" / "a.wav"), _txt(root / "spk" / "a.txt", "Hi.")
    (root / "spk" / "._a.wav").write_bytes(b"\x00\x05")  # macOS resource fork copied along with the audio
    (root / ".cache").mkdir()
    scan = read_corpus(root)
    assert len(scan.utterances) == 1 and scan.skipped == []


def test_scan_helpers(vctk_mini):
    scan = read_corpus(vctk_mini, name="v")
    assert {u.corpus for u in scan.utterances} == {"v"}
    groups = scan.by_speaker()
    assert list(groups) == ["p225", "p226", "p227", "p228"] and all(len(g) == 10 for g in groups.values())
    assert "40 utterances from 4 speakers, 28 skipped" in scan.summary()
