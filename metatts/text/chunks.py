"""Text → pieces of bounded length for synthesis.

The acoustic model's attention costs grow with the square of a sequence's length, and it was trained on single
utterances: 5,000 characters without a full stop, synthesized as one sequence, took 3.9 GB and minutes. Text is
therefore split at sentence ends first, and a sentence longer than ``max_chars`` at clause punctuation (, : — –),
then between words; a single "word" longer than that (a URL, a run of letters) is cut. Every piece is at most
``max_chars`` long, so the work per piece is bounded whatever the input.
"""

from __future__ import annotations

import re

MAX_CHUNK_CHARS = 200  # about 12 s of speech: longer than almost every training utterance's sentence
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_CLAUSE_END = re.compile(r"(?<=[,:\u2014\u2013])\s+|\s+(?=[\u2014\u2013]\s)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a (normalized) text, split after ``. ! ? ;`` followed by space."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    """Join consecutive pieces with spaces while the result stays within ``max_chars``."""
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + 1 + len(piece) <= max_chars:
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _words(text: str, max_chars: int) -> list[str]:
    words: list[str] = []
    for word in text.split():
        words.extend(word[i:i + max_chars] for i in range(0, len(word), max_chars))
    return _pack(words, max_chars)


def chunk_text(text: str, max_chars: int = MAX_CHUNK_CHARS) -> list[str]:
    """``text`` as pieces of at most ``max_chars`` characters, split at the most natural boundary available:
    sentence end, then clause punctuation, then between words, then (for a longer word) anywhere. Pieces keep
    their punctuation; whitespace between words becomes one space; nothing but whitespace is dropped."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    chunks: list[str] = []
    for sentence in split_sentences(text):
        sentence = " ".join(sentence.split())
        if len(sentence) <= max_chars:
            chunks.append(sentence)
            continue
        clauses = [c.strip() for c in _CLAUSE_END.split(sentence) if c.strip()]
        pieces = [part for clause in clauses for part in
                  ([clause] if len(clause) <= max_chars else _words(clause, max_chars))]
        chunks.extend(_pack(pieces, max_chars))
    return chunks
