"""Durations from Montreal Forced Aligner TextGrids, for corpora that already have alignments.

Praat writes TextGrids in a long ("key = value") and a short (values only) text format; both carry the same
sequence of values, so the reader scans for the values (quoted strings, numbers, ``<exists>``) and ignores keys.
Phone intervals become frame counts by rounding their boundaries to frames, which keeps the total equal to the
utterance's mel length (the last boundary is pinned to it) and gives every phone at least one frame when there
are enough frames -- matching what the built-in aligner produces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SILENCE_PHONES = frozenset({"", "sil", "sp", "spn", "<eps>"})  # MFA's empty/silence/spoken-noise labels

_TOKEN = re.compile(r'"(?:[^"]|"")*"|<exists>|<absent>|\[[^\]"\n]*\]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?')


class TextGridError(ValueError):
    """A TextGrid could not be read or does not fit the utterance; the message says where and why."""


@dataclass(frozen=True)
class Interval:
    start: float  # seconds
    end: float  # seconds
    text: str


@dataclass(frozen=True)
class Tier:
    name: str
    intervals: tuple[Interval, ...]


@dataclass(frozen=True)
class PhoneDurations:
    """Phones of an utterance and their frame counts (``durations.sum()`` is the mel length)."""

    phones: list[str]
    durations: np.ndarray  # [n_phones] int64


class _Reader:
    """The value tokens of a TextGrid, each with its line number for error messages."""

    def __init__(self, text: str, source: str):
        self.source = source
        self.tokens: list[tuple[str, int]] = []
        line, last = 1, 0
        for match in _TOKEN.finditer(text):
            value = match.group(0)
            if value.startswith("["):  # "item [1]:", "intervals [3]:" are labels, not values
                continue
            line += text.count("\n", last, match.start())
            last = match.start()
            self.tokens.append((value, line))
        self.position = 0

    def _next(self, what: str) -> tuple[str, int]:
        if self.position >= len(self.tokens):
            raise TextGridError(f"{self.source}: file ends where {what} was expected")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def string(self, what: str) -> str:
        value, line = self._next(what)
        if not value.startswith('"'):
            raise TextGridError(f"{self.source}: line {line}: expected a quoted string for {what}, got {value}")
        return value[1:-1].replace('""', '"')

    def number(self, what: str) -> float:
        value, line = self._next(what)
        try:
            return float(value)
        except ValueError:
            raise TextGridError(f"{self.source}: line {line}: expected a number for {what}, got {value}") from None

    def count(self, what: str) -> int:
        value = self.number(what)
        if value != int(value) or value < 0:
            raise TextGridError(f"{self.source}: {what} must be a non-negative integer, got {value}")
        return int(value)


def parse_textgrid(text: str, source: str = "<string>") -> dict[str, Tier]:
    """Interval tiers of a TextGrid (long or short text format) by name. Point tiers are skipped."""
    text = text.lstrip("\ufeff")
    reader = _Reader(text, source)
    if not reader.tokens or reader.tokens[0][0] != '"ooTextFile"' or reader.string("the file type") != "ooTextFile":
        raise TextGridError(f"{source}: not a Praat text file (first value must be \"ooTextFile\")")
    if reader.string("the object class") != "TextGrid":
        raise TextGridError(f"{source}: not a TextGrid (object class must be \"TextGrid\")")
    reader.number("the grid's xmin")
    reader.number("the grid's xmax")
    flag, line = reader._next("<exists>")
    if flag != "<exists>":
        return {}  # "<absent>": a grid without tiers
    tiers: dict[str, Tier] = {}
    for index in range(reader.count("the number of tiers")):
        kind = reader.string(f"the class of tier {index + 1}")
        name = reader.string(f"the name of tier {index + 1}")
        reader.number(f"xmin of tier {name!r}")
        reader.number(f"xmax of tier {name!r}")
        size = reader.count(f"the size of tier {name!r}")
        if kind == "TextTier":
            for p in range(size):
                reader.number(f"the time of point {p + 1} of tier {name!r}")
                reader.string(f"the mark of point {p + 1} of tier {name!r}")
            continue
        if kind != "IntervalTier":
            raise TextGridError(f"{source}: tier {name!r} has unknown class {kind!r}")
        intervals = []
        for i in range(size):
            where = f"interval {i + 1} of tier {name!r}"
            start, end = reader.number(f"xmin of {where}"), reader.number(f"xmax of {where}")
            label = reader.string(f"the text of {where}")
            if end < start:
                raise TextGridError(f"{source}: {where} ends ({end}) before it starts ({start})")
            if intervals and abs(start - intervals[-1].end) > 1e-6:
                raise TextGridError(f"{source}: {where} starts at {start} but the previous one ends at "
                                    f"{intervals[-1].end}")
            intervals.append(Interval(start, end, label.strip()))
        tiers[name] = Tier(name, tuple(intervals))
    return tiers


def read_textgrid(path: str | Path) -> dict[str, Tier]:
    """Parse a TextGrid file (UTF-8, or UTF-16 with a byte-order mark as Praat sometimes writes)."""
    raw = Path(path).read_bytes()
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise TextGridError(f"{path}: not readable as {encoding}: {error}") from None
    return parse_textgrid(text, str(path))


def phone_durations(tiers: dict[str, Tier], sample_rate: int, hop_length: int, n_frames: int, *,
                    tier: str = "phones", start_seconds: float = 0.0, silence_label: str | None = "sil",
                    tolerance_frames: int = 3, source: str = "<textgrid>") -> PhoneDurations:
    """Frame counts of the phones of ``tier`` for an utterance of ``n_frames`` mel frames.

    ``start_seconds`` is where the utterance's audio begins in the TextGrid's timeline (e.g. the amount of leading
    silence trimmed before feature extraction); intervals are cut to [start, start + n_frames * hop / sr].
    Silence intervals (empty, "sil", "sp", "spn") become ``silence_label`` (adjacent ones merged), or are dropped
    and their frames given to the neighbouring phones when ``silence_label`` is None.
    Raises ``TextGridError`` when the tier is missing or the aligned span differs from the audio by more than
    ``tolerance_frames`` (a wrong sample rate or hop, or a TextGrid of another file).
    """
    if tier not in tiers:
        raise TextGridError(f"{source}: no interval tier named {tier!r} (tiers: {', '.join(tiers) or 'none'})")
    frame_rate = sample_rate / hop_length
    end_seconds = start_seconds + n_frames / frame_rate
    phones: list[str] = []
    bounds: list[float] = []  # end time of each kept phone
    covered = start_seconds  # end of the last interval inside the kept audio, whatever its label
    for interval in tiers[tier].intervals:
        start, end = max(interval.start, start_seconds), min(interval.end, end_seconds)
        if end <= start:
            continue  # entirely outside the kept audio
        covered = end
        label = interval.text
        if label.lower() in SILENCE_PHONES:
            if silence_label is None:
                continue  # frames are absorbed by the neighbours below
            label = silence_label
            if phones and phones[-1] == silence_label:
                bounds[-1] = end  # merge adjacent silences
                continue
        phones.append(label)
        bounds.append(end)
    if not phones:
        raise TextGridError(f"{source}: tier {tier!r} has no phones inside the utterance")
    aligned_end = (covered - start_seconds) * frame_rate
    if abs(aligned_end - n_frames) > tolerance_frames:
        raise TextGridError(f"{source}: tier {tier!r} covers {aligned_end:.1f} frames but the utterance has "
                            f"{n_frames} (check sample_rate={sample_rate}, hop_length={hop_length}, start_seconds)")
    edges = np.round((np.asarray(bounds) - start_seconds) * frame_rate).astype(np.int64)
    edges[-1] = n_frames  # pin the last boundary: the durations sum to the mel length exactly
    edges = np.concatenate([[0], edges])
    if n_frames >= len(phones):
        # Nudge boundaries so every phone keeps at least one frame (rounding can empty phones shorter than a hop):
        # forward pass pushes each boundary past its predecessor, backward pass keeps room for the phones after it.
        for i in range(1, len(edges)):
            edges[i] = max(edges[i], edges[i - 1] + 1)
        edges[-1] = n_frames
        for i in range(len(edges) - 2, 0, -1):
            edges[i] = min(edges[i], edges[i + 1] - 1)
    else:
        edges = np.maximum.accumulate(np.clip(edges, 0, n_frames))
    return PhoneDurations(phones=phones, durations=np.diff(edges).astype(np.int64))


def textgrid_durations(path: str | Path, sample_rate: int, hop_length: int, n_frames: int, **options) -> PhoneDurations:
    """``phone_durations`` of the TextGrid file at ``path`` (options as there)."""
    return phone_durations(read_textgrid(path), sample_rate, hop_length, n_frames, source=str(path), **options)
