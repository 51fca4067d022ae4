"""The Python API: load a checkpoint, synthesize speech for a training speaker, the new-speaker voice, or a voice
adapted from a few clips.

    tts = metatts.load("runs/demo/train/checkpoint")
    result = tts.synthesize("Hello there. How are you?", speaker="m3")
    result.save("hello.wav")

    voice = tts.adapt(["a.wav", "b.wav"], ["First transcript.", "Second one."], steps=10)
    tts.synthesize("Now in the new voice.", voice=voice).save("new.wav")
    voice.save("voice.safetensors")          # later: tts.synthesize("...", voice="voice.safetensors")
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from metatts.checkpoints import load_model
from metatts.config import config_from_dict
from metatts.model.acoustic import AcousticModel, infer_with
from metatts.model.batch import NEW_SPEAKER
from metatts.runtime.checkpoint import CheckpointMeta, weights_digest
from metatts.runtime.env import resolve_device
from metatts.text.chunks import chunk_text
from metatts.text.normalize import normalize_text
from metatts.text.phonemes import Phonemizer
from metatts.text.symbols import SymbolTable

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


class TTS:
    """A loaded acoustic model with its front end and a vocoder.

    Safe to share between threads: every use of the acoustic model (synthesis with any voice, adaptation) holds
    one lock, and a voice's tensors enter through ``torch.func.functional_call``, never by writing the model's
    parameters; vocoding runs outside the lock."""

    def __init__(self, model: AcousticModel, meta: CheckpointMeta, device: torch.device, vocoder=None, *,
                 checkpoint: str | Path | None = None, digest: str | None = None):
        """``vocoder``: a vocoder object, or a name for ``load_vocoder`` (None/"hifigan": the universal HiFi-GAN,
        Griffin-Lim when absent; "griffinlim"; a HiFi-GAN checkpoint path), loaded on first synthesis."""
        self.model, self.meta, self.device = model.eval(), meta, device
        # The folder and weights hash the model came from: voice packs are made for, and only load onto, these.
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.weights_digest = digest
        self.config = config_from_dict(meta.config)
        self.symbols = SymbolTable.from_json(meta.symbols)
        self.speakers = list(meta.speakers)
        self._rows = {s: i for i, s in enumerate(self.speakers)}
        named = vocoder is None or isinstance(vocoder, (str, os.PathLike))
        self.vocoder_name: str | None = (str(vocoder) if vocoder is not None else None) if named else None
        self._vocoder = None if named else vocoder
        self._phonemizer: Phonemizer | None = None
        self._clip_reader = None
        self._model_lock = threading.RLock()  # the acoustic model, its mode and its phonemizer: one user at a time
        self._vocoder_lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint: str | Path, *, device: str = "auto", vocoder: str | None = None) -> "TTS":
        """Load a checkpoint folder. ``vocoder``: None/"hifigan" (universal HiFi-GAN, Griffin-Lim fallback),
        "griffinlim", or a HiFi-GAN checkpoint path; loaded on first synthesis."""
        torch_device = resolve_device(device)
        loaded = load_model(checkpoint, torch_device)
        return cls(loaded.model, loaded.meta, torch_device, vocoder, checkpoint=checkpoint, digest=loaded.digest)

    @property
    def vocoder(self):
        with self._vocoder_lock:
            if self._vocoder is None:
                from metatts.vocoder import load_vocoder

                self._vocoder = load_vocoder(self.vocoder_name, self.config.audio, self.device)
            return self._vocoder

    @property
    def sample_rate(self) -> int:
        return self.config.audio.sample_rate

    def speaker_row(self, speaker: str | None) -> int:
        """Row of a training speaker; None means the new-speaker voice (the learned initialization)."""
        if speaker is None:
            return NEW_SPEAKER
        if speaker not in self._rows:
            if speaker.endswith(".safetensors"):
                raise SynthesisError(f"unknown speaker {speaker!r}: to use a voice pack, pass voice={speaker!r}")
            close = [s for s in self.speakers if s.lower().startswith(speaker[:1].lower())][:5] or self.speakers[:5]
            raise SynthesisError(f"unknown speaker {speaker!r}; this checkpoint has {len(self.speakers)} speakers, "
                                 f"e.g. {', '.join(close)}")
        return self._rows[speaker]

    def phonemes(self, text: str) -> tuple[list[str], list[list[str]]]:
        """(sentences, phoneme symbols per sentence) of a text; unpronounceable sentences are dropped."""
        if not text or not text.strip():
            raise SynthesisError("the text is empty")
        sentences = chunk_text(normalize_text(text))  # sentences, long ones cut at clauses/words: bounded work
        with self._model_lock:
            if self._phonemizer is None:
                self._phonemizer = Phonemizer(self.config.text, normalize=False)
            symbols = self._phonemizer.phonemize(sentences)
        kept = [(s, p) for s, p in zip(sentences, symbols) if p]
        if not kept:
            raise SynthesisError(f"nothing pronounceable in {text!r}")
        return [s for s, _ in kept], [p for _, p in kept]

    # ------------------------------------------------------------------------------------------ adaptation
    def adapt(self, clips, texts=None, *, transcripts: str | Path | None = None, steps: int = 10,
              lr: float | None = None, groups: Sequence[str] | None = None, optimizer: str = "sgd",
              l2_anchor: float = 0.0, seed: int = 0, unknown: str = "skip"):
        """A new voice from a few clips (a file, a folder, or a list of them); returns a ``metatts.adapt.Voice``.

        Transcripts: ``texts`` (one per clip file in order, or a mapping of clip name to text), else the
        ``transcripts`` TSV file (``clip_name<TAB>text``) or folder of ``<stem>.txt``, completed by sidecar
        ``<clip>.txt`` files. Unusable clips are skipped (``voice.clips.skipped`` says why); none usable raises
        ``ClipError``. ``lr`` None: the checkpoint's learned inner rates, else its ``meta.inner_lr``.
        ``groups`` None: the config's speaker groups. See ``metatts.adapt.fast``."""
        from metatts.adapt.clips import ClipReader
        from metatts.adapt.fast import adapt_voice

        checkpoint = self._require_checkpoint("adapt a voice")
        with self._model_lock:
            if self._clip_reader is None or self._clip_reader.unknown != unknown:
                self._clip_reader = ClipReader.from_meta(self.meta, unknown)
            clip_set = self._clip_reader.read(clips, texts, transcripts=transcripts)
            return adapt_voice(self.model, checkpoint, clip_set, steps=steps, lr=lr, groups=groups,
                               optimizer=optimizer, l2_anchor=l2_anchor, seed=seed, digest=self.weights_digest,
                               meta=self.meta)

    def voice_params(self, voice, alpha: float = 1.0) -> dict[str, torch.Tensor]:
        """The tensors a voice replaces: ``voice`` is a ``Voice``, a ``VoicePack`` or a pack path; with ``alpha``
        < 1 they are blended with the un-adapted ones, (1 − α)·φ0 + α·φ'. A pack made from other weights, or one
        that does not fit this model, raises ``VoicePackError``."""
        from metatts.adapt.fast import Voice, interpolate
        from metatts.adapt.voicepack import VoicePack, VoicePackError, check_fits, load_voice_pack

        checkpoint = self._require_checkpoint("use a voice pack")
        if isinstance(voice, (str, os.PathLike)):
            if Path(voice).is_file() and weights_digest(checkpoint) != self.weights_digest:
                # load_voice_pack checks the pack against the folder's weights file, which no longer holds the
                # weights in memory (a training run saved over it): say so rather than blame the pack.
                raise VoicePackError(f"{checkpoint} was rewritten since this model was loaded from it: load it again "
                                     f"(metatts.load) to use voice packs made for its current weights")
            with self._model_lock:  # it reads the model's parameters (see below)
                pack = load_voice_pack(voice, checkpoint, self.model)
        elif isinstance(voice, Voice):
            pack = voice.pack
        elif isinstance(voice, VoicePack):
            pack = voice
        else:
            raise TypeError(f"voice must be a Voice, a VoicePack or a path, got {type(voice).__name__}")
        if pack.base_checkpoint != self.weights_digest:
            raise VoicePackError(f"the voice was adapted from other weights ({pack.base_checkpoint[:12]}), not this "
                                 f"model's {self.checkpoint} ({self.weights_digest[:12]}): adapt it again here")
        # Under the model lock: an adaptation running meanwhile calls the model functionally, which re-points its
        # parameters to the fast weights for the call, and φ0 read then would be that voice, not the slot.
        with self._model_lock:
            check_fits(pack.params, self.model)
            return interpolate(pack.params, self.model, alpha)

    def _require_checkpoint(self, what: str) -> Path:
        if self.checkpoint is None or self.weights_digest is None:
            raise SynthesisError(f"to {what}, load the model from its checkpoint folder (metatts.load(path)): "
                                 f"voice packs are tied to the checkpoint's weights hash")
        return self.checkpoint

    # ------------------------------------------------------------------------------------------ synthesis
    @torch.no_grad()
    def mels(self, text: str, speaker: str | None = None, *, duration_scale: float = 1.0,
             params: dict[str, torch.Tensor] | None = None, voice=None,
             alpha: float = 1.0) -> tuple[list[str], list[torch.Tensor]]:
        """Log-mels per sentence. ``params`` replaces model tensors by name (a voice pack's adapted slot);
        ``voice`` (a ``Voice``, ``VoicePack`` or pack path) does the same from a pack, blended by ``alpha``."""
        if voice is not None:
            if speaker is not None:
                raise SynthesisError("give a speaker or a voice, not both")
            if params is not None:
                raise SynthesisError("give params or a voice, not both")
            params = self.voice_params(voice, alpha)
        sentences, symbols = self.phonemes(text)
        ids = [torch.tensor(self.symbols.encode(p), dtype=torch.long) for p in symbols]
        lengths = torch.tensor([len(i) for i in ids])
        phonemes = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True).to(self.device)
        speakers = torch.full((len(ids),), self.speaker_row(speaker), dtype=torch.long, device=self.device)
        with self._model_lock:
            out = infer_with(self.model, params, phonemes, lengths.to(self.device), speakers,
                             duration_scale=duration_scale)
        return sentences, [out.mels[i, :, :int(out.mel_lengths[i])].cpu() for i in range(len(ids))]

    def synthesize(self, text: str, speaker=None, *, duration_scale: float = 1.0,
                   params: dict[str, torch.Tensor] | None = None, voice=None, alpha: float = 1.0) -> Speech:
        """Speech for ``text``: split at sentence ends, synthesized as one batch, joined with short pauses.

        ``speaker``: a training speaker id, or None for the new-speaker voice; an adapted ``Voice``/``VoicePack`` (or
        a pack path as ``voice=``) selects that voice, blended with the un-adapted one by ``alpha`` in [0, 1]."""
        if speaker is not None and not isinstance(speaker, str):  # tts.synthesize("...", voice) reads naturally
            if voice is not None:
                raise SynthesisError("give the voice once")
            speaker, voice = None, speaker
        sentences, mels = self.mels(text, speaker, duration_scale=duration_scale, params=params, voice=voice,
                                    alpha=alpha)
        gap = np.zeros(int(SENTENCE_GAP_SECONDS * self.sample_rate), dtype=np.float32)
        pieces = []
        for mel in mels:
            wave = self.vocoder(mel[None].float().to(self.device))[0].cpu().numpy().astype(np.float32)
            pieces.extend([wave, gap])
        return Speech(wave=np.concatenate(pieces[:-1]), sample_rate=self.sample_rate, mels=mels,
                      sentences=sentences)


def load(checkpoint: str | Path, *, device: str = "auto", vocoder: str | None = None) -> TTS:
    """Load a checkpoint folder for synthesis (see ``TTS``)."""
    return TTS.load(checkpoint, device=device, vocoder=vocoder)
