"""The espeak-ng phonemizer front end: batching, robustness, stress, punctuation, symbol splitting."""

from __future__ import annotations

import pickle

import pytest

from metatts.config.schema import TextConfig
from metatts.corpus.sentences import WRITTEN
from metatts.text import phonemes as phonemes_module
from metatts.text.phonemes import Phonemizer, split_phones
from metatts.text.symbols import PAUSES, STRESS_MARKS, WORD_BOUNDARY, SymbolTable


@pytest.fixture(scope="module")
def phonemizer() -> Phonemizer:
    return Phonemizer(TextConfig())


def _phones(symbols: list[str]) -> list[str]:
    return [s for s in symbols if s not in PAUSES and s != WORD_BOUNDARY and s not in STRESS_MARKS]


def test_normal_text_gives_words_and_pauses(phonemizer):
    [out] = phonemizer.phonemize(["Hello, world."])
    assert out == ["h", "ə", "l", "ˈ", "oʊ", ",", WORD_BOUNDARY, "w", "ˈ", "ɜː", "l", "d", "."]


def test_unpronounceable_items_are_empty_and_do_not_shift_the_batch(phonemizer):
    texts = ["Good morning.", "", "...", "!!!", "\U0001F600\U0001F600", "   ", "Good night!"]
    batch = phonemizer.phonemize(texts)
    assert len(batch) == len(texts)
    assert batch[1:6] == [[], [], [], [], []]
    # Each sentence keeps its own phonemes: phonemizer's own punctuation handling drops empty lines and
    # pairs later sentences with the wrong phonemes, which this guards against.
    assert batch[0] == phonemizer.phonemize(["Good morning."])[0]
    assert batch[6] == phonemizer.phonemize(["Good night!"])[0]
    assert batch[0][-1] == "." and batch[6][-1] == "!"


def test_batches_split_by_config_give_the_same_result(phonemizer):
    texts = list(WRITTEN[:7]) + ["", "Why?"]
    small = Phonemizer(TextConfig(phonemize_batch=2)).phonemize(texts)
    assert small == phonemizer.phonemize(texts)


def test_all_caps_reads_like_lower_case(phonemizer):
    caps, lower = phonemizer.phonemize(["WE CALL IT BEAR", "we call it bear"])
    assert caps == lower
    # Without normalization espeak spells "IT" (ˌaɪ tˈiː): the lower-casing is what prevents it.
    raw = Phonemizer(TextConfig(), normalize=False).phonemize(["WE CALL IT BEAR"])[0]
    assert raw != lower and "aɪ" in raw


def test_numbers_are_read_as_normalized(phonemizer):
    digits, words = phonemizer.phonemize(["It costs $5.20.", "It costs five dollars and twenty cents."])
    assert digits == words


def test_stress_on_and_off():
    text = ["The museum opened yesterday afternoon."]
    with_stress = Phonemizer(TextConfig(keep_stress=True)).phonemize(text)[0]
    without = Phonemizer(TextConfig(keep_stress=False)).phonemize(text)[0]
    assert any(s in STRESS_MARKS for s in with_stress)
    assert not any(s in STRESS_MARKS for s in without)
    assert [s for s in with_stress if s not in STRESS_MARKS] == without


def test_punctuation_becomes_pause_symbols(phonemizer):
    why, semi, lead, dots = phonemizer.phonemize(["Why?!", "Wait; then go: now.", ", leading comma", "so... yes"])
    assert why[-1] == "?"  # a run keeps its strongest mark
    assert semi.count(",") == 2 and semi[-1] == "."  # ; and : are read as a comma
    assert lead[0] not in PAUSES  # no pause before the first word
    assert "." in dots and dots[-1] != "."
    for seq in (why, semi, lead, dots):
        assert all(a not in PAUSES or b not in PAUSES for a, b in zip(seq, seq[1:]))  # never two pauses in a row


def test_pause_strength_covers_exactly_the_pause_symbols():
    assert set(phonemes_module._PAUSE_STRENGTH) == set(PAUSES)


def test_split_phones_keeps_multi_character_phonemes_and_separates_stress():
    assert split_phones("tʃ_ˈɜː_tʃ") == ["tʃ", "ˈ", "ɜː", "tʃ"]
    assert split_phones("b_ˈʌ_ʔ_n̩") == ["b", "ˈ", "ʌ", "ʔ", "n̩"]
    assert split_phones("ˌaɪ_t_ˈiː") == ["ˌ", "aɪ", "t", "ˈ", "iː"]


def test_english_needs_no_symbol_beyond_the_base_inventory(phonemizer):
    symbols = [s for seq in phonemizer.phonemize(list(WRITTEN)) for s in seq]
    assert SymbolTable().missing(symbols) == []
    assert all(seq for seq in phonemizer.phonemize(list(WRITTEN)))


def test_rejects_a_single_string(phonemizer):
    with pytest.raises(TypeError):
        phonemizer.phonemize("hello")


def test_pickles_for_worker_processes(phonemizer):
    clone = pickle.loads(pickle.dumps(phonemizer))
    assert clone.phonemize(["A quiet boy."]) == phonemizer.phonemize(["A quiet boy."])


def test_other_language_from_config():
    british = Phonemizer(TextConfig(language="en-gb")).phonemize(["The car is far."])[0]
    american = Phonemizer(TextConfig(language="en-us")).phonemize(["The car is far."])[0]
    assert british != american and "ɹ" not in _phones(british)[-3:]  # non-rhotic "far"
