"""Shared by tests that train: a tiny model's config overrides and a corpus of real synthesized speech."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch

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


def tiny_store(root: Path, voices: tuple[str, ...], texts: list[str]) -> Path:
    """``root/store``: the feature store of a ``synthesize_corpus`` corpus in ``root/corpus``, every speaker a
    training speaker (no val/test split), at least 2 utterances each."""
    from metatts.config import config_from_dict
    from metatts.features.prepare import prepare

    synthesize_corpus(root / "corpus", voices, texts)
    config = config_from_dict({}, [f"data.corpus={root / 'corpus'}", f"data.features={root / 'store'}",
                                   "data.layout=folder", "data.workers=1", "data.val_speakers=0",
                                   "data.test_speakers=0", "data.min_utterances_per_speaker=2", "meta.shots=1",
                                   "meta.queries=1"])
    prepare(config, progress=False, log=lambda *_: None)
    return root / "store"


STATS = {"log_f0_mean": 5.0, "log_f0_std": 0.3, "energy_mean": 20.0, "energy_std": 10.0}


def tiny_checkpoint(path: Path, seed: int = 1, speakers: tuple[str, ...] = ("a", "b"), symbols=None) -> Path:
    """An untrained tiny model saved as a checkpoint (no corpus needed), its slot norms made non-zero so that the
    slot changes the output: for tests of what loads a checkpoint, not of what it learned."""
    from metatts.config import config_from_dict, config_to_dict
    from metatts.runtime.checkpoint import CheckpointMeta, save_checkpoint
    from metatts.text.symbols import SymbolTable
    from metatts.train.common import build_model

    config = config_from_dict({}, TINY_MODEL)
    symbols = symbols or SymbolTable()
    torch.manual_seed(seed)
    model = build_model(config, len(symbols), len(speakers))
    with torch.no_grad():  # a fresh model has zero norm offsets; make the slot matter for the output
        model.speaker.slot_norms.normal_(0, 0.1)
    meta = CheckpointMeta(config=config_to_dict(config), symbols=symbols.to_json(), stats=dict(STATS),
                          speakers=list(speakers))
    return save_checkpoint(path, model, meta)
