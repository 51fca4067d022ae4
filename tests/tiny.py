"""Shared by tests that train: a tiny model's config overrides and a corpus of real synthesized speech."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from metatts.corpus.demo import espeak_synthesize
from metatts.demo import SMOKE_MODEL

# A model small enough to train a few steps in about a second on one CPU thread: the demo's smoke model.
TINY_MODEL = list(SMOKE_MODEL)

TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps.", "We like green apples.", "Rain falls on the hill.",
         "Ships sail at dawn."]


def synthesize_corpus(root: Path, voices: tuple[str, ...], texts: list[str]) -> Path:
    """A folder-layout corpus (<voice>/<voice>_<i>.wav + .txt) of espeak-ng speech, one speaker per variant."""
    for voice in voices:
        folder = root / voice
        folder.mkdir(parents=True)
        for i, text in enumerate(texts):
            wave, rate = espeak_synthesize(text, f"en-us+{voice}")
            sf.write(folder / f"{voice}_{i}.wav", wave, rate)
            (folder / f"{voice}_{i}.txt").write_text(text)
    return root
