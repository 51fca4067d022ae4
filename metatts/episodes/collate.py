"""Utterances of a feature store → padded ``Batch`` for the acoustic model.

A store prepared from TextGrids has frames per phoneme in its manifest; the batch then carries them
(``Batch.durations``, padded with 0) and the model uses them instead of its built-in aligner.

Pitch and energy are normalized here with the store's *global* statistics (not per speaker): per-speaker
normalization would remove the pitch level that makes a voice recognizable, which is what adaptation must learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metatts.features.pitch import interpolate_unvoiced
from metatts.features.store import FeatureStore, UtteranceFeatures
from metatts.model.batch import NEW_SPEAKER, Batch
from metatts.text.symbols import SymbolTable


@dataclass(frozen=True)
class Normalizer:
    """Global statistics mapping Hz and energy to the model's z-scored targets and back."""

    log_f0_mean: float
    log_f0_std: float
    energy_mean: float
    energy_std: float

    @classmethod
    def from_dict(cls, stats: dict) -> "Normalizer":
        return cls(stats["log_f0_mean"], stats["log_f0_std"], stats["energy_mean"], stats["energy_std"])

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def pitch(self, f0: np.ndarray, voiced: np.ndarray) -> np.ndarray:
        """z-scored log-F0 per frame; unvoiced frames take the interpolation of their voiced neighbours."""
        if not voiced.any():
            return np.zeros_like(f0, dtype=np.float32)  # the mean pitch: nothing better to predict
        filled = interpolate_unvoiced(f0, voiced)
        return ((np.log(np.maximum(filled, 1.0)) - self.log_f0_mean) / self.log_f0_std).astype(np.float32)

    def energy(self, energy: np.ndarray) -> np.ndarray:
        return ((energy - self.energy_mean) / self.energy_std).astype(np.float32)

    def pitch_hz(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(z * self.log_f0_std + self.log_f0_mean)


def pad_stack(tensors: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    """Right-pad the last dimension of same-rank tensors to the longest and stack them."""
    longest = max(t.shape[-1] for t in tensors)
    return torch.stack([torch.nn.functional.pad(t, (0, longest - t.shape[-1]), value=value) for t in tensors])


class Collator:
    """Builds batches from a store; keeps loaded utterances in memory up to ``cache_bytes`` (a small corpus is
    read from disk once per run)."""

    def __init__(self, store: FeatureStore, symbols: SymbolTable, speaker_rows: dict[str, int],
                 normalizer: Normalizer, cache_bytes: int = 1 << 30):
        self.store, self.symbols, self.rows, self.normalizer = store, symbols, speaker_rows, normalizer
        self.cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self.cache_bytes, self.cached_bytes = cache_bytes, 0

    def item(self, utt_id: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phoneme ids, mel, normalized pitch, normalized energy) of one utterance."""
        if utt_id in self.cache:
            return self.cache[utt_id]
        entry = self.store.by_id[utt_id]
        features: UtteranceFeatures = self.store.load(utt_id)
        item = (
            torch.tensor(self.symbols.encode(entry.phonemes), dtype=torch.long),
            features.mel,
            torch.from_numpy(self.normalizer.pitch(features.pitch.numpy(), features.voiced.numpy())),
            torch.from_numpy(self.normalizer.energy(features.energy.numpy())),
        )
        size = sum(t.numel() * t.element_size() for t in item)
        if self.cached_bytes + size <= self.cache_bytes:
            self.cache[utt_id] = item
            self.cached_bytes += size
        return item

    def durations(self, ids: list[str]) -> torch.Tensor | None:
        """[B, L] frames per phoneme from the manifest (0 at padding), or None when the store has none."""
        given = [self.store.by_id[i].durations for i in ids]
        if all(d is None for d in given):
            return None
        if any(d is None for d in given):
            missing = [i for i, d in zip(ids, given) if d is None]
            raise ValueError(f"a batch mixes utterances with and without durations ({missing[:3]} have none): "
                             f"prepare the store again so that every utterance is aligned the same way")
        return pad_stack([torch.tensor(d, dtype=torch.long) for d in given])

    def __call__(self, ids: list[str], new_speaker: bool = False) -> Batch:
        """A batch of ``ids``; with ``new_speaker`` every sample uses the new-speaker slot (adaptation)."""
        items = [self.item(i) for i in ids]
        speakers = [NEW_SPEAKER if new_speaker else self.rows.get(self.store.by_id[i].speaker, NEW_SPEAKER)
                    for i in ids]
        return Batch(
            phonemes=pad_stack([p for p, _, _, _ in items]),
            phoneme_lengths=torch.tensor([len(p) for p, _, _, _ in items]),
            mels=pad_stack([m for _, m, _, _ in items], value=float(np.log(1e-5))),
            mel_lengths=torch.tensor([m.shape[-1] for _, m, _, _ in items]),
            pitch=pad_stack([f for _, _, f, _ in items]),
            energy=pad_stack([e for _, _, _, e in items]),
            speakers=torch.tensor(speakers, dtype=torch.long),
            durations=self.durations(ids),
        )


def aligned_batch(model: torch.nn.Module, collator: Collator, ids: list[str] | tuple[str, ...],
                  device: torch.device) -> Batch:
    """Utterances on the new-speaker slot with the model's aligner durations attached: computed once here, without
    a graph, so neither MAS nor the aligner runs inside an inner loop (meta-training, evaluation)."""
    batch = collator(list(ids), new_speaker=True).to(device)
    return batch.with_durations(model.alignment(batch).durations)
