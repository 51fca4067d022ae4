"""What an evaluation has already computed, on disk: one method's scores on one episode, and one tuning score.

An evaluation of 16 speakers × 2 episodes × 5 methods × 8 step counts through HiFi-GAN takes an hour on two CPU
cores; it must survive being stopped, and a user who adds a method (or splits the methods over two processes that
share the output folder) should not pay again for the ones already done. Each entry is keyed by everything its
numbers depend on: the method's name, checkpoint digest, setting and adapted groups, the step grid, the vocoder,
the metrics scored, and the episode's utterance ids (or the tuning episodes). A changed checkpoint, setting or grid
is a different key, never a stale hit. Entries are written under a temporary name and renamed, so a killed run
leaves whole entries or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metatts.evaluation.stats import clean

VERSION = 1  # bump when what an entry means changes (a scorer computes differently)


@dataclass
class CachedEpisode:
    """One method on one episode: the scores and synthesized d-vectors at each step of the grid."""

    scores: list[dict[str, float]]
    embeddings: list[np.ndarray]  # per step: [Q, D]
    seconds: float
    unusable: int
    samples: dict[int, list[str]]  # step -> wav paths written for it (relative to nothing: as the run wrote them)


def cache_key(**parts) -> str:
    """A stable digest of the parts (JSON with sorted keys; anything else by its ``str``)."""
    text = json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class EpisodeCache:
    """Entries in ``folder`` (``None``: a cache that remembers nothing)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0

    def _path(self, key: str, suffix: str) -> Path:
        return self.folder / f"{key}{suffix}"

    def _write(self, path: Path, write: Callable[[Path], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}-{os.getpid()}{path.suffix}")
        write(tmp)
        os.replace(tmp, path)

    def episode(self, key: str) -> CachedEpisode | None:
        if self.folder is None:
            return None
        meta, vectors = self._path(key, ".json"), self._path(key, ".npz")
        if not (meta.is_file() and vectors.is_file()):
            return None
        try:
            record = json.loads(meta.read_text())
            with np.load(vectors, allow_pickle=False) as data:
                embeddings = [data[f"step{i}"] for i in range(len(record["scores"]))]
        except (OSError, ValueError, KeyError):  # a damaged entry is recomputed, never trusted
            return None
        self.hits += 1
        scores = [{k: float("nan") if v is None else float(v) for k, v in s.items()} for s in record["scores"]]
        return CachedEpisode(scores, embeddings, float(record["seconds"]), int(record["unusable"]),
                             {int(k): list(v) for k, v in record["samples"].items()})

    def save_episode(self, key: str, entry: CachedEpisode) -> None:
        if self.folder is None:
            return
        self._write(self._path(key, ".npz"), lambda tmp: np.savez(
            tmp, **{f"step{i}": np.asarray(e, dtype=np.float32) for i, e in enumerate(entry.embeddings)}))
        record = clean({"scores": entry.scores, "seconds": entry.seconds, "unusable": entry.unusable,
                        "samples": entry.samples})  # NaN -> null, step keys -> strings
        self._write(self._path(key, ".json"), lambda tmp: tmp.write_text(json.dumps(record)))

    def value(self, key: str, compute: Callable[[], float]) -> float:
        """A cached number (a tuning score), computed and stored when absent. NaN is stored as null."""
        if self.folder is not None:
            path = self._path(key, ".value.json")
            if path.is_file():
                try:
                    stored = json.loads(path.read_text())["value"]
                    self.hits += 1
                    return float("nan") if stored is None else float(stored)
                except (OSError, ValueError, KeyError):
                    pass
        value = compute()
        if self.folder is not None:
            self._write(self._path(key, ".value.json"), lambda tmp: tmp.write_text(json.dumps(clean({"value": value}))))
        return value


def episode_ids(episodes: Sequence) -> list:
    """The part of a key that names episodes: speaker, support and query ids."""
    return [[e.speaker, list(e.support), list(e.query)] for e in episodes]
