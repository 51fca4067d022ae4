"""Checkpoints: weights in safetensors, metadata in JSON, training state loadable with ``weights_only=True``.

A checkpoint is a folder::

    model.safetensors   every parameter and buffer of the model (no pickle: safe to load from anyone)
    meta.json           format version, resolved config, audio parameters, symbol table, normalization
                        statistics, speaker table, step, kind
    state.pt            optimizer, scheduler, step, RNG and sampler state (only for resuming; plain tensors
                        and numbers, so ``torch.load(weights_only=True)`` reads it)

Folders are written under a temporary name and renamed, so a killed save never leaves a half checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, from another format version or does not fit the model."""


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild the model and its front end without the training corpus."""

    config: dict  # resolved config (all axes)
    symbols: str  # SymbolTable JSON
    stats: dict  # normalization statistics: {"log_f0_mean", "log_f0_std", "energy_mean", "energy_std"}
    speakers: list[str]  # training speaker ids in table-row order
    step: int = 0
    kind: str = "train"  # train | meta
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def audio(self) -> dict:
        return self.config["audio"]


def save_checkpoint(directory: str | Path, model: torch.nn.Module, meta: CheckpointMeta,
                    state: dict | None = None, tensor_files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a checkpoint folder atomically and return its path. ``tensor_files`` adds safetensors files beside
    the weights (file name -> tensors), inside the same atomic swap (a kill during the save leaves the previous
    checkpoint whole)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    (tmp / "meta.json").write_text(json.dumps(meta.__dict__, indent=1))
    if state is not None:
        torch.save(state, tmp / "state.pt")
    for name, file_tensors in (tensor_files or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in file_tensors.items()}, str(tmp / name))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def read_meta(directory: str | Path) -> CheckpointMeta:
    directory = Path(directory)
    path = directory / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a metatts checkpoint (no meta.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is damaged: {error}") from error
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{directory} has checkpoint format version {version}; this metatts reads version "
                              f"{FORMAT_VERSION}")
    try:
        return CheckpointMeta(**raw)
    except TypeError as error:
        raise CheckpointError(f"{path} has unexpected fields: {error}") from error


def load_weights(directory: str | Path, model: torch.nn.Module) -> None:
    """Load weights into ``model``; missing, unexpected or mis-shaped tensors raise naming a few of them."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no model.safetensors")
    tensors = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        raise CheckpointError(f"{directory} does not fit this model (another config?): " + "; ".join(parts))
    model.load_state_dict(tensors)


def load_state(directory: str | Path) -> dict:
    path = Path(directory) / "state.pt"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no training state (state.pt): it can be used with --init-from, "
                              f"not --resume")
    return torch.load(path, map_location="cpu", weights_only=True)


def weights_digest(directory: str | Path) -> str:
    """Content hash of a checkpoint's weights: voice packs record it to refuse loading onto another model."""
    digest = hashlib.blake2b(digest_size=16)
    with open(Path(directory) / "model.safetensors", "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
