"""Real utterances of a feature store as the evaluation compares against them: the audio as the model saw it
(loaded, trimmed and loudness-normalized like ``metatts prepare``), Resemblyzer d-vectors cached on disk, and the
log-mel/F0 analysis ``compare_mels`` needs, computed once per utterance."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metatts.features.audio import load_audio
from metatts.features.extract import FeatureExtractor
from metatts.features.mel import MelSpectrogram
from metatts.features.pitch import PitchTracker
from metatts.features.store import FeatureStore, ManifestEntry


class RealAudio:
    """Real utterances of the store as the model saw them (loaded, trimmed and loudness-normalized like
    ``metatts prepare`` does), with their Resemblyzer d-vectors cached on disk and their analysis in memory."""

    def __init__(self, store: FeatureStore, audio, encoder, cache_path: Path | None):
        self.store, self.audio, self.encoder = store, audio, encoder
        self.extractor = FeatureExtractor(audio)
        self.cache_path = cache_path
        self.vectors: dict[str, np.ndarray] = {}
        self.signatures: dict[str, str] = {}
        self._waves: dict[str, np.ndarray] = {}
        self._analysis: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._dirty = False
        if cache_path is not None and cache_path.is_file():
            with np.load(cache_path, allow_pickle=False) as data:
                for utt, signature, vector in zip(data["ids"], data["signatures"], data["vectors"]):
                    self.vectors[str(utt)], self.signatures[str(utt)] = vector, str(signature)

    def _signature(self, entry: ManifestEntry) -> str:
        stat = os.stat(entry.audio_path)
        return f"{entry.audio_path}|{stat.st_size}|{stat.st_mtime_ns}|{self.audio.sample_rate}"

    def wave(self, utt_id: str, keep: bool = True) -> np.ndarray:
        if utt_id in self._waves:
            return self._waves[utt_id]
        wave = self.extractor.condition(load_audio(self.store.by_id[utt_id].audio_path, self.audio.sample_rate))
        if keep:
            self._waves[utt_id] = wave
        return wave

    def embeddings(self, ids: Sequence[str], keep_waves: bool = True) -> np.ndarray:
        """[N, 256] d-vectors (NaN rows for unusable audio), computed once per file content and cached."""
        missing = []
        for utt in ids:
            signature = self._signature(self.store.by_id[utt])
            if self.signatures.get(utt) != signature:
                missing.append((utt, signature))
        if missing:
            vectors = self.encoder.embed_many([self.wave(u, keep_waves) for u, _ in missing], self.audio.sample_rate,
                                              on_error="nan")
            for (utt, signature), vector in zip(missing, vectors):
                self.vectors[utt], self.signatures[utt] = vector, signature
            self._dirty = True
        return np.stack([self.vectors[u] for u in ids])

    def analysis(self, utt_id: str) -> tuple[np.ndarray, np.ndarray]:
        if utt_id not in self._analysis:
            self._analysis[utt_id] = analyse(self.wave(utt_id), self.audio)
        return self._analysis[utt_id]

    def save(self) -> None:
        if not self._dirty or self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        ids = sorted(self.vectors)
        tmp = self.cache_path.with_name(f".{self.cache_path.stem}-{os.getpid()}.npz")
        np.savez(tmp, ids=np.array(ids), signatures=np.array([self.signatures[i] for i in ids]),
                 vectors=np.stack([self.vectors[i] for i in ids]).astype(np.float32))
        os.replace(tmp, self.cache_path)
        self._dirty = False


def analyse(wave: np.ndarray, audio) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel [n_mels, T] float64, F0 [T] Hz) of a wave at ``audio.sample_rate``: what ``compare_audio`` computes
    for each side, so a real reference is analysed once rather than once per comparison."""
    wave = np.asarray(wave, dtype=np.float32)
    with torch.inference_mode():
        log_mel = MelSpectrogram.from_config(audio)(torch.from_numpy(wave)).double().numpy()
    return log_mel, PitchTracker.from_config(audio)(wave).f0
