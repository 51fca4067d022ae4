"""A new speaker's clips and transcripts → model-ready features, through the same pipeline as training data.

    clips (files, or folders of wav/flac/ogg)  +  transcripts (given texts, a TSV file, a folder of <stem>.txt,
                                                   or sidecar <clip>.txt files next to the audio)
      text:  normalize_text → Phonemizer (the checkpoint's text config) → ids in the checkpoint's symbol table
      audio: FeatureExtractor (the checkpoint's audio config: resample, trim, length limits, loudness, mel, pitch,
             energy) → pitch and energy z-scored with the checkpoint's global statistics
      → ClipSet: usable clips (``ClipSet.batch()`` is one Batch on the new-speaker slot) + skipped clips with reasons

Nothing here is specific to a corpus layout, and nothing is written to disk. Text is checked before audio, so a
clip without a usable transcript costs no feature extraction. A clip is skipped, with a reason, when its audio is
unreadable, silent, too short or too long, when it has no transcript, when the transcript has nothing
pronounceable, when its phonemes are unknown to the checkpoint's table (or, with ``unknown="unk"``, they are
mapped to ``<unk>`` and the clip records which), or when it has fewer frames than phonemes. No usable clip at all
is a :class:`ClipError` that lists every reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metatts.config.schema import AudioConfig, TextConfig
from metatts.corpus.readers import LIBRITTS_TEXT
from metatts.corpus.utterance import Skipped
from metatts.episodes.collate import Normalizer, pad_stack
from metatts.features.audio import AudioError
from metatts.features.extract import FeatureExtractor
from metatts.model.batch import NEW_SPEAKER, Batch
from metatts.text.normalize import normalize_text
from metatts.text.phonemes import Phonemizer
from metatts.text.symbols import SymbolTable

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Files a shell glob such as `clips/*` brings along with the audio; never audio themselves, so silently ignored.
_TEXT_SUFFIXES = (".txt", ".lab", ".tsv", ".csv", ".json", ".md")
UNKNOWN_POLICIES = ("skip", "unk")

ClipSource = str | os.PathLike
Texts = Sequence[str] | Mapping[str, str] | None


class ClipError(ValueError):
    """No usable clip, no clip found, or a transcripts file that cannot be read."""


@dataclass
class Clip:
    """One usable clip: its transcript, phonemes and frame features (pitch and energy already normalized)."""

    name: str  # file name
    path: str
    text: str  # normalized transcript
    phonemes: list[str]
    phoneme_ids: Tensor  # [L] long, ids in the checkpoint's table
    mel: Tensor  # [n_mels, T] log-mel
    pitch: Tensor  # [T] z-scored log-F0 (unvoiced frames interpolated)
    energy: Tensor  # [T] z-scored energy
    seconds: float  # length of the conditioned (trimmed) audio
    unknown: list[str] = field(default_factory=list)  # symbols mapped to <unk> (only with unknown="unk")

    @property
    def frames(self) -> int:
        return int(self.mel.shape[-1])


@dataclass
class ClipSet:
    """The usable clips of a new speaker and what was skipped. ``seconds``: wall time of reading them (text and
    feature extraction); ``timings``: seconds per extraction stage."""

    clips: list[Clip]
    skipped: list[Skipped]
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def audio_seconds(self) -> float:
        return sum(c.seconds for c in self.clips)

    def batch(self, indices: Sequence[int] | None = None) -> Batch:
        """The usable clips (all, or those at ``indices``) as one padded batch on the new-speaker slot, without
        durations."""
        if not self.clips:
            raise ClipError(no_usable_message(self.skipped))
        clips = self.clips if indices is None else [self.clips[i] for i in indices]
        return Batch(
            phonemes=pad_stack([c.phoneme_ids for c in clips]),
            phoneme_lengths=torch.tensor([len(c.phoneme_ids) for c in clips]),
            mels=pad_stack([c.mel for c in clips], value=float(np.log(1e-5))),  # as the training collator
            mel_lengths=torch.tensor([c.frames for c in clips]),
            pitch=pad_stack([c.pitch for c in clips]),
            energy=pad_stack([c.energy for c in clips]),
            speakers=torch.full((len(clips),), NEW_SPEAKER, dtype=torch.long),
        )

    def report(self) -> list[str]:
        """Human-readable lines: each clip used and each clip skipped with its reason."""
        lines = [f"clips used: {len(self.clips)} ({self.audio_seconds:.1f} s of speech)"]
        for c in self.clips:
            note = f"; {', '.join(c.unknown)} read as <unk>" if c.unknown else ""
            lines.append(f"  {c.name}  {c.seconds:.2f} s  {len(c.phonemes)} phonemes  {c.text[:50]!r}{note}")
        if self.skipped:
            lines.append(f"clips skipped: {len(self.skipped)}")
            lines.extend(f"  {Path(s.path).name or s.id}: {s.reason}" for s in self.skipped)
        return lines


def no_usable_message(skipped: Sequence[Skipped]) -> str:
    if not skipped:
        return "no usable clip: no clip was given"
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append(Path(s.path).name or s.id)
    parts = []
    for reason, names in list(by_reason.items())[:6]:
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        parts.append(f"{', '.join(names[:3])}{more}: {reason}")
    if len(by_reason) > 6:
        parts.append(f"and {len(by_reason) - 6} other reasons")
    return f"no usable clip among {len(skipped)}: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------ finding clips
def find_clip_files(sources: ClipSource | Sequence[ClipSource]) -> tuple[list[Path], list[Skipped]]:
    """Audio files named by ``sources`` (files, or folders whose wav/flac/ogg files are taken, not recursively),
    in the order given (a folder's files sorted by name), without repeats. Paths that do not exist, and other files
    in a folder (an .mp3, a .png), come back as skipped with the reason; text files (transcripts beside the clips,
    or sidecars a shell glob picked up) and hidden files are ignored."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: dict[Path, None] = {}
    missing: list[Skipped] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if not child.is_file() or child.name.startswith("."):
                    continue
                if child.suffix.lower() in AUDIO_SUFFIXES:
                    files[child] = None
                elif child.suffix.lower() not in _TEXT_SUFFIXES:  # transcripts beside the clips are expected
                    missing.append(Skipped(child.stem, str(child), "audio",
                                           f"not a supported audio file ({child.suffix or 'no extension'}; clips "
                                           f"are read from {', '.join(AUDIO_SUFFIXES)} files)"))
        elif path.is_file():
            if path.suffix.lower() not in _TEXT_SUFFIXES:
                files[path] = None
        else:
            missing.append(Skipped(path.name, str(path), "audio", "file not found"))
    return list(files), missing


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """Transcripts by clip name from a TSV file (``clip_name<TAB>text`` per line; blank lines and ``#`` comments
    ignored; the name may be the file name, its stem or a path) or a folder of ``<stem>.txt`` files."""
    path = Path(path)
    if path.is_dir():
        # <stem>.txt, or LibriTTS's <utt>.normalized.txt (preferred) / <utt>.original.txt, keyed by the clip stem.
        table: dict[str, str] = {}
        for suffix in (*LIBRITTS_TEXT, ".txt"):
            for file in sorted(path.glob(f"*{suffix}")):
                if suffix == ".txt" and file.name.endswith(LIBRITTS_TEXT):
                    continue  # taken above under its clip's stem
                if file.is_file() and file.name != suffix:
                    table.setdefault(file.name[:-len(suffix)], _read_text_file(file))
        return table
    if not path.is_file():
        raise ClipError(f"transcripts file {path} does not exist")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ClipError(f"transcripts file {path} is not UTF-8 text ({error})") from error
    out: dict[str, str] = {}
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" not in line:
            raise ClipError(f"{path}:{number}: expected clip_name<TAB>text, got {line[:60]!r}")
        name, text = line.split("\t", 1)
        name = name.strip()
        if name in out and out[name] != text.strip():
            raise ClipError(f"{path}:{number}: a second, different transcript for {name!r}")
        out[name] = text.strip()
    if not out:
        raise ClipError(f"transcripts file {path} holds no clip_name<TAB>text line")
    return out


def _lookup(table: Mapping[str, str], file: Path) -> str | None:
    for key in (str(file), file.name, file.stem):
        if key in table:
            return table[key]
    return None


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as error:
        raise ClipError(f"transcript {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ClipError(f"transcript {path}: cannot read it ({error.strerror or error})") from None


def sidecar_names(file: Path) -> list[Path]:
    """Where a clip's transcript may sit beside it: ``<stem>.txt``, ``<name>.txt``, and the corpus readers'
    conventions (LibriTTS ``<utt>.normalized.txt``, else ``<utt>.original.txt``)."""
    return [file.with_suffix(".txt"), file.with_name(file.name + ".txt"),
            *(file.with_name(file.stem + suffix) for suffix in LIBRITTS_TEXT)]


def _sidecar(file: Path) -> str | None:
    found = None
    for candidate in sidecar_names(file):
        if candidate.is_file():
            found = _read_text_file(candidate)
            if found:  # an empty normalized transcript falls back to the original one, as the LibriTTS reader does
                return found
    return found  # "" when only empty transcripts exist (reported as empty), None when there is none


def _transcripts_for(files: list[Path], texts: Texts, transcripts: str | os.PathLike | None
                     ) -> tuple[dict[Path, str], dict[Path, str]]:
    """(text per file, skip reason per file without one)."""
    if texts is not None and transcripts is not None:
        raise ClipError("give the transcripts as texts or as a transcripts file, not both")
    table = dict(texts) if texts is not None else (read_transcripts(transcripts) if transcripts is not None else {})
    found, missing = {}, {}
    for file in files:
        text = _lookup(table, file) if table else None
        if text is None and texts is None:  # sidecars complement a transcripts file, never given texts
            text = _sidecar(file)
        if text is None:
            missing[file] = ("no transcript (not among the given texts)" if texts is not None else
                             f"no transcript (no line for it in {transcripts}, no .txt file beside it)"
                             if transcripts is not None else
                             "no transcript (no .txt or .normalized.txt file of the same name beside it, and no "
                             "transcripts given)")
        else:
            found[file] = text
    return found, missing


# ------------------------------------------------------------------------------------------------ the reader
class ClipReader:
    """Turns clips + transcripts into a :class:`ClipSet` under one checkpoint's audio and text settings, symbol
    table and normalization statistics. Build once and reuse: it owns a phonemizer and a feature extractor.

    ``unknown``: what to do with a clip whose phonemes the table lacks -- ``"skip"`` it (default: the ids of
    such symbols were never trained) or map them to ``<unk>`` (``"unk"``), recorded in ``Clip.unknown``.
    """

    def __init__(self, audio: AudioConfig, text: TextConfig, symbols: SymbolTable, normalizer: Normalizer,
                 unknown: str = "skip"):
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        self.audio, self.text_config, self.symbols, self.normalizer = audio, text, symbols, normalizer
        self.unknown = unknown
        self.extractor = FeatureExtractor(audio)
        self._phonemizer: Phonemizer | None = None

    @classmethod
    def from_meta(cls, meta, unknown: str = "skip") -> "ClipReader":
        """A reader for a checkpoint's ``CheckpointMeta``."""
        from metatts.config import config_from_dict

        config = config_from_dict(meta.config)
        return cls(config.audio, config.text, SymbolTable.from_json(meta.symbols), Normalizer.from_dict(meta.stats),
                   unknown)

    @property
    def phonemizer(self) -> Phonemizer:
        if self._phonemizer is None:
            self._phonemizer = Phonemizer(self.text_config, normalize=False)  # texts arrive normalized
        return self._phonemizer

    def read(self, clips: ClipSource | Sequence[ClipSource], texts: Texts = None, *,
             transcripts: str | os.PathLike | None = None, require: bool = True) -> ClipSet:
        """Read ``clips`` (files or folders). Transcripts come from ``texts`` (one per clip in order, or a mapping
        from file name / stem / path to text), else from ``transcripts`` (TSV file or folder of ``<stem>.txt``)
        completed by sidecar ``<clip>.txt`` files. With ``require`` (default) no usable clip raises ClipError."""
        start = time.perf_counter()
        if texts is not None and not isinstance(texts, Mapping):
            texts = _texts_by_path(clips, texts)
        files, skipped = find_clip_files(clips)
        if not files and not skipped:
            raise ClipError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {_describe(clips)}")
        found, missing = _transcripts_for(files, texts, transcripts)
        for file, reason in missing.items():
            skipped.append(Skipped(file.stem, str(file), "text", reason))

        # Text first, for all clips in one phonemizer call; audio only for clips whose text is usable.
        order = [f for f in files if f in found]
        normalized = [normalize_text(found[f]) for f in order]
        phonemes = self.phonemizer.phonemize(normalized) if order else []
        timings: dict[str, float] = {}
        usable: list[Clip] = []
        for file, text, symbols in zip(order, normalized, phonemes):
            if not text.strip():
                skipped.append(Skipped(file.stem, str(file), "text", "transcript is empty after normalization"))
                continue
            if not symbols:
                skipped.append(Skipped(file.stem, str(file), "text", f"nothing pronounceable in {found[file]!r}"))
                continue
            unknown = self.symbols.missing(symbols)
            if unknown and self.unknown == "skip":
                skipped.append(Skipped(file.stem, str(file), "text",
                                       f"phonemes unknown to the checkpoint's symbol table: {' '.join(unknown)} "
                                       f"(map them to <unk> with unknown='unk' / --unknown unk)"))
                continue
            try:
                features = self.extractor.from_file(file, timings=timings)
            except AudioError as error:
                skipped.append(Skipped(file.stem, str(file), "audio", error.reason))
                continue
            except Exception as error:  # noqa: BLE001 - any failure on one clip is that clip's skip reason
                skipped.append(Skipped(file.stem, str(file), "audio", f"{type(error).__name__}: {error}"))
                continue
            if features.n_frames < len(symbols):
                skipped.append(Skipped(file.stem, str(file), "audio",
                                       f"{features.n_frames} frames for {len(symbols)} phonemes: the audio is too "
                                       f"short for its transcript (wrong transcript?)"))
                continue
            usable.append(Clip(
                name=file.name, path=str(file), text=text, phonemes=symbols,
                phoneme_ids=torch.tensor(self.symbols.encode(symbols), dtype=torch.long),
                mel=torch.from_numpy(np.ascontiguousarray(features.mel)),
                pitch=torch.from_numpy(self.normalizer.pitch(features.pitch, features.voiced)),
                energy=torch.from_numpy(self.normalizer.energy(features.energy)),
                seconds=features.duration_seconds, unknown=unknown))
        result = ClipSet(clips=usable, skipped=skipped, seconds=time.perf_counter() - start, timings=timings)
        if require and not usable:
            raise ClipError(no_usable_message(skipped))
        return result


def _texts_by_path(clips: ClipSource | Sequence[ClipSource], texts: Sequence[str]) -> dict[str, str]:
    """One text per clip file, in order -> a mapping keyed by the files' paths."""
    sources = [clips] if isinstance(clips, (str, os.PathLike)) else list(clips)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if any(Path(s).is_dir() for s in sources):
        raise ClipError("texts given as a list need one clip file per text; for a folder give a mapping of clip "
                        "name to text, a transcripts file or sidecar .txt files")
    if len(texts) != len(sources):
        raise ClipError(f"{len(texts)} texts for {len(sources)} clips: give one text per clip, in order")
    return {str(Path(s)): t for s, t in zip(sources, texts)}


def _describe(clips) -> str:
    if isinstance(clips, (str, os.PathLike)):
        return str(clips)
    names = [str(c) for c in clips]
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "") if names else "(nothing)"


def read_clips(meta, clips: ClipSource | Sequence[ClipSource], texts: Texts = None, *,
               transcripts: str | os.PathLike | None = None, unknown: str = "skip") -> ClipSet:
    """One-shot :meth:`ClipReader.read` for a checkpoint's ``CheckpointMeta``."""
    return ClipReader.from_meta(meta, unknown).read(clips, texts, transcripts=transcripts)
