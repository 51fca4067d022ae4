"""Few-shot adaptation of a new speaker: clips → features (``clips``), the test-time inner loop (``fast``), and
voice packs (``voicepack``). Names are imported on first use, so importing the package stays cheap."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Clip": "clips", "ClipError": "clips", "ClipReader": "clips", "ClipSet": "clips", "read_clips": "clips",
    "find_clip_files": "clips", "read_transcripts": "clips",
    "Voice": "fast", "adapt_voice": "fast", "interpolate": "fast", "ADAM_LR": "fast",
    "VoicePack": "voicepack", "VoicePackError": "voicepack", "load_voice_pack": "voicepack",
    "save_voice_pack": "voicepack", "check_fits": "voicepack",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"metatts.adapt.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'metatts.adapt' has no attribute {name!r}")
