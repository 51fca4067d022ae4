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


# ---------------------------------------------------------------- the evaluation's tiny runs (conftest's tiny_runs)
QUIET = dict(progress=False, log=lambda *_: None)
EVAL_VOICES = ("m1", "f2", "m3", "f4", "m7", "f3")  # 3 train, 1 val, 2 test speakers
EVAL_DATA = ["data.min_utterances_per_speaker=4", "data.val_speakers=1", "data.test_speakers=2", "meta.shots=2",
             "meta.queries=2"]
EVAL_STEPS = (0, 1, 4)


def evaluation_runs(root: Path) -> dict[str, Path]:
    """A store of 6 espeak voices x 5 sentences, a tiny baseline trained 40 steps, a meta checkpoint meta-trained
    3 steps from it, and a 2-speaker task suite over the store's test split."""
    import yaml

    from metatts.config import config_from_dict
    from metatts.features.prepare import prepare
    from metatts.meta.outer_loop import meta_train
    from metatts.train.supervised import train

    synthesize_corpus(root / "corpus", EVAL_VOICES, TEXTS)
    prepare(config_from_dict({}, [f"data.corpus={root / 'corpus'}", f"data.features={root / 'store'}",
                                  "data.layout=folder", "data.workers=1", *EVAL_DATA]), **QUIET)
    common = [f"data.features={root / 'store'}", *EVAL_DATA, *TINY_MODEL, "train.threads=1", "train.batch_size=6",
              "train.lr=3e-3", "train.warmup_steps=5", "train.val_every=1000", "train.log_every=10"]
    train(config_from_dict({}, [*common, "train.steps=40"]), root / "train", **QUIET)
    meta_train(config_from_dict({}, [*common, "meta.steps=3", "meta.meta_batch=2", "meta.inner_steps=2",
                                     "meta.val_tasks=0", "train.checkpoint_every=3"]),
               root / "meta", init_from=root / "train" / "checkpoint", **QUIET)
    suite = root / "tiny.yaml"
    suite.write_text(yaml.safe_dump({"corpus": "corpus", "features": str(root / "store"), "split": "test",
                                     "shots": 2, "queries": 2, "tasks_per_speaker": 1, "seed": 0,
                                     "step_grid": list(EVAL_STEPS)}))
    return {"root": root, "base": root / "train" / "checkpoint", "meta": root / "meta" / "checkpoint",
            "suite": suite, "store": root / "store"}
