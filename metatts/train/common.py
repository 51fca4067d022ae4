"""What every training command shares: the prepared data of a run, model construction, schedule, logging."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metatts.checkpoints import build_model  # noqa: F401  (the training commands' model)
from metatts.config import Config
from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.collate import Collator, Normalizer
from metatts.features.store import FeatureStore, ManifestEntry, StoreError
from metatts.model.acoustic import REFERENCE_PREFIX, AcousticModel
from metatts.runtime.checkpoint import CheckpointError, CheckpointMeta, load_weights
from metatts.text.symbols import SymbolTable


@dataclass
class RunData:
    """A prepared feature store seen through one config: splits, speaker rows, train/validation utterances."""

    store: FeatureStore
    splits: SpeakerSplits
    symbols: SymbolTable
    normalizer: Normalizer
    speakers: list[str]  # meta-train speakers; their index is their row in the speaker table
    train: list[ManifestEntry]
    val: list[ManifestEntry]
    collator: Collator

    @classmethod
    def load(cls, config: Config) -> "RunData":
        root = Path(config.data.features)
        store = FeatureStore(root)
        splits_path = root / "splits.json"
        if not splits_path.is_file():
            raise StoreError(f"{root} has no splits.json: re-run `metatts prepare`")
        splits = SpeakerSplits.load(splits_path)
        symbols = SymbolTable.from_json(store.symbols_json)
        normalizer = Normalizer.from_dict(json.loads((root / "stats.json").read_text())["global"])
        speakers = sorted(s for s in splits.train if s in store.speakers())
        if not speakers:
            raise StoreError(f"{root}: no meta-train speaker has prepared utterances")
        if len(speakers) > config.model.max_speakers:
            raise StoreError(f"{len(speakers)} meta-train speakers but model.max_speakers = "
                             f"{config.model.max_speakers}: raise it")
        by_speaker = store.speakers()
        train, val = [], []
        for speaker in speakers:
            entries = sorted(by_speaker[speaker], key=lambda e: e.id)
            # Held-out utterances per speaker: a seeded choice, so the validation set is fixed for a config.
            held = set(random.Random(f"{config.data.split_seed}:val:{speaker}").sample(
                [e.id for e in entries], min(config.data.val_utterances, len(entries) - 1)))
            for entry in entries:
                (val if entry.id in held else train).append(entry)
        rows = {s: i for i, s in enumerate(speakers)}
        return cls(store=store, splits=splits, symbols=symbols, normalizer=normalizer, speakers=speakers, train=train,
                   val=val, collator=Collator(store, symbols, rows, normalizer))


def restore_training_state(checkpoint: str | Path, optimizer, schedule, scaler) -> dict:
    """Load a checkpoint's ``state.pt`` into the optimizer, schedule, AMP scaler and RNGs; returns the state (its
    step and counters) for the caller's own fields."""
    from metatts.runtime.checkpoint import load_state
    from metatts.runtime.env import restore_rng_state

    from metatts.runtime.checkpoint import CheckpointError

    state = load_state(checkpoint)
    try:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state["scaler"] or not scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        # else: the run so far had no fp16 scaler (fp32 / bf16, or the CPU) and now has one: it starts fresh.
        restore_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{Path(checkpoint) / 'state.pt'} does not fit this run (another config or model?): "
                              f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    return state


def checkpoint_meta(config: Config, data: RunData, step: int, kind: str) -> CheckpointMeta:
    from metatts.config import config_to_dict

    return CheckpointMeta(config=config_to_dict(config), symbols=data.symbols.to_json(),
                          stats=data.normalizer.to_dict(), speakers=list(data.speakers), step=step, kind=kind)


def warmup_inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then decay as 1/sqrt(step/warmup) (the Transformer schedule
    FastSpeech 2 uses; it keeps adapting late in training instead of freezing like a fixed decay to zero)."""
    step = step + 1
    if warmup <= 0:
        return 1.0
    return min(step / warmup, math.sqrt(warmup / step))


def mel_image(mel: torch.Tensor) -> np.ndarray:
    """[n_mels, T] log-mel → [3, H, W] uint8 image for TensorBoard (low frequencies at the bottom)."""
    from matplotlib import colormaps

    values = mel.detach().float().cpu().numpy()[::-1]
    lo, hi = np.percentile(values, 1), np.percentile(values, 99.5)
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = colormaps["magma"](scaled)[..., :3]
    return (rgb.transpose(2, 0, 1) * 255).astype(np.uint8)


def compute_record(updates: int, seconds: float, resumed_from: dict | None = None,
                   init_from: str | Path | None = None) -> dict:
    """What a checkpoint records of the training compute behind it (``CheckpointMeta.extra["compute"]``): its
    updates, the wall seconds of the run(s) that made them (a resumed run adds the seconds its checkpoint recorded),
    and the compute record of the checkpoint it was initialized from, so a meta run started from a ``metatts train``
    checkpoint carries the cost of both (``metatts evaluate`` sums them)."""
    record = {"updates": int(updates), "seconds": float(seconds), "init_from": None}
    if resumed_from is not None:
        previous = resumed_from.get("compute")
        if previous is None:
            # Resumed from a checkpoint saved before compute was recorded: the seconds before it are unknown.
            record["seconds_before_resume_unknown"] = True
        else:
            record["seconds"] += float(previous.get("seconds") or 0.0)
            record["init_from"] = previous.get("init_from")
            if previous.get("seconds_before_resume_unknown"):
                record["seconds_before_resume_unknown"] = True
    if init_from is not None:
        from metatts.runtime.checkpoint import read_meta

        source = read_meta(init_from)
        record["init_from"] = {"checkpoint": str(init_from), "kind": source.kind, "step": source.step,
                               "compute": source.extra.get("compute")}
    return record


SPEAKER_TABLES = ("speaker.table_embedding", "speaker.table_norms")  # one row per training speaker of a corpus


def warm_start(checkpoint: str | Path, model: AcousticModel) -> list[str]:
    """Load ``checkpoint``'s weights into ``model`` to start training from them; returns the tensors kept fresh.

    A checkpoint trained on another corpus (pre-training on the generated demo corpus, then real speech) has a
    speaker table of other people: its rows mean nothing here, so the table keeps its fresh initialization when
    its size differs. The amortized start's reference encoder belongs to meta-training (``metatts train`` never
    updates it): a checkpoint's encoder that this model lacks is left out, and this model's encoder that the
    checkpoint lacks keeps its fresh initialization -- so a recipe may pre-train with a config that meta-trains
    with ``meta.amortized_start`` (configs/demo.yaml) and train on with one that does not. Every other tensor --
    the new-speaker slot included -- must fit exactly."""
    from safetensors.torch import load_file

    path = Path(checkpoint) / "model.safetensors"
    tensors = load_file(str(path)) if path.is_file() else {}
    own = model.state_dict()
    fresh = [n for n in SPEAKER_TABLES if n in tensors and n in own and tensors[n].shape != own[n].shape]
    foreign_reference = [n for n in tensors if n.startswith(REFERENCE_PREFIX) and n not in own]
    if not fresh and not foreign_reference:
        load_weights(checkpoint, model, fresh=(REFERENCE_PREFIX,))
        return []
    rest = {n: t for n, t in tensors.items() if n not in fresh and n not in foreign_reference}
    own_reference = {n for n in own if n.startswith(REFERENCE_PREFIX) and n not in rest}
    missing = sorted(set(own) - set(rest) - set(fresh) - own_reference)
    unexpected = sorted(set(rest) - set(own))
    shapes = sorted(n for n, t in rest.items() if n in own and t.shape != own[n].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(f"{checkpoint} does not fit this model (another config?): missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, shape mismatch {shapes[:3]}")
    model.load_state_dict(rest, strict=False)
    return fresh
