"""The Python API: load a checkpoint, synthesize speech for a training speaker or the new-speaker voice.

    tts = metatts.load("runs/demo/train/checkpoint")
    result = tts.synthesize("Hello there. How are you?", speaker="m3")
    result.save("hello.wav")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from metatts.config import config_from_dict
from metatts.model.acoustic import AcousticModel
from metatts.model.batch import NEW_SPEAKER
from metatts.runtime.checkpoint import CheckpointMeta, load_weights, read_meta
from metatts.runtime.env import resolve_device
from metatts.text.normalize import normalize_text
from metatts.text.phonemes import Phonemizer
from metatts.text.symbols import SymbolTable
from metatts.train.common import build_model

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
SENTENCE_GAP_SECONDS = 0.15  # silence between sentences synthesized separately


class SynthesisError(ValueError):
    """The request cannot be synthesized (unknown speaker, empty or unpronounceable text)."""


@dataclass
class Speech:
    """Synthesized audio with the mels it came from (one per sentence)."""

    wave: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    mels: list[torch.Tensor]  # [n_mels, T] per sentence
    sentences: list[str]

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, self.wave, self.sample_rate, subtype="PCM_16")
        return path


def split_sentences(text: str) -> list[str]:
    """Sentences of a (normalized) text, so long input is synthesized in pieces the model was trained on."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class TTS:
    """A loaded acoustic model with its front end and a vocoder."""

    def __init__(self, model: AcousticModel, meta: CheckpointMeta, device: torch.device, vocoder=None):
        self.model, self.meta, self.device = model.eval(), meta, device
        self.config = config_from_dict(meta.config)
        self.symbols = SymbolTable.from_json(meta.symbols)
        self.speakers = list(meta.speakers)
        self._rows = {s: i for i, s in enumerate(self.speakers)}
        self._vocoder = vocoder
        self._phonemizer: Phonemizer | None = None

    @classmethod
    def load(cls, checkpoint: str | Path, *, device: str = "auto", vocoder: str | None = None) -> "TTS":
        """Load a checkpoint folder. ``vocoder``: None/"hifigan" (universal HiFi-GAN, Griffin-Lim fallback),
        "griffinlim", or a HiFi-GAN checkpoint path; loaded on first synthesis."""
        meta = read_meta(checkpoint)
        config = config_from_dict(meta.config)
        torch_device = resolve_device(device)
        model = build_model(config, len(SymbolTable.from_json(meta.symbols)), len(meta.speakers))
        load_weights(checkpoint, model)
        tts = cls(model.to(torch_device), meta, torch_device)
        tts._vocoder_name = vocoder
        return tts

    @property
    def vocoder(self):
        if self._vocoder is None:
            from metatts.vocoder import load_vocoder

            self._vocoder = load_vocoder(getattr(self, "_vocoder_name", None), self.config.audio, self.device)
        return self._vocoder

    @property
    def sample_rate(self) -> int:
        return self.config.audio.sample_rate

    def speaker_row(self, speaker: str | None) -> int:
        """Row of a training speaker; None means the new-speaker voice (the learned initialization)."""
        if speaker is None:
            return NEW_SPEAKER
        if speaker not in self._rows:
            close = [s for s in self.speakers if s.lower().startswith(speaker[:1].lower())][:5] or self.speakers[:5]
            raise SynthesisError(f"unknown speaker {speaker!r}; this checkpoint has {len(self.speakers)} speakers, "
                                 f"e.g. {', '.join(close)}")
        return self._rows[speaker]

    def phonemes(self, text: str) -> tuple[list[str], list[list[str]]]:
        """(sentences, phoneme symbols per sentence) of a text; unpronounceable sentences are dropped."""
        if not text or not text.strip():
            raise SynthesisError("the text is empty")
        sentences = split_sentences(normalize_text(text))
        if self._phonemizer is None:
            self._phonemizer = Phonemizer(self.config.text, normalize=False)
        symbols = self._phonemizer.phonemize(sentences)
        kept = [(s, p) for s, p in zip(sentences, symbols) if p]
        if not kept:
            raise SynthesisError(f"nothing pronounceable in {text!r}")
        return [s for s, _ in kept], [p for _, p in kept]

    @torch.no_grad()
    def mels(self, text: str, speaker: str | None = None, *, duration_scale: float = 1.0,
             params: dict[str, torch.Tensor] | None = None) -> tuple[list[str], list[torch.Tensor]]:
        """Log-mels per sentence. ``params`` replaces model tensors by name (a voice pack's adapted slot)."""
        sentences, symbols = self.phonemes(text)
        ids = [torch.tensor(self.symbols.encode(p), dtype=torch.long) for p in symbols]
        lengths = torch.tensor([len(i) for i in ids])
        phonemes = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(self.device)
        speakers = torch.full((len(ids),), self.speaker_row(speaker), dtype=torch.long, device=self.device)
        if params:
            # ``infer`` is a method, not ``forward``, so swap the tensors in for the call instead of functional_call.
            out = _with_params(self.model, params, lambda: self.model.infer(
                phonemes, lengths.to(self.device), speakers, duration_scale=duration_scale))
        else:
            out = self.model.infer(phonemes, lengths.to(self.device), speakers, duration_scale=duration_scale)
        return sentences, [out.mels[i, :, :int(out.mel_lengths[i])].cpu() for i in range(len(ids))]

    def synthesize(self, text: str, speaker: str | None = None, *, duration_scale: float = 1.0,
                   params: dict[str, torch.Tensor] | None = None) -> Speech:
        """Speech for ``text``: split at sentence ends, synthesized as one batch, joined with short pauses."""
        sentences, mels = self.mels(text, speaker, duration_scale=duration_scale, params=params)
        gap = np.zeros(int(SENTENCE_GAP_SECONDS * self.sample_rate), dtype=np.float32)
        pieces = []
        for mel in mels:
            wave = self.vocoder(mel[None].float().to(self.device))[0].cpu().numpy().astype(np.float32)
            pieces.extend([wave, gap])
        return Speech(wave=np.concatenate(pieces[:-1]), sample_rate=self.sample_rate, mels=mels,
                      sentences=sentences)


def _with_params(model: torch.nn.Module, params: dict[str, torch.Tensor], call):
    """Run ``call`` with some of ``model``'s parameters temporarily replaced (restored afterwards)."""
    saved = {}
    named = dict(model.named_parameters())
    try:
        for name, value in params.items():
            saved[name] = named[name].data
            named[name].data = value.to(named[name].device, named[name].dtype)
        return call()
    finally:
        for name, value in saved.items():
            named[name].data = value


def load(checkpoint: str | Path, *, device: str = "auto", vocoder: str | None = None) -> TTS:
    """Load a checkpoint folder for synthesis (see ``TTS``)."""
    return TTS.load(checkpoint, device=device, vocoder=vocoder)
