"""Voice packs: an adapted speaker as exactly the tensors of the speaker groups it declares, plus metadata.

A pack is a safetensors file (no pickle) that people will share, so it is checked as untrusted input on load:

- it is a safetensors file of sane size with metatts pack metadata (format, base checkpoint, groups, checksum);
- its base checkpoint's weight hash is that of the checkpoint it is loaded onto;
- a checksum of its tensor data (names, dtypes, shapes, bytes) matches: a bit flip anywhere is refused;
- the groups it declares are adaptable groups of that checkpoint (the new-speaker slot, ``SPEAKER_GROUPS``, and the
  checkpoint's ``model.speaker_groups``), and it holds exactly their tensors: a pack can only be a voice, never a
  replacement for a decoder or output layer;
- names, shapes and dtypes fit the model, and values are finite and within ``RANGE_FACTOR`` of the magnitude of
  the tensors they replace.

Packs of format 1 (before checksums and declared groups in the metadata) are still read; their groups come from
their info and every check but the checksum applies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metatts.model.acoustic import SPEAKER_GROUPS, select_parameters
from metatts.runtime.checkpoint import read_meta, weights_digest
from metatts.runtime.outputs import atomic_path

PACK_FORMAT = 2  # 2: declared groups and a tensor checksum in the metadata
READABLE_FORMATS = ("1", "2")
MAX_PACK_BYTES = 64 << 20  # refuse absurd files before reading them (a default pack is a few KB)
RANGE_FACTOR = 100.0  # a pack value may be at most this times max(1, the largest magnitude of the tensor it replaces)


class VoicePackError(ValueError):
    """A voice pack is malformed or does not belong to this checkpoint."""


@dataclass
class VoicePack:
    params: dict[str, torch.Tensor]  # parameter name -> adapted tensor (the speaker group's fast weights)
    base_checkpoint: str  # weights hash of the checkpoint the pack was adapted from
    info: dict = field(default_factory=dict)  # steps, losses, clips, audio parameters, ...

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.params.values())

    @property
    def groups(self) -> list[str]:
        """The parameter groups the pack declares (what was adapted)."""
        groups = self.info.get("groups")
        return list(groups) if isinstance(groups, list) else []

    @property
    def diverged(self) -> bool:
        """Whether the adaptation that made it diverged (its support loss grew; see ``adapt.fast``)."""
        return bool(self.info.get("diverged", False))


def tensors_digest(params: dict[str, torch.Tensor]) -> str:
    """Checksum of a pack's tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(params):
        tensor = params[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def adaptable_groups(model_config: Mapping) -> list[str]:
    """The groups a voice pack of a checkpoint may hold (``model_config``: its ``model`` config section): the
    new-speaker slot, the config's speaker groups, and the low-rank adapters when the model has them."""
    adapters = ["adapters"] if int(model_config.get("adapter_rank", 0) or 0) > 0 else []
    return list(dict.fromkeys([*SPEAKER_GROUPS, *model_config.get("speaker_groups", []), *adapters]))


def save_voice_pack(path: str | Path, pack: VoicePack, *, force: bool = False) -> Path:
    """Write ``pack`` atomically (no half file, no temporary left on failure). A pack that declares no groups is
    refused, and so is one from a diverged adaptation unless ``force``."""
    path = Path(path)
    if not pack.groups or not all(isinstance(g, str) for g in pack.groups):
        raise VoicePackError(f"{path}: the pack declares no parameter groups (info['groups']): not saved")
    if pack.diverged and not force:
        reason = pack.info.get("warning", "its support loss grew")
        raise VoicePackError(f"{path}: not saved: the adaptation diverged ({reason}); lower --lr or the steps, or "
                             f"save anyway with --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v.detach().cpu().contiguous() for k, v in pack.params.items()}
    metadata = {"format": str(PACK_FORMAT), "base_checkpoint": pack.base_checkpoint, "groups": json.dumps(pack.groups),
                "tensors_digest": tensors_digest(params), "info": json.dumps(pack.info)}
    with atomic_path(path) as tmp:
        save_file(params, str(tmp), metadata=metadata)
    return path


def is_voice_pack(path: str | Path) -> bool:
    """Whether ``path`` is a file with voice pack metadata (what ``adapt --overwrite`` may replace)."""
    try:
        if Path(path).stat().st_size > MAX_PACK_BYTES:
            return False
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - anything unreadable is not a pack
        return False
    return metadata.get("format") in READABLE_FORMATS and "base_checkpoint" in metadata


def load_voice_pack(path: str | Path, checkpoint: str | Path, model: torch.nn.Module | None = None) -> VoicePack:
    """Read a pack and check it belongs to ``checkpoint`` (and fits ``model``'s parameters when given); every check
    of the module docstring applies, and any failure is one ``VoicePackError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VoicePackError(f"voice pack {path} does not exist")
    if path.stat().st_size > MAX_PACK_BYTES:
        raise VoicePackError(f"{path} is {path.stat().st_size} bytes: not a voice pack")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            params = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, ...: not a readable pack
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VoicePackError(f"{path} is not a voice pack (not a readable safetensors file: {first})") from None
    if metadata.get("format") not in READABLE_FORMATS or "base_checkpoint" not in metadata:
        raise VoicePackError(f"{path} is not a metatts voice pack (format {metadata.get('format')!r})")
    try:
        info = json.loads(metadata.get("info", "{}"))
        groups = json.loads(metadata["groups"]) if "groups" in metadata else info.get("groups")
    except (ValueError, AttributeError) as error:
        raise VoicePackError(f"{path}: damaged pack metadata ({error})") from None
    if not isinstance(info, dict) or not isinstance(groups, list) or not groups or \
            not all(isinstance(g, str) for g in groups):
        raise VoicePackError(f"{path}: damaged pack metadata (no list of declared parameter groups)")
    if metadata["format"] != "1" and tensors_digest(params) != metadata.get("tensors_digest"):
        raise VoicePackError(f"{path} is damaged: its tensor data does not match its checksum")
    expected = weights_digest(checkpoint)
    if metadata["base_checkpoint"] != expected:
        raise VoicePackError(f"{path} was adapted from another checkpoint (weights {metadata['base_checkpoint'][:12]}"
                             f"), not {checkpoint} ({expected[:12]}): adapt the voice again on this checkpoint")
    adaptable = adaptable_groups(read_meta(checkpoint).config.get("model", {}))
    not_adaptable = [g for g in groups if g not in adaptable]
    if not_adaptable:
        raise VoicePackError(f"{path} declares {', '.join(not_adaptable)}, which a voice pack of {checkpoint} may not "
                             f"hold (its adaptable groups: {', '.join(adaptable)})")
    if model is not None:
        check_pack(params, groups, model, path)
    return VoicePack(params=params, base_checkpoint=metadata["base_checkpoint"], info={**info, "groups": groups})


def check_pack(params: dict[str, torch.Tensor], groups: Sequence[str], model: torch.nn.Module,
               source: str | Path = "voice pack") -> None:
    """``params`` are exactly the tensors of ``groups`` in ``model``, fit them, and are within a sane range."""
    check_fits(params, model, source)
    try:
        declared = set(select_parameters(model, list(groups)))
    except ValueError as error:
        raise VoicePackError(f"{source}: {error}") from None
    foreign = sorted(set(params) - declared)
    if foreign:
        raise VoicePackError(f"{source}: {foreign[0]} is not in the groups the pack declares ({', '.join(groups)})"
                             f"{f' (+{len(foreign) - 1} more)' if len(foreign) > 1 else ''}")
    missing = sorted(declared - set(params))
    if missing:
        raise VoicePackError(f"{source}: lacks {missing[0]} of its declared groups ({', '.join(groups)})")
    named = dict(model.named_parameters())
    for name, tensor in params.items():
        limit = RANGE_FACTOR * max(1.0, float(named[name].detach().abs().max()) if named[name].numel() else 1.0)
        peak = float(tensor.abs().max()) if tensor.numel() else 0.0
        if peak > limit:
            raise VoicePackError(f"{source}: {name} holds values up to {peak:.3g}, beyond any voice (at most "
                                 f"{limit:.3g} for this checkpoint)")


def check_fits(params: dict[str, torch.Tensor], model: torch.nn.Module, source: str | Path = "voice pack") -> None:
    named = dict(model.named_parameters())
    if not params:
        raise VoicePackError(f"{source} holds no tensors")
    for name, tensor in params.items():
        if name not in named:
            raise VoicePackError(f"{source}: {name!r} is not a parameter of this model")
        if tensor.shape != named[name].shape:
            raise VoicePackError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects "
                                 f"{tuple(named[name].shape)}")
        if tensor.dtype != named[name].dtype:
            raise VoicePackError(f"{source}: {name} is {tensor.dtype}, the model expects {named[name].dtype}")
        if not torch.isfinite(tensor).all():
            raise VoicePackError(f"{source}: {name} holds non-finite values")
