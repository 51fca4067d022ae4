"""Which utterances go together: length-bucketed training batches and few-shot episodes.

Both samplers are pure functions of (seed, position): no global RNG, no hidden iterator state. So a resumed run
asks for batch ``step`` and gets the batch an uninterrupted run would have used, and ranks of a distributed run
draw different tasks by offsetting the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from metatts.features.store import ManifestEntry


@dataclass(frozen=True)
class Episode:
    """One few-shot task: a speaker, N support and Q query utterances (disjoint)."""

    speaker: str
    support: tuple[str, ...]
    query: tuple[str, ...]


class BatchSampler:
    """Training batches over ``entries``, grouped by length so padding stays small, reshuffled every epoch.

    ``batch(step)`` is deterministic in (seed, step): an epoch is a seeded shuffle of length-sorted buckets.
    """

    def __init__(self, entries: list[ManifestEntry], batch_size: int, seed: int, bucket_batches: int = 8):
        if not entries:
            raise ValueError("no utterances to sample batches from")
        self.ids = [e.id for e in entries]
        self.frames = {e.id: e.frames for e in entries}
        self.batch_size = min(batch_size, len(entries))
        self.seed = seed
        self.bucket = self.batch_size * bucket_batches
        self.per_epoch = max(len(entries) // self.batch_size, 1)
        self._epoch_cache: tuple[int, list[list[str]]] | None = None

    def _epoch(self, epoch: int) -> list[list[str]]:
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = random.Random(f"{self.seed}:{epoch}")
        ids = sorted(self.ids)
        rng.shuffle(ids)
        batches = []
        # Within a bucket of a few batches, sort by length so each batch holds similar lengths.
        for start in range(0, len(ids), self.bucket):
            bucket = sorted(ids[start:start + self.bucket], key=lambda i: self.frames[i])
            for b in range(0, len(bucket) - self.batch_size + 1, self.batch_size):
                batches.append(bucket[b:b + self.batch_size])
        rng.shuffle(batches)
        self._epoch_cache = (epoch, batches)
        return batches

    def batch(self, step: int, rank: int = 0, world: int = 1) -> list[str]:
        """Batch ``step``; with ``world`` processes, rank ``rank``'s share of it: every ``world``-th utterance, so the
        shares of a length-sorted batch have similar lengths. Build the sampler with the global batch size (per-process
        size x world) and the ranks together cover exactly the batch one process would take."""
        batches = self._epoch(step // self.per_epoch)
        return batches[step % len(batches)][rank::world]


class EpisodeSampler:
    """Few-shot episodes from the utterances of a speaker list.

    Speakers with fewer than ``shots + queries`` usable utterances cannot give an episode: they are left out and
    listed in ``excluded`` (with the count), so a caller can log them.
    """

    def __init__(self, by_speaker: dict[str, list[str]], shots: int, queries: int, seed: int):
        need = shots + queries
        self.shots, self.queries, self.seed = shots, queries, seed
        self.pool = {s: sorted(ids) for s, ids in sorted(by_speaker.items()) if len(ids) >= need}
        self.excluded = {s: len(ids) for s, ids in sorted(by_speaker.items()) if len(ids) < need}
        self.speakers = sorted(self.pool)

    def episode(self, speaker: str, index: int) -> Episode:
        """Episode ``index`` of ``speaker``: a seeded draw, the same every time it is asked for."""
        rng = random.Random(f"{self.seed}:{speaker}:{index}")
        chosen = rng.sample(self.pool[speaker], self.shots + self.queries)
        return Episode(speaker, tuple(chosen[:self.shots]), tuple(chosen[self.shots:]))

    def meta_batch(self, step: int, size: int, rank: int = 0, world: int = 1) -> list[Episode]:
        """The ``size`` tasks of meta-step ``step`` (distinct speakers when there are enough); a rank takes its
        share, so ranks together cover exactly the tasks one process would."""
        if size > len(self.speakers):
            raise ValueError(f"meta-batch of {size} tasks but only {len(self.speakers)} speakers have "
                             f"{self.shots + self.queries} usable utterances")
        rng = random.Random(f"{self.seed}:step:{step}")
        speakers = rng.sample(self.speakers, size)
        episodes = [self.episode(s, step) for s in speakers]
        return episodes[rank::world]
