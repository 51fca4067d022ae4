"""What every training command shares: the prepared data of a run, model construction, schedule, logging."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metatts.config import Config
from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.collate import Collator, Normalizer
from metatts.features.store import FeatureStore, ManifestEntry, StoreError
from metatts.model.acoustic import AcousticModel
from metatts.runtime.checkpoint import CheckpointMeta
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
        return cls(store, splits, symbols, normalizer, speakers, train, val,
                   Collator(store, symbols, rows, normalizer))


def build_model(config: Config, n_symbols: int, n_speakers: int | None = None) -> AcousticModel:
    """The acoustic model of a config, with one speaker-table row per training speaker (``n_speakers``; the
    config's ``max_speakers`` when not given). Pitch/energy targets are z-scored, so their bins span ±4 sd."""
    model_config = config.model
    if n_speakers is not None:
        if n_speakers > model_config.max_speakers:
            raise ValueError(f"{n_speakers} training speakers but model.max_speakers = {model_config.max_speakers}")
        model_config = dataclasses.replace(model_config, max_speakers=max(n_speakers, 1))
    return AcousticModel(model_config, n_symbols=n_symbols, n_mels=config.audio.n_mels,
                         new_speaker_prob=model_config.new_speaker_prob,
                         condition_variance_adaptor=model_config.condition_variance_adaptor)


def load_for_store(checkpoint: str | Path,
                   store: FeatureStore) -> tuple[CheckpointMeta, Config, AcousticModel, Collator]:
    """A checkpoint's model (weights loaded, on the CPU) and a collator reading ``store`` through the checkpoint's
    symbol table and statistics, not the store's: the model was trained with those."""
    from metatts.config import config_from_dict
    from metatts.runtime.checkpoint import load_weights, read_meta

    meta = read_meta(checkpoint)
    config = config_from_dict(meta.config)
    symbols = SymbolTable.from_json(meta.symbols)
    model = build_model(config, len(symbols), len(meta.speakers))
    load_weights(checkpoint, model)
    return meta, config, model, Collator(store, symbols, {}, Normalizer.from_dict(meta.stats))


def restore_training_state(checkpoint: str | Path, optimizer, schedule, scaler) -> dict:
    """Load a checkpoint's ``state.pt`` into the optimizer, schedule, AMP scaler and RNGs; returns the state (its
    step and counters) for the caller's own fields."""
    from metatts.runtime.checkpoint import load_state
    from metatts.runtime.env import restore_rng_state

    state = load_state(checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if state["scaler"] or not scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    # else: the run so far had no fp16 scaler (fp32 / bf16, or the CPU) and now has one: it starts fresh.
    restore_rng_state(state["rng"])
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
