"""Bounded synthesis pieces: sentence ends first, then clauses, then words, then (a very long word) anywhere."""

from __future__ import annotations

import pytest

from metatts.text.chunks import MAX_CHUNK_CHARS, chunk_text, split_sentences


def test_sentences_are_split_at_their_ends():
    assert split_sentences("One. Two! Three? Four; five") == ["One.", "Two!", "Three?", "Four;", "five"]
    assert chunk_text("Hello there. How are you?") == ["Hello there.", "How are you?"]


def test_a_long_sentence_is_cut_at_clauses_before_words():
    clause = "the quick brown fox jumps over the lazy dog"
    text = ", ".join([clause] * 8) + "."
    chunks = chunk_text(text, max_chars=100)
    assert all(len(c) <= 100 for c in chunks) and len(chunks) > 1
    assert all(c.endswith((",", ".")) for c in chunks)  # every cut is at a comma
    assert " ".join(chunks).split() == text.split()  # nothing lost, nothing reordered


def test_text_without_punctuation_is_cut_between_words_and_bounded():
    words = [f"word{i}" for i in range(1500)]  # ~ 10,000 characters, no sentence or clause mark
    chunks = chunk_text(" ".join(words))
    assert max(len(c) for c in chunks) <= MAX_CHUNK_CHARS
    assert " ".join(chunks).split() == words
    assert len(chunks) <= 2 * len(" ".join(words)) // MAX_CHUNK_CHARS + 1  # packed, not one word per piece


def test_a_word_longer_than_the_bound_is_cut():
    chunks = chunk_text("x" * 450 + " end", max_chars=200)
    assert [len(c) for c in chunks] == [200, 200, 54] and chunks[-1].endswith(" end")
    with pytest.raises(ValueError, match="max_chars"):
        chunk_text("a", max_chars=0)
    assert chunk_text("   ") == []
