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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metatts.runtime.outputs import atomic_path, safe_name

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
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    # Speaker and utterance ids come from user corpora: data, never paths (safe_name keeps them inside the store).
    return Path(root) / "utts" / safe_name(speaker) / f"{safe_name(utt_id)}.safetensors"


def write_features(path: Path, features: UtteranceFeatures, summary: FileSummary) -> None:
    """Write one utterance's features atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "mel": features.mel.contiguous().float(),
        "pitch": features.pitch.contiguous().float(),
        "voiced": features.voiced.contiguous().to(torch.uint8),
        "energy": features.energy.contiguous().float(),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=summary.to_metadata())


def read_summary(path: Path) -> FileSummary | None:
    """The summary of a finished feature file, or None when the file is absent or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        return FileSummary.from_metadata(meta)
    except (OSError, KeyError, ValueError, json.JSONDecodeError, Exception):  # noqa: BLE001 - any bad file = absent
        return None


def read_features(path: Path) -> UtteranceFeatures:
    """One utterance's arrays; a missing, truncated or foreign file raises ``StoreError`` naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            features = UtteranceFeatures(
                mel=handle.get_tensor("mel"),
                pitch=handle.get_tensor("pitch"),
                voiced=handle.get_tensor("voiced").bool(),
                energy=handle.get_tensor("energy"),
            )
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError, a missing tensor: the file is unusable
        raise StoreError(f"{path}: damaged or missing feature file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'unreadable'}); re-run `metatts prepare`"
                         ) from None
    frames = features.mel.shape[-1] if features.mel.dim() == 2 else -1
    if frames < 0 or any(t.dim() != 1 or t.shape[0] != frames for t in (features.pitch, features.voiced,
                                                                        features.energy)):
        raise StoreError(f"{path}: feature arrays of inconsistent shapes; re-run `metatts prepare`")
    return features


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


# ---- readers: every file of a store is checked here, and any damage is one StoreError naming the file ---------

_ENTRY_TYPES = {"id": str, "speaker": str, "text": str, "phonemes": list, "frames": int, "seconds": (int, float),
                "path": str, "audio_path": str, "corpus": str}


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise StoreError(f"{path.parent} is not a complete feature store (no {path.name}): re-run `metatts prepare`")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise StoreError(f"{path}: unreadable ({error}); re-run `metatts prepare`") from None


def _entry(raw, source: str) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise StoreError(f"{source}: not a manifest entry (a JSON {type(raw).__name__})")
    unknown = sorted(set(raw) - set(_ENTRY_TYPES) - {"durations"})
    if unknown:
        raise StoreError(f"{source}: unknown field {unknown[0]!r}")
    for name, kind in _ENTRY_TYPES.items():
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise StoreError(f"{source}: field {name!r} is missing or of the wrong type ({str(value)[:40]!r})")
    entry = ManifestEntry(**raw)
    if not all(isinstance(p, str) for p in entry.phonemes) or not entry.phonemes:
        raise StoreError(f"{source}: phonemes must be a non-empty list of symbol strings")
    if entry.frames < 1:
        raise StoreError(f"{source}: frames must be positive, got {entry.frames}")
    if entry.durations is not None and (not isinstance(entry.durations, list) or len(entry.durations) !=
                                        len(entry.phonemes) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                                       and d >= 0 for d in entry.durations)
                                        or sum(entry.durations) != entry.frames):
        raise StoreError(f"{source}: durations must be one count >= 0 per phoneme summing to frames")
    parts = Path(entry.path).parts
    # The feature file's path is data from a file anyone may edit: it must stay inside the store's utts/ folder.
    if Path(entry.path).is_absolute() or not parts or parts[0] != "utts" or ".." in parts:
        raise StoreError(f"{source}: path {entry.path!r} is not a feature file inside the store (utts/...)")
    return entry


def read_manifest(path: Path) -> list[ManifestEntry]:
    """``manifest.jsonl``: one checked entry per line; ids unique."""
    entries, seen = [], set()
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as error:
            raise StoreError(f"{path}:{number}: not a JSON line ({error}); re-run `metatts prepare`") from None
        entry = _entry(raw, f"{path}:{number}")
        if entry.id in seen:
            raise StoreError(f"{path}:{number}: utterance id {entry.id!r} appears twice")
        seen.add(entry.id)
        entries.append(entry)
    return entries


def _speaker_stats(value, source: str) -> SpeakerStats:
    names = [f.name for f in dataclasses.fields(SpeakerStats)]
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        raise StoreError(f"{source}: expected the fields {', '.join(names)}")
    for name in names:
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise StoreError(f"{source}.{name}: expected a finite number, got {number!r}")
    return SpeakerStats(**value)


def read_stats(path: Path) -> tuple[SpeakerStats, dict[str, SpeakerStats]]:
    """``stats.json``: (global statistics, per-speaker statistics)."""
    try:
        stats = json.loads(_read_text(path))
    except ValueError as error:
        raise StoreError(f"{path}: not valid JSON ({error}); re-run `metatts prepare`") from None
    if not isinstance(stats, dict) or not isinstance(stats.get("speakers"), dict):
        raise StoreError(f"{path}: not a store's statistics (no global and speakers sections)")
    return (_speaker_stats(stats.get("global"), f"{path}: global"),
            {name: _speaker_stats(value, f"{path}: speakers.{name}") for name, value in stats["speakers"].items()})


class FeatureStore:
    """Read access to a prepared feature store; every file is checked when it is read (see the readers above)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / "manifest.jsonl"
        if not manifest.is_file():
            raise StoreError(f"{self.root} is not a prepared feature store (no manifest.jsonl): run `metatts prepare`")
        self.entries = read_manifest(manifest)
        self.by_id = {entry.id: entry for entry in self.entries}
        self.global_stats, self.speaker_stats = read_stats(self.root / "stats.json")
        self.symbols_json = _read_text(self.root / "symbols.json")
        try:
            table = json.loads(self.symbols_json)
        except ValueError as error:
            raise StoreError(f"{self.root / 'symbols.json'}: not valid JSON ({error})") from None
        if not isinstance(table, dict) or not isinstance(table.get("symbols"), list):
            raise StoreError(f"{self.root / 'symbols.json'}: not a symbol table")

    def speakers(self) -> dict[str, list[ManifestEntry]]:
        grouped: dict[str, list[ManifestEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.speaker, []).append(entry)
        return grouped

    def load(self, utt_id: str) -> UtteranceFeatures:
        return read_features(self.root / self.by_id[utt_id].path)

    def __len__(self) -> int:
        return len(self.entries)
