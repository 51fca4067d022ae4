"""metatts: meta-learned few-shot multi-speaker text-to-speech.

    corpus ─ prepare ─▶ feature store ─▶ episodes (one speaker: support + query)
    model = shared θ + speaker group φ;  inner loop φ' = φ − α ⊙ ∇φ L_support;  outer loop over θ, φ0, α
    new speaker: a few clips ─▶ the same inner loop from φ0 ─▶ voice pack (φ' only, a few KB) ─▶ synthesize

    import metatts
    tts = metatts.load("runs/demo/meta/checkpoint")
    voice = tts.adapt("my_clips/", transcripts="my_clips/transcripts.tsv", steps=10)
    tts.synthesize("Hello in my voice.", voice=voice).save("hello.wav")
    voice.save("me.safetensors")

Public names are imported on first use, so ``import metatts`` does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "metatts.api", "TTS": "metatts.api", "Speech": "metatts.api", "SynthesisError": "metatts.api",
    "Voice": "metatts.adapt.fast", "adapt_voice": "metatts.adapt.fast",
    "ClipSet": "metatts.adapt.clips", "ClipError": "metatts.adapt.clips", "read_clips": "metatts.adapt.clips",
    "VoicePack": "metatts.adapt.voicepack", "VoicePackError": "metatts.adapt.voicepack",
    "load_voice_pack": "metatts.adapt.voicepack", "save_voice_pack": "metatts.adapt.voicepack",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metatts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
