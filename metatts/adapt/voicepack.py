"""Voice packs: an adapted speaker as exactly the tensors of the speaker group, plus metadata.

A pack is a safetensors file (no pickle). Its metadata records the base checkpoint's weight hash, so a pack
loads only onto the checkpoint it was made for; names, shapes, dtypes and sizes are checked against the model,
so a malformed or foreign pack is refused with a message saying what does not fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from metatts.runtime.checkpoint import weights_digest

PACK_FORMAT = 1
MAX_PACK_BYTES = 64 << 20  # refuse absurd files before reading them (a default pack is a few KB)


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


def save_voice_pack(path: str | Path, pack: VoicePack) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {"format": str(PACK_FORMAT), "base_checkpoint": pack.base_checkpoint, "info": json.dumps(pack.info)}
    save_file({k: v.detach().cpu().contiguous() for k, v in pack.params.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_voice_pack(path: str | Path, checkpoint: str | Path, model: torch.nn.Module | None = None) -> VoicePack:
    """Read a pack and check it belongs to ``checkpoint`` (and fits ``model``'s parameters when given)."""
    path = Path(path)
    if not path.is_file():
        raise VoicePackError(f"voice pack {path} does not exist")
    if path.stat().st_size > MAX_PACK_BYTES:
        raise VoicePackError(f"{path} is {path.stat().st_size} bytes: not a voice pack")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            params = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise VoicePackError(f"{path} is not a voice pack (not a readable safetensors file: {error})") from error
    if metadata.get("format") != str(PACK_FORMAT) or "base_checkpoint" not in metadata:
        raise VoicePackError(f"{path} is not a metatts voice pack (format {metadata.get('format')!r})")
    expected = weights_digest(checkpoint)
    if metadata["base_checkpoint"] != expected:
        raise VoicePackError(f"{path} was adapted from another checkpoint (weights {metadata['base_checkpoint'][:12]}"
                             f"), not {checkpoint} ({expected[:12]}): adapt the voice again on this checkpoint")
    if model is not None:
        check_fits(params, model, path)
    return VoicePack(params=params, base_checkpoint=metadata["base_checkpoint"],
                     info=json.loads(metadata.get("info", "{}")))


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
