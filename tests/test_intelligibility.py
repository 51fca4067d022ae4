"""Intelligibility scoring: edit distances, text normalization, and PocketSphinx on real and destroyed speech."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from metatts.evaluation.intelligibility import (
    Recognizer,
    UtteranceErrors,
    corpus_error_rates,
    edit_distance,
    scoring_text,
    scoring_words,
    utterance_errors,
)
from metatts.evaluation.optional import ScorerUnavailable
from metatts.features.audio import AudioError


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    try:
        return Recognizer()
    except ScorerUnavailable as error:
        pytest.skip(str(error))


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("sitting", "kitten") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3 and edit_distance("", "") == 0
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("the cat sat".split(), "the cat sat down".split()) == 1
    assert edit_distance("a b c d".split(), "a x c".split()) == 2  # one substitution, one deletion


def test_scoring_words_spell_numbers_like_the_front_end_and_drop_punctuation():
    assert scoring_words("He paid $5.20 in 1999, the 3rd time!") == \
        "he paid five dollars and twenty cents in nineteen ninety nine the third time".split()
    assert scoring_words("IT WAS GOOD FOR ME") == ["it", "was", "good", "for", "me"]
    assert scoring_words("Don't - stop; it's 'O'Brien's' well-known café.") == \
        ["don't", "stop", "it's", "o'brien's", "well", "known", "cafe"]
    assert scoring_text("  Please   call Stella. ") == "please call stella"
    assert scoring_words("...") == []


def test_utterance_and_corpus_rates_pool_edits_not_rates():
    short = utterance_errors("Hello.", "jello")  # 1 word of 1 wrong: WER 1
    long = utterance_errors("one two three four five six seven eight nine ten",
                            "one two three four five six seven eight nine ten")
    assert (short.word_edits, short.words, short.char_edits, short.chars) == (1, 1, 1, 5)
    assert short.wer == 1.0 and short.cer == 0.2 and long.wer == 0.0
    pooled = corpus_error_rates([short, long])
    assert pooled.wer == pytest.approx(1 / 11)  # not (1.0 + 0.0) / 2
    assert pooled.cer == pytest.approx(1 / (5 + len(long.reference)))
    assert (pooled.words, pooled.utterances) == (11, 2)
    with pytest.raises(ValueError, match="no word to score"):
        utterance_errors("?!", "anything")
    with pytest.raises(ValueError, match="no utterance"):
        corpus_error_rates([])
    assert isinstance(short, UtteranceErrors)


def test_missing_pocketsphinx_is_one_skip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)  # import now raises ImportError
    with pytest.raises(ScorerUnavailable, match=r"intelligibility \(CER/WER\) skipped: install metatts\[eval\]"):
        Recognizer()


def test_bad_waves_are_clear_errors_and_silence_is_no_words(recognizer):
    for wave, reason in ((np.zeros(0), "no samples"), (np.zeros((2, 100)), "mono"),
                         (np.array([0.0, np.nan] * 800), "not finite")):
        with pytest.raises(AudioError, match=reason):
            recognizer.transcribe(wave, 16000)
    # Digital silence is not decoded (PocketSphinx hears "dog" in 1 s of zeros): nothing to hear, no words.
    assert recognizer.transcribe(np.zeros(16000, dtype=np.float32), 16000) == ""
    with pytest.raises(ValueError, match="2 waves but 1 references"):
        recognizer.score([np.zeros(100)] * 2, 16000, ["a"])


@pytest.mark.slow
def test_real_speech_is_recognized_and_destroyed_speech_is_not(recognizer, vctk_mini):
    from metatts.corpus.readers import read_corpus
    from metatts.features.audio import load_audio

    scan = read_corpus(vctk_mini)
    # Two sentences per speaker, the shortest ones (the recognizer costs ~0.4 s per second of audio).
    utts = []
    for speaker in sorted(scan.speakers()):
        own = sorted((u for u in scan.utterances if u.speaker == speaker), key=lambda u: len(u.text))
        utts += own[:2]
    texts = [u.text for u in utts]
    waves = [load_audio(u.audio_path, 22050) for u in utts]
    real = corpus_error_rates(recognizer.score(waves, 22050, texts))
    rng = np.random.default_rng(0)
    few = slice(0, None, 3)  # destroyed speech is far off on any clip: a third of them is enough (and 40 s less)
    noise = [rng.normal(0.0, np.std(w), len(w)).astype(np.float32) for w in waves[few]]
    shuffled = [rng.permutation(w) for w in waves[few]]  # the same samples, the same spectrum overall, no speech
    noise_rates = corpus_error_rates(recognizer.score(noise, 22050, texts[few]))
    shuffled_rates = corpus_error_rates(recognizer.score(shuffled, 22050, texts[few]))
    assert real.wer < 0.65 and real.cer < 0.45  # measured 0.41 / 0.25 on all 40 vctk-mini utterances
    for destroyed in (noise_rates, shuffled_rates):
        assert destroyed.wer > 0.9 and destroyed.cer > real.cer + 0.3
    # Stateless: a clip decodes the same after noise and other clips as it did first (lower-case words).
    first = recognizer.transcribe(waves[0], 22050)
    recognizer.transcribe(noise[1], 22050)
    assert recognizer.transcribe(waves[0], 22050) == first == scoring_text(first)
    # ... and whatever came before: one decoder reused across utterances read these differently by order.
    backward = [recognizer.transcribe(w, 22050) for w in reversed(waves[:4])][::-1]
    assert backward == [recognizer.transcribe(w, 22050) for w in waves[:4]]
