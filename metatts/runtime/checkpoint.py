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
import math
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


# ------------------------------------------------------------------------------------------------ readers
# One reader per checkpoint part. Each turns any damage (truncation, a foreign file, wrong field types, a name that
# points outside the folder) into one ``CheckpointError`` naming the file and what is wrong with it. The higher-level
# checkpoint loading (model, symbols, inner rates) is built on these; nothing else opens a checkpoint's files.

KINDS = ("train", "meta")
STATS_KEYS = ("log_f0_mean", "log_f0_std", "energy_mean", "energy_std")


def _field(raw: dict, name: str, kinds: type | tuple[type, ...], path: Path, what: str):
    value = raw.get(name)
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        value = None  # JSON true/false is not a number here
    if not isinstance(value, kinds):
        raise CheckpointError(f"{path}: field {name!r} must be {what}, got {type(value).__name__} "
                              f"{str(value)[:40]!r}")
    return value


def read_meta(directory: str | Path) -> CheckpointMeta:
    """``meta.json`` of a checkpoint folder, every field checked for its type (and the config validated)."""
    directory = Path(directory)
    path = directory / "meta.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a metatts checkpoint (no meta.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged: {error}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a checkpoint's metadata (a JSON {type(raw).__name__}, not an object)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{directory} has checkpoint format version {version}; this metatts reads version "
                              f"{FORMAT_VERSION}")
    unknown = sorted(set(raw) - {f for f in CheckpointMeta.__dataclass_fields__})
    if unknown:
        raise CheckpointError(f"{path} has unexpected fields: {', '.join(unknown[:5])}")
    config = _field(raw, "config", dict, path, "an object (the resolved config)")
    symbols = _field(raw, "symbols", str, path, "a string (the symbol table's JSON)")
    try:
        table = json.loads(symbols)
    except ValueError as error:
        raise CheckpointError(f"{path}: field 'symbols' is not a symbol table's JSON ({error})") from None
    if not (isinstance(table, dict) and isinstance(table.get("symbols"), list)
            and all(isinstance(s, str) for s in table["symbols"])):
        raise CheckpointError(f"{path}: field 'symbols' is not a symbol table (no list of symbol strings)")
    stats = _field(raw, "stats", dict, path, "an object of normalization statistics")
    for key in STATS_KEYS:
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{path}: stats.{key} must be a finite number, got {value!r}")
    speakers = _field(raw, "speakers", list, path, "a list of speaker ids")
    if not all(isinstance(s, str) for s in speakers) or len(set(speakers)) != len(speakers):
        raise CheckpointError(f"{path}: field 'speakers' must be distinct speaker id strings")
    step = _field(raw, "step", int, path, "an integer") if "step" in raw else 0
    if step < 0:
        raise CheckpointError(f"{path}: field 'step' must be >= 0, got {step}")
    kind = _field(raw, "kind", str, path, "a string") if "kind" in raw else "train"
    if kind not in KINDS:
        raise CheckpointError(f"{path}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    extra = _field(raw, "extra", dict, path, "an object") if "extra" in raw else {}
    if "inner_lr" in extra and extra["inner_lr"]:
        rates = extra["inner_lr"]
        if not (isinstance(rates, dict) and isinstance(rates.get("file"), str)
                and isinstance(rates.get("parameterization"), str) and isinstance(rates.get("names"), list)
                and all(isinstance(n, str) for n in rates["names"])):
            raise CheckpointError(f"{path}: extra.inner_lr must name a file, a parameterization and a list of "
                                  f"parameter names")
        confined_file(directory, rates["file"], path)
    from metatts.config import ConfigError, config_from_dict  # same layer; imported late to keep this module light

    try:
        config_from_dict(config)
    except ConfigError as error:
        raise CheckpointError(f"{path}: its config is not valid: {error}") from None
    return CheckpointMeta(config=config, symbols=symbols, stats=stats, speakers=speakers, step=step, kind=kind,
                          format_version=version, extra=extra)


def confined_file(directory: str | Path, name: str, source: str | Path | None = None) -> Path:
    """``directory/name`` for a file name recorded in a checkpoint's metadata: a plain name inside the folder, never
    a path elsewhere (``../x``, ``/etc/x``, a sub-folder)."""
    directory = Path(directory)
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name:
        raise CheckpointError(f"{source or directory}: file name {name!r} is not a plain file name inside the "
                              f"checkpoint folder")
    return directory / name


def read_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing, truncated or foreign file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist ({what})")
    try:
        return load_file(str(path))
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...: any failure is a damaged file
        raise CheckpointError(f"{path} is damaged or not a safetensors {what} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``."""
    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no model.safetensors")
    return read_tensors(path, "weights file")


def read_checkpoint_tensors(directory: str | Path, name: str) -> dict[str, torch.Tensor]:
    """A safetensors file that a checkpoint's metadata names (e.g. the learned inner rates), confined to the folder."""
    return read_tensors(confined_file(directory, name, Path(directory) / "meta.json"), "tensor file")


def load_weights(directory: str | Path, model: torch.nn.Module, *, fresh: tuple[str, ...] = ()) -> None:
    """Load weights into ``model``; missing, unexpected or mis-shaped tensors raise naming a few of them.
    ``fresh``: name prefixes the file may lack (a part the checkpoint's config did not have): those tensors keep
    the model's own values."""
    tensors = read_weights(directory)
    expected = model.state_dict()
    kept = {k: v for k, v in expected.items() if k not in tensors and k.startswith(fresh)} if fresh else {}
    tensors = {**tensors, **kept}
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


# Every training state has these (meta-training adds its own counters); their contents are checked on restore.
STATE_KEYS = {"optimizer": dict, "schedule": dict, "scaler": dict, "rng": dict, "step": int, "skipped": int}


def load_state(directory: str | Path) -> dict:
    """``state.pt`` through ``torch.load(weights_only=True)`` (no code runs); a truncated, foreign or pickled-code
    file raises ``CheckpointError`` naming it."""
    path = Path(directory) / "state.pt"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no training state (state.pt): it can be used with --init-from, "
                              f"not --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError...: the file is not usable
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is damaged or not a metatts training state ({type(error).__name__}: "
                              f"{first[:160]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a metatts training state (a {type(state).__name__}, not a dict)")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{path} is not a metatts training state ({key!r} is missing or not a "
                                  f"{kind.__name__})")
    return state


def weights_digest(directory: str | Path) -> str:
    """Content hash of a checkpoint's weights: voice packs record it to refuse loading onto another model."""
    digest = hashlib.blake2b(digest_size=16)
    path = Path(directory) / "model.safetensors"
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it ({error.strerror or error})") from None
    return digest.hexdigest()
