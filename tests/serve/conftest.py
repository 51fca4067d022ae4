"""Shared by the `metatts serve` tests: a tiny checkpoint trained on espeak voices, five clips of a voice it never
heard (with their transcripts), and a real `metatts evaluate` run on the same store for the listening page."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from metatts.config import config_from_dict
from metatts.features.prepare import prepare
from metatts.train.supervised import train
from tiny import TEXTS, TINY_MODEL, synthesize_corpus

VOICES = ("m1", "f2", "m3", "f4", "m7", "f3")  # 3 train, 1 val, 2 test speakers (as in test_evaluate)
DATA = ["data.min_utterances_per_speaker=4", "data.val_speakers=1", "data.test_speakers=2", "meta.shots=2",
        "meta.queries=2"]
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory) -> dict:
    """A store of 6 espeak voices x 5 sentences and a tiny model trained 30 steps on its 3 training speakers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("serve")
        synthesize_corpus(root / "corpus", VOICES, TEXTS)
        prepare(config_from_dict({}, [f"data.corpus={root / 'corpus'}", f"data.features={root / 'store'}",
                                      "data.layout=folder", "data.workers=1", *DATA]), **QUIET)
        train(config_from_dict({}, [f"data.features={root / 'store'}", *DATA, *TINY_MODEL, "train.threads=1",
                                    "train.batch_size=6", "train.lr=3e-3", "train.warmup_steps=5",
                                    "train.val_every=1000", "train.log_every=10", "train.steps=30"]),
              root / "train", **QUIET)
    finally:
        torch.set_num_threads(threads)
    splits = yaml.safe_load((root / "store" / "splits.json").read_text())
    return {"root": root, "checkpoint": root / "train" / "checkpoint", "store": root / "store",
            "corpus": root / "corpus", "test_speakers": list(splits["test"])}


@pytest.fixture(scope="session")
def new_voice_clips(serve_runs) -> tuple[list[Path], list[str]]:
    """Five clips (wav) of a held-out test speaker with their transcripts."""
    speaker = serve_runs["test_speakers"][0]
    wavs = sorted((serve_runs["corpus"] / speaker).glob("*.wav"))[:5]
    return wavs, [w.with_suffix(".txt").read_text().strip() for w in wavs]
