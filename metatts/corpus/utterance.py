"""The record every corpus reader yields, and the record of what a reader or stage skipped."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Utterance:
    """One recording and its transcript. ``speaker`` is unique within ``corpus``; ``id`` is unique within it too."""

    id: str
    speaker: str
    text: str
    audio_path: str
    corpus: str


@dataclass(frozen=True)
class Skipped:
    """Something left out, and why: ``stage`` is where (read, audio, text, ...), ``reason`` a short sentence."""

    id: str
    path: str
    stage: str
    reason: str
