"""Corpus readers: a corpus on disk becomes ``Utterance`` records, and everything left out a ``Skipped`` record.

Layouts (``read_corpus(path, layout=...)``; ``detect_layout`` tries them in this order):

- ``kaldi``    ``wav.scp`` + ``text`` + ``utt2spk`` (or ``spk2utt``), in ``path`` or ``path/data``. Relative
               audio paths are resolved against the corpus folder (the parent of the data dir) first, then the
               data dir itself. Piped commands (``sox ... |``) and archive offsets (``x.ark:12``) are skipped.
               A ``segments`` file is refused: an ``Utterance`` is a whole file, not a span of one.
- ``vctk``     0.80: ``wav48/<spk>/<utt>.wav``; 0.92: ``wav48_silence_trimmed/<spk>/<utt>_<mic>.flac`` with the
               microphone chosen by ``vctk_mic``; both with ``txt/<spk>/<utt>.txt``. 0.92 wins if both exist.
- ``libritts`` ``<spk>/<chapter>/<utt>.wav`` + ``<utt>.normalized.txt`` (else ``<utt>.original.txt``), under
               ``path`` itself (one subset) or under subset folders of ``path`` (the LibriTTS folder).
               The speaker is the folder above the chapter.
- ``folder``   Either ``metadata.csv`` (LJSpeech style, audio in ``wavs/``) or ``<speaker>/<utt>.wav|.flac``
               with ``<utt>.txt`` beside it (files directly in ``path`` belong to one speaker named after the
               corpus). ``metadata.csv`` wins when present. Its columns, separated by ``|``:
                 * a first line naming the columns (``id|speaker|text``, ``id|text``, any order) decides;
                 * otherwise 2 columns are ``id|text``, single speaker named after the corpus;
                 * otherwise 3 columns are ``id|speaker|text`` when ``wavs/`` holds per-speaker folders, and
                   LJSpeech's ``id|text|normalized text`` (normalized text used) when it is flat.
               Audio is looked up at ``wavs/<speaker>/<id>.wav|.flac``, then ``wavs/<id>.wav|.flac``.
               In speaker folders, an utterance id is the file stem when it already starts with the speaker
               (``p225_001``), else ``<speaker>_<stem>``, so ``alice/001.wav`` and ``bob/001.wav`` do not collide.

Common rules: transcripts are UTF-8 (a BOM is tolerated) with whitespace runs collapsed to one space, because a
transcript is one line of text; a missing, unreadable or empty transcript, missing audio, or a repeated utterance
id (the first one in sorted path order is kept) becomes ``Skipped(stage="read")`` with a reason. ``.wav`` is
preferred over ``.flac`` when an utterance has both. Hidden files (``.DS_Store``, ``._x.wav``) are ignored.

Speed: LibriTTS has ~350k files, so directories are listed once with ``os.scandir`` and audio existence is
answered from those listings (``_DirCache``), never by one ``stat`` per file. Only transcripts are opened.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from metatts.corpus.utterance import Skipped, Utterance

LAYOUTS = ("kaldi", "vctk", "libritts", "folder")  # detection order: most specific marker first
AUDIO_EXTENSIONS = (".wav", ".flac")  # preference order when one utterance has both
VCTK_MICS = ("mic1", "mic2")

_LAYOUT_HINTS = {
    "kaldi": "wav.scp (in the folder or in data/)",
    "vctk": "txt/ beside wav48/ or wav48_silence_trimmed/",
    "libritts": "<speaker>/<chapter>/<utt>.normalized.txt, optionally under subset folders",
    "folder": "metadata.csv, or <speaker>/<utt>.wav|.flac with <utt>.txt",
}
LIBRITTS_TEXT = (".normalized.txt", ".original.txt")  # transcript beside <utt>.wav, in preference order
_LIBRITTS_TEXT = LIBRITTS_TEXT
_PROBE_WIDTH = 3  # directories looked into per level when detecting a layout, so detection stays instant


class CorpusError(ValueError):
    """A corpus path does not exist, matches no known layout, or is malformed as a whole."""


@dataclass
class CorpusScan:
    """What a reader found: utterances sorted by (speaker, id), and every item it left out with the reason."""

    layout: str
    name: str
    utterances: list[Utterance]
    skipped: list[Skipped]
    root: str = ""  # absolute path that was read

    def speakers(self) -> dict[str, int]:
        """Speaker id -> number of usable utterances, sorted by speaker."""
        return dict(sorted(Counter(u.speaker for u in self.utterances).items()))

    def by_speaker(self) -> dict[str, list[Utterance]]:
        """Speaker id -> that speaker's utterances (sorted by id)."""
        groups: dict[str, list[Utterance]] = {}
        for utt in self.utterances:
            groups.setdefault(utt.speaker, []).append(utt)
        return groups

    def summary(self) -> str:
        return (f"{self.name} ({self.layout} layout, {self.root}): {len(self.utterances)} utterances from "
                f"{len(self.speakers())} speakers, {len(self.skipped)} skipped")


# --------------------------------------------------------------------------------------------- small helpers


@dataclass
class _Listing:
    """Sorted names of one directory's visible sub-directories and files."""

    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _list(path: str) -> _Listing:
    listing = _Listing()
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                # is_dir() answers from the directory entry's type without a stat (except for symlinks).
                (listing.dirs if entry.is_dir() else listing.files).append(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return listing
    listing.dirs.sort()
    listing.files.sort()
    return listing


class _DirCache:
    """Answers "does this file exist?" from one listing per directory: a corpus of 100k files is a few hundred
    directory reads instead of 100k stats."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        parent, name = os.path.split(os.path.normpath(path))
        names = self._names.get(parent)
        if names is None:
            try:
                names = frozenset(os.listdir(parent))
            except OSError:
                names = frozenset()
            self._names[parent] = names
        return name in names


def _split_ext(name: str, extensions: tuple[str, ...]) -> tuple[str, str] | None:
    """(stem, extension) when ``name`` ends with one of ``extensions`` (case-insensitive), else None."""
    lower = name.lower()
    for ext in extensions:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    return None


class _BadTranscript(Exception):
    """A transcript file that cannot be used; the message is the reason recorded in ``Skipped``."""


def _clean(text: str) -> str:
    return " ".join(text.split())


def _read_transcript(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise _BadTranscript(f"cannot read transcript: {err.strerror or err}") from None
    try:
        return _clean(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _BadTranscript("transcript is not valid UTF-8") from None


def _read_lines(path: str) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, decoded line or None when it is not UTF-8) for each non-blank line: one bad line in
    a list file costs that line, not the corpus."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def _group_audio(directory: str, files: list[str], out: _Collector,
                 id_of: Callable[[str], str] = lambda stem: stem) -> dict[str, str]:
    """Stem -> file name of that stem's preferred audio file; other copies (x.flac beside x.wav) are skipped and
    recorded under the utterance id ``id_of(stem)``."""
    chosen: dict[str, tuple[int, str]] = {}
    for name in files:
        split = _split_ext(name, AUDIO_EXTENSIONS)
        if split is None:
            continue
        stem, ext = split
        rank = AUDIO_EXTENSIONS.index(ext)
        previous = chosen.get(stem)
        if previous is None or rank < previous[0]:
            if previous is not None:
                out.skip(id_of(stem), os.path.join(directory, previous[1]),
                         f"another audio file for the same utterance is preferred: {name}")
            chosen[stem] = (rank, name)
        else:
            out.skip(id_of(stem), os.path.join(directory, name),
                     f"another audio file for the same utterance is preferred: {previous[1]}")
    return {stem: name for stem, (_, name) in chosen.items()}


class _Collector:
    """Gathers utterances and skips; applies the rules every layout shares (empty text, duplicate ids)."""

    def __init__(self, corpus: str) -> None:
        self.corpus = corpus
        self._utterances: dict[str, Utterance] = {}
        self._source: dict[str, str] = {}
        self.skipped: list[Skipped] = []

    def skip(self, utt_id: str, path: str, reason: str) -> None:
        self.skipped.append(Skipped(id=utt_id, path=path, stage="read", reason=reason))

    def add(self, utt_id: str, speaker: str, text: str, audio_path: str, source: str) -> None:
        """``source`` is where the utterance was declared (transcript or list file), named in duplicate reasons."""
        if not text:
            self.skip(utt_id, source, "empty transcript")
        elif not speaker:
            self.skip(utt_id, source, "no speaker")
        elif utt_id in self._utterances:
            self.skip(utt_id, source, f"duplicate utterance id {utt_id!r}: kept the first one, from "
                                      f"{self._source[utt_id]}")
        else:
            self._utterances[utt_id] = Utterance(id=utt_id, speaker=speaker, text=text, audio_path=audio_path,
                                                 corpus=self.corpus)
            self._source[utt_id] = source

    def scan(self, layout: str, root: str) -> CorpusScan:
        utterances = sorted(self._utterances.values(), key=lambda u: (u.speaker, u.id))
        skipped = sorted(self.skipped, key=lambda s: (s.path, s.id, s.reason))
        return CorpusScan(layout=layout, name=self.corpus, utterances=utterances, skipped=skipped, root=root)


# --------------------------------------------------------------------------------------------------- kaldi


def _kaldi_data_dir(root: str) -> str | None:
    for candidate in (root, os.path.join(root, "data")):
        if os.path.isfile(os.path.join(candidate, "wav.scp")):
            return candidate
    return None


def _read_table(path: str, out: _Collector, key: str = "utterance id") -> dict[str, tuple[str, int]]:
    """Kaldi ``<key> <rest of line>`` table: key -> (rest, line number). Later repeats of a key are skipped."""
    table: dict[str, tuple[str, int]] = {}
    file_name = os.path.basename(path)
    for number, line in _read_lines(path):
        if line is None:
            out.skip(f"{file_name}:{number}", path, f"line {number} of {file_name} is not valid UTF-8")
            continue
        parts = line.strip().split(maxsplit=1)
        name, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        if name in table:
            out.skip(name, path, f"duplicate {key} {name!r} on line {number} of {file_name}: kept line "
                                 f"{table[name][1]}")
            continue
        table[name] = (rest, number)
    return table


def _read_kaldi(root: str, out: _Collector) -> None:
    data_dir = _kaldi_data_dir(root)
    if data_dir is None:
        raise CorpusError(f"{root}: not a Kaldi data dir: no wav.scp in it or in its data/ folder")
    if os.path.exists(os.path.join(data_dir, "segments")):
        raise CorpusError(f"{data_dir}/segments: Kaldi segments (utterances as time spans of longer recordings) "
                          f"are not supported; cut the segments into files first")
    text_path = os.path.join(data_dir, "text")
    if not os.path.isfile(text_path):
        raise CorpusError(f"{data_dir}: Kaldi data dir without a text file (transcripts)")
    wav_scp = os.path.join(data_dir, "wav.scp")
    wavs = _read_table(wav_scp, out)
    texts = _read_table(text_path, out)
    speakers = _kaldi_speakers(data_dir, out)
    corpus_dir = os.path.dirname(data_dir)
    cache = _DirCache()

    for utt_id in sorted(wavs.keys() | texts.keys()):
        if utt_id not in wavs:
            out.skip(utt_id, text_path, "transcript without audio: no entry in wav.scp")
            continue
        location = wavs[utt_id][0].strip()
        if location.endswith("|"):
            out.skip(utt_id, wav_scp, f"wav.scp entry is a piped command, which is not supported (convert the "
                                      f"audio to files first): {location}")
            continue
        if not location:
            out.skip(utt_id, wav_scp, "wav.scp entry has no path")
            continue
        audio = _resolve_kaldi_audio(location, corpus_dir, data_dir, cache)
        if audio is None:
            if re.search(r"\.ark:\d+$", location):
                reason = f"Kaldi archive offsets are not supported: {location}"
            else:
                reason = (f"audio file not found: {location} (relative paths are tried against {corpus_dir} "
                          f"and {data_dir})")
            out.skip(utt_id, wav_scp, reason)
            continue
        if utt_id not in texts:
            out.skip(utt_id, audio, "audio without transcript: no entry in text")
            continue
        speaker = speakers.get(utt_id)
        if speaker is None:
            out.skip(utt_id, audio, "no speaker for this utterance in utt2spk")
            continue
        out.add(utt_id, speaker, _clean(texts[utt_id][0]), audio, text_path)


def _resolve_kaldi_audio(location: str, corpus_dir: str, data_dir: str, cache: _DirCache) -> str | None:
    if os.path.isabs(location):
        candidates = [location]
    else:
        # The corpus folder first: that is what recipes which ship `data/` beside the audio write.
        candidates = [os.path.join(corpus_dir, location), os.path.join(data_dir, location)]
    for candidate in candidates:
        candidate = os.path.normpath(candidate)
        if cache.exists(candidate):
            return candidate
    return None


def _kaldi_speakers(data_dir: str, out: _Collector) -> dict[str, str]:
    utt2spk = os.path.join(data_dir, "utt2spk")
    if os.path.isfile(utt2spk):
        # A missing speaker becomes "" so the utterance is skipped with "no speaker" rather than guessed.
        return {utt: (spk.split() or [""])[0] for utt, (spk, _) in _read_table(utt2spk, out).items()}
    spk2utt = os.path.join(data_dir, "spk2utt")
    if os.path.isfile(spk2utt):
        speakers: dict[str, str] = {}
        for spk, (utts, _) in _read_table(spk2utt, out, key="speaker").items():
            for utt in utts.split():
                speakers.setdefault(utt, spk)
        return speakers
    raise CorpusError(f"{data_dir}: Kaldi data dir without utt2spk or spk2utt (which speaker said what)")


# ---------------------------------------------------------------------------------------------------- vctk


def _read_vctk(root: str, mic: str, out: _Collector) -> None:
    if mic not in VCTK_MICS:
        raise CorpusError(f"unknown VCTK microphone {mic!r}; choose one of {', '.join(VCTK_MICS)}")
    txt_root = os.path.join(root, "txt")
    if os.path.isdir(os.path.join(root, "wav48_silence_trimmed")):
        audio_dir_name, suffix, expected_ext = "wav48_silence_trimmed", f"_{mic}", ".flac"  # VCTK 0.92
    elif os.path.isdir(os.path.join(root, "wav48")):
        audio_dir_name, suffix, expected_ext = "wav48", "", ".wav"  # VCTK 0.80
    else:
        raise CorpusError(f"{root}: not a VCTK corpus: no wav48/ or wav48_silence_trimmed/ folder")
    if not os.path.isdir(txt_root):
        raise CorpusError(f"{root}: not a VCTK corpus: no txt/ folder")
    audio_root = os.path.join(root, audio_dir_name)
    other_suffixes = tuple(f"_{m}" for m in VCTK_MICS if suffix and m != mic)

    for speaker in sorted(set(_list(txt_root).dirs) | set(_list(audio_root).dirs)):
        txt_dir, audio_dir = os.path.join(txt_root, speaker), os.path.join(audio_root, speaker)
        transcripts = {split[0]: name for name in _list(txt_dir).files
                       if (split := _split_ext(name, (".txt",))) is not None}
        audio: dict[str, str] = {}
        for stem, name in _group_audio(audio_dir, _list(audio_dir).files, out).items():
            if not suffix:
                audio[stem] = name
            elif stem.endswith(suffix):
                audio[stem[: -len(suffix)]] = name
            elif not stem.endswith(other_suffixes):  # the other microphone's files are simply not this corpus
                out.skip(stem, os.path.join(audio_dir, name),
                         f"VCTK 0.92 audio name lacks a {'/'.join('_' + m for m in VCTK_MICS)} suffix")
        for utt_id in sorted(transcripts.keys() | audio.keys()):
            if utt_id not in audio:
                expected = f"{audio_dir_name}/{speaker}/{utt_id}{suffix}{expected_ext}"
                out.skip(utt_id, os.path.join(txt_dir, transcripts[utt_id]),
                         f"transcript without audio: no {expected}")
            elif utt_id not in transcripts:
                out.skip(utt_id, os.path.join(audio_dir, audio[utt_id]),
                         f"audio without transcript: no txt/{speaker}/{utt_id}.txt")
            else:
                txt_path = os.path.join(txt_dir, transcripts[utt_id])
                try:
                    text = _read_transcript(txt_path)
                except _BadTranscript as err:
                    out.skip(utt_id, txt_path, str(err))
                    continue
                out.add(utt_id, speaker, text, os.path.join(audio_dir, audio[utt_id]), txt_path)


# ------------------------------------------------------------------------------------------------ libritts


def _has_libritts_text(files: list[str]) -> bool:
    return any(name.endswith(_LIBRITTS_TEXT) for name in files)


def _is_chapter(files: list[str]) -> bool:
    return _has_libritts_text(files) or any(_split_ext(n, AUDIO_EXTENSIONS) for n in files)


def _libritts_chapters(root: str, width: int | None = None) -> Iterator[tuple[str, str, _Listing]]:
    """(speaker, chapter dir, its listing) for every chapter 2 levels below ``root`` (a subset folder) or 3 levels
    below it (the LibriTTS folder holding subsets). ``width`` bounds the folders looked into per level (probing)."""
    for level1 in _list(root).dirs[:width]:
        path1 = os.path.join(root, level1)
        for level2 in _list(path1).dirs[:width]:
            path2 = os.path.join(path1, level2)
            listing2 = _list(path2)
            if _is_chapter(listing2.files):
                yield level1, path2, listing2  # root is a subset: level1 is the speaker
                continue
            for level3 in listing2.dirs[:width]:
                path3 = os.path.join(path2, level3)
                listing3 = _list(path3)
                if _is_chapter(listing3.files):
                    yield level2, path3, listing3  # root holds subsets: level2 is the speaker


def _read_libritts(root: str, out: _Collector) -> None:
    found = False
    for speaker, chapter, listing in _libritts_chapters(root):
        found = True
        audio = _group_audio(chapter, listing.files, out)
        transcripts: dict[str, dict[str, str]] = {}  # stem -> {extension: file name}
        for name in listing.files:
            split = _split_ext(name, _LIBRITTS_TEXT)
            if split is not None:
                transcripts.setdefault(split[0], {})[split[1]] = name
        for utt_id in sorted(audio.keys() | transcripts.keys()):
            if utt_id not in audio:
                text_name = next(iter(transcripts[utt_id].values()))
                out.skip(utt_id, os.path.join(chapter, text_name), f"transcript without audio: no {utt_id}.wav")
                continue
            audio_path = os.path.join(chapter, audio[utt_id])
            if utt_id not in transcripts:
                out.skip(utt_id, audio_path, f"audio without transcript: no {utt_id}.normalized.txt or "
                                             f"{utt_id}.original.txt")
                continue
            text, source, problems = "", "", []
            for ext in _LIBRITTS_TEXT:  # normalized first; original when it is absent, empty or unreadable
                if ext not in transcripts[utt_id]:
                    continue
                source = os.path.join(chapter, transcripts[utt_id][ext])
                try:
                    text = _read_transcript(source)
                except _BadTranscript as err:
                    problems.append(f"{transcripts[utt_id][ext]}: {err}")
                    continue
                if text:
                    break
            if not text and problems:
                out.skip(utt_id, source, "; ".join(problems))
                continue
            out.add(utt_id, speaker, text, audio_path, source)
    if not found:
        raise CorpusError(f"{root}: not a LibriTTS corpus: no <speaker>/<chapter>/ folders with audio or "
                          f".normalized.txt files, directly or under subset folders")


# -------------------------------------------------------------------------------------------------- folder


_METADATA_COLUMNS = ("id", "speaker", "text")


def _read_folder(root: str, out: _Collector) -> None:
    if os.path.isfile(os.path.join(root, "metadata.csv")):
        _read_metadata(root, out)
    else:
        _read_speaker_folders(root, out)


def _read_metadata(root: str, out: _Collector) -> None:
    meta = os.path.join(root, "metadata.csv")
    wavs = os.path.join(root, "wavs")
    speaker_dirs = bool(_list(wavs).dirs)
    lines = list(_read_lines(meta))
    columns: tuple[str, ...] | None = None  # from a header line, when there is one
    if lines and lines[0][1] is not None:
        names = tuple(part.strip().lower() for part in lines[0][1].split("|"))
        if {"id", "text"} <= set(names) <= set(_METADATA_COLUMNS) and len(set(names)) == len(names):
            columns = names
            lines = lines[1:]
    cache = _DirCache()
    for number, line in lines:
        where = f"metadata.csv:{number}"
        if line is None:
            out.skip(where, meta, f"line {number} of metadata.csv is not valid UTF-8")
            continue
        fields = [part.strip() for part in line.rstrip("\r\n").split("|")]
        if columns is not None:
            if len(fields) != len(columns):
                out.skip(fields[0] or where, meta, f"line {number} has {len(fields)} fields; the header names "
                                                   f"{len(columns)}: {'|'.join(columns)}")
                continue
            row = dict(zip(columns, fields))
            utt_id, speaker, text = row["id"], row.get("speaker", out.corpus), row["text"]
        elif len(fields) == 2:
            (utt_id, text), speaker = fields, out.corpus
        elif len(fields) == 3 and speaker_dirs:
            utt_id, speaker, text = fields
        elif len(fields) == 3:
            # LJSpeech: id|raw text|normalized text (numbers and abbreviations spelled out), which TTS wants.
            utt_id, speaker, text = fields[0], out.corpus, fields[2] or fields[1]
        else:
            out.skip(fields[0] or where, meta, f"line {number} has {len(fields)} fields; expected id|text, "
                                               f"id|speaker|text or id|text|normalized text")
            continue
        if not utt_id:
            out.skip(where, meta, f"line {number} has an empty id")
            continue
        # A speaker read from a column may have its own folder; the single speaker never does.
        folders = ([f"wavs/{speaker}"] if speaker != out.corpus else []) + ["wavs"]
        candidates = [os.path.join(root, folder, utt_id + ext) for folder in folders for ext in AUDIO_EXTENSIONS]
        audio = next((c for c in candidates if cache.exists(c)), None)
        if audio is None:
            tried = " or ".join(f"{folder}/{utt_id}.wav|.flac" for folder in folders)
            out.skip(utt_id, meta, f"transcript without audio: no {tried}")
            continue
        out.add(utt_id, speaker, _clean(text), audio, meta)


def _speaker_folder_pairs(directory: str, listing: _Listing) -> bool:
    """Whether a folder holds at least one audio file with a .txt transcript of the same stem."""
    stems = {split[0] for n in listing.files if (split := _split_ext(n, (".txt",)))}
    return any((split := _split_ext(n, AUDIO_EXTENSIONS)) and split[0] in stems for n in listing.files)


def _read_speaker_folders(root: str, out: _Collector) -> None:
    root_listing = _list(root)
    groups = [(os.path.join(root, d), d) for d in root_listing.dirs]
    if any(_split_ext(n, AUDIO_EXTENSIONS) for n in root_listing.files):
        # Loose files in the root are one speaker; only when there is audio, so a README.txt is not a "transcript".
        groups.insert(0, (root, out.corpus))
    found = False
    for directory, speaker in groups:
        listing = root_listing if directory == root else _list(directory)
        def id_of(stem: str, speaker: str = speaker) -> str:
            qualified = stem == speaker or (stem.startswith(speaker) and stem[len(speaker)] in "_-.")
            return stem if qualified else f"{speaker}_{stem}"

        audio = _group_audio(directory, listing.files, out, id_of)
        transcripts = {split[0]: n for n in listing.files if (split := _split_ext(n, (".txt",)))}
        for stem in sorted(audio.keys() | transcripts.keys()):
            found = True
            utt_id = id_of(stem)
            if stem not in audio:
                out.skip(utt_id, os.path.join(directory, transcripts[stem]),
                         f"transcript without audio: no {stem}.wav or {stem}.flac")
            elif stem not in transcripts:
                out.skip(utt_id, os.path.join(directory, audio[stem]), f"audio without transcript: no {stem}.txt")
            else:
                txt_path = os.path.join(directory, transcripts[stem])
                try:
                    text = _read_transcript(txt_path)
                except _BadTranscript as err:
                    out.skip(utt_id, txt_path, str(err))
                    continue
                out.add(utt_id, speaker, text, os.path.join(directory, audio[stem]), txt_path)
    if not found:
        raise CorpusError(f"{root}: not a folder corpus: no metadata.csv and no <speaker>/<utt>.wav|.flac "
                          f"with <utt>.txt")


# ------------------------------------------------------------------------------------------------ frontend


def _check_directory(path: str | os.PathLike[str]) -> str:
    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root):
        raise CorpusError(f"corpus path does not exist: {root}")
    if not os.path.isdir(root):
        raise CorpusError(f"corpus path is not a folder: {root}")
    return root


def _looks_like(layout: str, root: str) -> bool:
    if layout == "kaldi":
        return _kaldi_data_dir(root) is not None
    if layout == "vctk":
        return os.path.isdir(os.path.join(root, "txt")) and (
            os.path.isdir(os.path.join(root, "wav48")) or os.path.isdir(os.path.join(root, "wav48_silence_trimmed")))
    if layout == "libritts":
        return any(_has_libritts_text(listing.files) for _, _, listing in _libritts_chapters(root, _PROBE_WIDTH))
    if layout == "folder":
        if os.path.isfile(os.path.join(root, "metadata.csv")):
            return True
        listing = _list(root)
        return _speaker_folder_pairs(root, listing) or any(
            _speaker_folder_pairs(os.path.join(root, d), _list(os.path.join(root, d)))
            for d in listing.dirs[:_PROBE_WIDTH])
    raise AssertionError(layout)


def detect_layout(path: str | os.PathLike[str]) -> str:
    """The layout of the corpus at ``path`` (one of ``LAYOUTS``); ``CorpusError`` naming what was looked for."""
    root = _check_directory(path)
    for layout in LAYOUTS:
        if _looks_like(layout, root):
            return layout
    tried = "; ".join(f"{layout}: {_LAYOUT_HINTS[layout]}" for layout in LAYOUTS)
    raise CorpusError(f"no known corpus layout at {root}. Tried {tried}. If the corpus is one of these, set the "
                      f"layout explicitly (data.layout) to read it without detection")


def read_corpus(path: str | os.PathLike[str], layout: str = "auto", vctk_mic: str = "mic1",
                name: str = "") -> CorpusScan:
    """Read the corpus at ``path``. ``layout`` is ``auto`` or one of ``LAYOUTS``; ``vctk_mic`` picks the VCTK
    0.92 microphone; ``name`` (recorded in every Utterance) defaults to the corpus folder's name."""
    root = _check_directory(path)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise CorpusError(f"unknown corpus layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    if vctk_mic not in VCTK_MICS:
        raise CorpusError(f"unknown VCTK microphone {vctk_mic!r}; choose one of {', '.join(VCTK_MICS)}")
    if not name:
        name = os.path.basename(root)
        if layout == "kaldi" and name == "data" and _kaldi_data_dir(root) == root:
            name = os.path.basename(os.path.dirname(root))  # the data dir itself was given: name the corpus
    out = _Collector(name)
    if layout == "kaldi":
        _read_kaldi(root, out)
    elif layout == "vctk":
        _read_vctk(root, vctk_mic, out)
    elif layout == "libritts":
        _read_libritts(root, out)
    else:
        _read_folder(root, out)
    return out.scan(layout, root)
