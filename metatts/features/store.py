"""The feature store: one safetensors file per utterance, plus a manifest, statistics and the symbol table.

Why per-utterance files rather than one memory-mapped array: ``prepare`` runs in several processes that each
write their own files with no locking; a re-run skips finished files one by one; an interrupted run loses at
most the files being written (each is written to a temporary name and renamed, which is atomic on POSIX); and
safetensors files are memory-mapped on read, so loading an episode touches only its utterances.

Layout of ``<root>``::

    utts/<speaker>/<utt id>.safetensors   mel [n_mels, T] f32, pitch [T] f32 (Hz, 0 unvoiced), voiced [T] u8,
                                           energy [T] f32; metadata: cache key, frames, seconds, log-F0/energy sums,
                                           seconds of leading audio trimmed
    manifest.jsonl                         one line per usable utterance (id, speaker, text, phonemes, frames, ...;
                                           frames per phoneme when the store was prepared from TextGrids)
    stats.json                             global and per-speaker log-F0 / energy mean and std
    symbols.json                           the phoneme symbol table
    report.json                            what was skipped and why, counts, timings
    config.yaml                            the resolved config that produced the store
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

# Bump when the content of feature files changes for the same audio and config: every file is re-extracted.
# 2: the metadata holds the trimmed leading seconds (TextGrid times are shifted by it).
FEATURE_VERSION = 2


class StoreError(ValueError):
    """The feature store is missing, incomplete or from another configuration."""


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hash of a file's bytes, so edited or replaced audio is re-extracted even when its name is unchanged."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(audio_digest: str, audio_config: dict) -> str:
    """Key of a feature file: audio content + every audio/feature setting + the feature format version."""
    blob = json.dumps({"audio": audio_digest, "config": audio_config, "version": FEATURE_VERSION}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write text so that a reader sees either the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Moments:
    """Running sums for a mean and standard deviation, mergeable across utterances and processes."""

    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> "Moments":
        values = np.asarray(values, dtype=np.float64)
        return cls(float(values.size), float(values.sum()), float(np.square(values).sum()))

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.total + other.total, self.squares + other.squares)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def std(self) -> float:
        if self.n < 2:
            return 1.0
        variance = max(self.squares / self.n - self.mean**2, 0.0)
        return math.sqrt(variance) or 1.0


@dataclass
class UtteranceFeatures:
    """What the store holds for one utterance (arrays as torch tensors)."""

    mel: torch.Tensor  # [n_mels, T] natural-log mel
    pitch: torch.Tensor  # [T] Hz, 0 where unvoiced
    voiced: torch.Tensor  # [T] bool
    energy: torch.Tensor  # [T] L2 norm of the STFT magnitude


@dataclass
class FileSummary:
    """Metadata stored in each feature file, enough to build the manifest and statistics without the arrays."""

    key: str
    frames: int
    seconds: float
    log_f0: Moments
    energy: Moments
    trim_start_seconds: float  # leading audio trimmed before the features: where frame 0 starts in the file

    def to_metadata(self) -> dict[str, str]:
        return {
            "key": self.key,
            "frames": str(self.frames),
            "seconds": repr(self.seconds),
            "log_f0": json.dumps(dataclasses.astuple(self.log_f0)),
            "energy": json.dumps(dataclasses.astuple(self.energy)),
            "trim_start_seconds": repr(self.trim_start_seconds),
            "version": str(FEATURE_VERSION),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "FileSummary":
        return cls(
            key=meta["key"],
            frames=int(meta["frames"]),
            seconds=float(meta["seconds"]),
            log_f0=Moments(*json.loads(meta["log_f0"])),
            energy=Moments(*json.loads(meta["energy"])),
            trim_start_seconds=float(meta["trim_start_seconds"]),  # absent in an older file: re-extracted
        )


def feature_path(root: Path, speaker: str, utt_id: str) -> Path:
    return Path(root) / "utts" / _safe(speaker) / f"{_safe(utt_id)}.safetensors"


def _safe(name: str) -> str:
    # Speaker and utterance ids come from user corpora; keep them from escaping the store.
    return name.replace(os.sep, "_").replace("..", "_") or "_"


def write_features(path: Path, features: UtteranceFeatures, summary: FileSummary) -> None:
    """Write one utterance's features atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {
        "mel": features.mel.contiguous().float(),
        "pitch": features.pitch.contiguous().float(),
        "voiced": features.voiced.contiguous().to(torch.uint8),
        "energy": features.energy.contiguous().float(),
    }
    save_file(tensors, str(tmp), metadata=summary.to_metadata())
    os.replace(tmp, path)


def read_summary(path: Path) -> FileSummary | None:
    """The summary of a finished feature file, or None when the file is absent or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        return FileSummary.from_metadata(meta)
    except (OSError, KeyError, ValueError, json.JSONDecodeError, Exception):  # noqa: BLE001 - any bad file = absent
        return None


def read_features(path: Path) -> UtteranceFeatures:
    with safe_open(str(path), framework="pt") as handle:
        return UtteranceFeatures(
            mel=handle.get_tensor("mel"),
            pitch=handle.get_tensor("pitch"),
            voiced=handle.get_tensor("voiced").bool(),
            energy=handle.get_tensor("energy"),
        )


@dataclass
class ManifestEntry:
    """One usable utterance in the store."""

    id: str
    speaker: str
    text: str
    phonemes: list[str]
    frames: int
    seconds: float
    path: str  # relative to the store root
    audio_path: str
    corpus: str
    durations: list[int] | None = None  # frames per phoneme (sum = frames) from a TextGrid; None: built-in aligner


@dataclass
class SpeakerStats:
    log_f0_mean: float
    log_f0_std: float
    energy_mean: float
    energy_std: float
    utterances: int


class FeatureStore:
    """Read access to a prepared feature store."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / "manifest.jsonl"
        if not manifest.is_file():
            raise StoreError(f"{self.root} is not a prepared feature store (no manifest.jsonl): run `metatts prepare`")
        self.entries = [ManifestEntry(**json.loads(line)) for line in manifest.read_text().splitlines() if line]
        self.by_id = {entry.id: entry for entry in self.entries}
        stats = json.loads((self.root / "stats.json").read_text())
        self.global_stats = SpeakerStats(**stats["global"])
        self.speaker_stats = {name: SpeakerStats(**value) for name, value in stats["speakers"].items()}
        self.symbols_json = (self.root / "symbols.json").read_text()

    def speakers(self) -> dict[str, list[ManifestEntry]]:
        grouped: dict[str, list[ManifestEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.speaker, []).append(entry)
        return grouped

    def load(self, utt_id: str) -> UtteranceFeatures:
        return read_features(self.root / self.by_id[utt_id].path)

    def __len__(self) -> int:
        return len(self.entries)
