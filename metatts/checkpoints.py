"""Checkpoints as models: build the acoustic model a checkpoint describes, load its weights, read a feature store
through it, and read or write its learned inner learning rates.

This is the one door through which inference (``api``, ``adapt``, ``evaluation``) and training (``train``,
``meta``) reach a checkpoint's model, so inference never imports training code. It sits above ``episodes`` (a
store is read through ``episodes.collate``) and below ``meta``/``train`` in the layers; ``runtime.checkpoint``
underneath it owns the folder format (safetensors weights, JSON metadata, ``state.pt``), and ``InnerLR`` owns the
format of the rates file.

    loaded = load_model("runs/demo/meta/checkpoint")          # LoadedModel: meta, config, symbols, model, digest
    ev = load_for_store("runs/demo/meta/checkpoint", store)   # StoreModel: the same + a collator for ``store``
    rates = load_inner_lr("runs/demo/meta/checkpoint")        # learned α per tensor, else the config's meta.inner_lr
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from metatts.config import Config, config_from_dict
from metatts.episodes.collate import Collator, Normalizer
from metatts.features.store import FeatureStore
from metatts.meta.inner_lr import InnerLR
from metatts.model.acoustic import AcousticModel
from metatts.runtime.checkpoint import (CheckpointError, CheckpointMeta, confined_file, load_weights,
                                        read_checkpoint_tensors, read_meta, save_checkpoint, weights_digest)
from metatts.text.symbols import SymbolTable

INNER_LR_FILE = "inner_lr.safetensors"


def build_model(config: Config, n_symbols: int, n_speakers: int | None = None) -> AcousticModel:
    """The acoustic model of a config, with one speaker-table row per training speaker (``n_speakers``; the
    config's ``max_speakers`` when not given), and a reference encoder when ``meta.amortized_start``. Pitch/energy
    targets are z-scored, so their bins span ±4 sd."""
    model_config = config.model
    if n_speakers is not None:
        if n_speakers > model_config.max_speakers:
            raise ValueError(f"{n_speakers} training speakers but model.max_speakers = {model_config.max_speakers}")
        model_config = dataclasses.replace(model_config, max_speakers=max(n_speakers, 1))
    return AcousticModel(model_config, n_symbols=n_symbols, n_mels=config.audio.n_mels,
                         new_speaker_prob=model_config.new_speaker_prob,
                         condition_variance_adaptor=model_config.condition_variance_adaptor,
                         reference_channels=config.meta.reference_channels if config.meta.amortized_start else 0)


# ------------------------------------------------------------------------------------------------ models
@dataclass
class LoadedModel:
    """A checkpoint's model with its weights, the metadata it came with and the hash of the weights loaded."""

    path: Path
    meta: CheckpointMeta
    config: Config
    symbols: SymbolTable
    model: AcousticModel
    digest: str  # weights_digest of the file the weights were read from (voice packs are checked against it)

    @property
    def postnet(self) -> bool:
        return getattr(self.model, "postnet", None) is not None

    def collator(self, store: FeatureStore) -> Collator:
        """Reads ``store`` through this checkpoint's symbol table and statistics, not the store's: the model was
        trained with those. Every utterance goes to the new-speaker slot (no speaker rows)."""
        return Collator(store, self.symbols, {}, Normalizer.from_dict(self.meta.stats))


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Build and load a checkpoint's model on ``device`` (eval mode)."""
    meta = read_meta(checkpoint)
    config = config_from_dict(meta.config)
    symbols = SymbolTable.from_json(meta.symbols)
    model = build_model(config, len(symbols), len(meta.speakers))
    # Hash the weights file around the load: a training run may replace the checkpoint meanwhile, and the hash
    # voice packs are checked against must be that of the weights actually loaded.
    for _ in range(3):
        digest = weights_digest(checkpoint)
        load_weights(checkpoint, model)
        if weights_digest(checkpoint) == digest:
            break
    return LoadedModel(Path(checkpoint), meta, config, symbols, model.to(device).eval(), digest)


@dataclass
class StoreModel:
    """A loaded checkpoint and a collator reading a feature store through it (``load_for_store``)."""

    loaded: LoadedModel
    collator: Collator

    @property
    def model(self) -> AcousticModel:
        return self.loaded.model

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def meta(self) -> CheckpointMeta:
        return self.loaded.meta

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def digest(self) -> str:
        return self.loaded.digest

    @property
    def postnet(self) -> bool:
        return self.loaded.postnet


def load_for_store(checkpoint: str | Path, store: FeatureStore, device: str | torch.device = "cpu") -> StoreModel:
    """A checkpoint's model (eval mode, on ``device``) and a collator for ``store`` (see ``LoadedModel.collator``)."""
    loaded = load_model(checkpoint, device)
    return StoreModel(loaded, loaded.collator(store))


# ------------------------------------------------------------------------------------------------ inner rates
def save_model_checkpoint(directory: str | Path, model: nn.Module, meta: CheckpointMeta, state: dict | None = None,
                          inner_lr: InnerLR | None = None) -> Path:
    """A checkpoint folder, plus ``inner_lr.safetensors`` when there are learned rates, swapped in atomically as one
    folder (a kill during the save leaves the previous checkpoint)."""
    files = {}
    if inner_lr is not None:
        meta = dataclasses.replace(meta, extra={**meta.extra, "inner_lr": {"file": INNER_LR_FILE,
                                                                           **inner_lr.file_info()}})
        files[INNER_LR_FILE] = inner_lr.state_dict()
    return save_checkpoint(directory, model, meta, state, tensor_files=files)


def read_inner_lr_tensors(checkpoint: str | Path, meta: CheckpointMeta | None = None) -> dict[str, Tensor] | None:
    """The saved ``InnerLR`` state dict of a checkpoint, None when it has no learned rates."""
    checkpoint = Path(checkpoint)
    meta = meta if meta is not None else read_meta(checkpoint)
    info = meta.extra.get("inner_lr")
    if not info:
        return None
    if not confined_file(checkpoint, info["file"], checkpoint / "meta.json").is_file():
        raise CheckpointError(f"{checkpoint} records learned inner rates but has no {info['file']}")
    return read_checkpoint_tensors(checkpoint, info["file"])


def load_inner_lr(checkpoint: str | Path) -> float | dict[str, Tensor] | list[dict[str, Tensor]]:
    """The inner learning rate(s) to adapt a checkpoint's speaker group with: the learned Meta-SGD rates of a meta
    checkpoint ({parameter name: α tensor}, or a list of those, one per inner step, when ``meta.inner_lr_per_step``
    learned them; ready for ``adapt(lr=...)``), else its config's ``meta.inner_lr``."""
    meta = read_meta(checkpoint)
    tensors = read_inner_lr_tensors(checkpoint, meta)
    if tensors is None:
        return float(config_from_dict(meta.config).meta.inner_lr)
    file = Path(checkpoint) / meta.extra["inner_lr"]["file"]
    try:
        return InnerLR.rates_from_file(tensors, meta.extra["inner_lr"])
    except KeyError as missing:
        raise CheckpointError(f"{file} holds no learned rate {missing}") from None
    except ValueError as error:
        raise CheckpointError(f"{file}: {error}") from None


def load_inner_lr_into(checkpoint: str | Path, meta: CheckpointMeta, inner_lr: InnerLR | None) -> None:
    """Restore a checkpoint's learned rates into ``inner_lr`` (resume, or start from another meta checkpoint)."""
    tensors = read_inner_lr_tensors(checkpoint, meta)
    if inner_lr is None or tensors is None:
        if inner_lr is not None and meta.kind == "meta":
            raise CheckpointError(f"{checkpoint} has no learned inner rates but meta.learn_inner_lr is true")
        return
    expected = inner_lr.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"{checkpoint}: its learned inner rates do not fit this config (meta.inner_lr_mode, "
                              f"meta.inner_lr_per_step, meta.inner_steps or model.speaker_groups differ)")
    inner_lr.load_state_dict(tensors)
