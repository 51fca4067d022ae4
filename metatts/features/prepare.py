"""`metatts prepare`: corpus on disk → feature store, in parallel, resumable, with a report of what was skipped.

Order of work, and why:
1. Read the corpus (readers record what they skip: transcripts without audio, duplicates, ...).
2. Normalize and phonemize every transcript in the main process, in large batches (espeak is fast per batch and
   slow per call), through a phoneme cache in the store so a re-run phonemizes nothing it has seen.
3. Extract audio features in worker processes. Each file's cache key is its audio's content hash plus the audio
   config; a file whose key matches is reused, so a changed config re-extracts and a re-run skips finished work.
4. Write manifest, statistics, symbol table, splits and report last, each atomically: a store whose run was
   killed has no new manifest, and the next run picks up the finished files.

With ``data.textgrids`` (Montreal Forced Aligner output) the phonemes and durations come from the TextGrids
instead of the phonemizer and the built-in aligner. TextGrids are read in the main process before extraction (a
missing or unreadable one skips its utterance without touching the audio); durations are computed after it, from
the frame count and the trimmed leading seconds in each file's summary, and are stored in the manifest -- so the
feature files, and their cache, do not depend on the TextGrids. Silence rule: silence intervals ("", sil, sp,
spn) inside the utterance become ``data.textgrid_silence`` (a pause symbol, "," by default; adjacent ones merged);
silence at either edge of the trimmed audio is merged into the first/last phone, as the phonemizer never starts
or ends a sentence with a pause and the built-in aligner gives those frames to the edge phonemes too.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metatts.align.textgrid import PhoneDurations, TextGridError, Tier, phone_durations, read_textgrid
from metatts.config import Config, save_config
from metatts.corpus.readers import read_corpus
from metatts.corpus.splits import load_or_make
from metatts.corpus.utterance import Skipped, Utterance
from metatts.features.extract import FeatureExtractor
from metatts.features.store import (
    FileSummary,
    ManifestEntry,
    Moments,
    UtteranceFeatures,
    cache_key,
    feature_path,
    file_digest,
    read_summary,
    write_atomic,
    write_features,
)
from metatts.runtime.outputs import claim_folder
from metatts.text.normalize import normalize_text
from metatts.text.phonemes import Phonemizer
from metatts.text.symbols import SymbolTable


@dataclass
class PrepareReport:
    """What a prepare run did: counts, skipped items with reasons, per-stage seconds."""

    corpus: str
    layout: str
    store: str
    found: int = 0
    usable: int = 0
    extracted: int = 0
    reused: int = 0
    speakers: int = 0
    seconds_of_audio: float = 0.0
    wall_seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)

    def reasons(self) -> Counter:
        return Counter(f"{item['stage']}: {item['reason'].split(':')[0]}" for item in self.skipped)

    def summary_table(self) -> str:
        lines = [
            f"corpus {self.corpus} ({self.layout}) -> {self.store}",
            f"  utterances found {self.found}, usable {self.usable} from {self.speakers} speakers "
            f"({self.seconds_of_audio / 3600:.2f} h); extracted {self.extracted}, reused {self.reused}; "
            f"{self.wall_seconds:.1f} s",
        ]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            width = max(len(reason) for reason in self.reasons())
            for reason, count in self.reasons().most_common():
                lines.append(f"    {reason:<{width}}  {count:>6}")
            lines.append("  (every skipped item and its reason: report.json)")
        return "\n".join(lines)


# ---- worker side --------------------------------------------------------------------------------------------

_EXTRACTOR: FeatureExtractor | None = None


def _init_worker(audio_config) -> None:
    global _EXTRACTOR  # one extractor (mel basis, windows) per worker process, built once
    torch.set_num_threads(1)
    _EXTRACTOR = FeatureExtractor(audio_config)


@dataclass
class _Job:
    utt: Utterance
    out: str
    audio_config: dict


@dataclass
class _Result:
    utt: Utterance
    summary: FileSummary | None = None
    reused: bool = False
    skipped: Skipped | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _summarize(key: str, pitch: np.ndarray, voiced: np.ndarray, energy: np.ndarray, seconds: float,
               trim_start_seconds: float) -> FileSummary:
    log_f0 = np.log(pitch[voiced.astype(bool)]) if voiced.any() else np.zeros(0)
    return FileSummary(key=key, frames=int(pitch.shape[0]), seconds=seconds,
                       log_f0=Moments.of(log_f0), energy=Moments.of(energy), trim_start_seconds=trim_start_seconds)


def _extract(job: _Job) -> _Result:
    assert _EXTRACTOR is not None
    utt, out = job.utt, Path(job.out)
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        key = cache_key(file_digest(utt.audio_path), job.audio_config)
        timings["hash"] = time.perf_counter() - start
    except OSError as error:
        return _Result(utt, skipped=Skipped(utt.id, utt.audio_path, "audio", f"unreadable audio: {error}"))
    existing = read_summary(out)
    if existing is not None and existing.key == key:
        return _Result(utt, summary=existing, reused=True, timings=timings)
    try:
        features = _EXTRACTOR.from_file(utt.audio_path, timings=timings)
    except Exception as error:  # noqa: BLE001 - any failure on one file is that file's skip reason
        return _Result(utt, skipped=Skipped(utt.id, utt.audio_path, "audio", f"{type(error).__name__}: {error}"),
                       timings=timings)
    summary = _summarize(key, features.pitch, features.voiced, features.energy, features.duration_seconds,
                         features.trim_start_seconds)
    start = time.perf_counter()
    write_features(out, UtteranceFeatures(
        mel=torch.as_tensor(features.mel), pitch=torch.as_tensor(features.pitch),
        voiced=torch.as_tensor(features.voiced), energy=torch.as_tensor(features.energy)), summary)
    timings["write"] = time.perf_counter() - start
    return _Result(utt, summary=summary, timings=timings)


# ---- main process -------------------------------------------------------------------------------------------

def _phonemize_all(texts: list[str], config: Config, cache_path: Path, progress: bool) -> dict[str, list[str]]:
    """Phonemes for each distinct normalized text, through a cache keyed by the text settings."""
    settings = json.dumps(dataclasses.asdict(config.text), sort_keys=True)
    cache: dict[str, list[str]] = {}
    if cache_path.is_file():
        try:
            stored = json.loads(cache_path.read_text())
            if stored.get("settings") == settings:
                cache = stored["phonemes"]
        except (json.JSONDecodeError, KeyError):
            cache = {}  # a damaged cache only costs time
    missing = sorted({t for t in texts if t not in cache})
    if missing:
        phonemizer = Phonemizer(config.text, normalize=False)  # texts arrive normalized
        batch = config.text.phonemize_batch
        for start in tqdm(range(0, len(missing), batch), desc="phonemize", unit="batch", disable=not progress,
                          leave=False):
            chunk = missing[start:start + batch]
            for text, symbols in zip(chunk, phonemizer.phonemize(chunk)):
                cache[text] = symbols
        write_atomic(cache_path, json.dumps({"settings": settings, "phonemes": cache}))
    return cache


def index_textgrids(folder: str | Path) -> dict[str, list[Path]]:
    """Every ``*.TextGrid`` under ``folder`` (one walk, any depth) by file stem."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"data.textgrids: {root} is not a folder")
    index: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() == ".textgrid" and path.is_file():
            index.setdefault(path.stem, []).append(path)
    if not index:
        raise ValueError(f"data.textgrids: no *.TextGrid file under {root}")
    return index


def _find_textgrid(index: dict[str, list[Path]], utt: Utterance) -> Path | str:
    """The TextGrid of ``utt`` (named like its audio file, or its id), or the reason there is none."""
    stems = dict.fromkeys([Path(utt.audio_path).stem, utt.id])
    candidates = [path for stem in stems for path in index.get(stem, [])]
    if not candidates:
        return f"no TextGrid: none named {' or '.join(f'{stem}.TextGrid' for stem in stems)}"
    if len(candidates) > 1:  # MFA writes <speaker>/<utt>.TextGrid: the speaker's folder decides
        candidates = [path for path in candidates if path.parent.name == utt.speaker] or candidates
    if len(candidates) > 1:
        return f"ambiguous TextGrid: {len(candidates)} files fit, e.g. {candidates[0]} and {candidates[1]}"
    return candidates[0]


def phone_tier(tiers: dict[str, Tier], name: str, source: str) -> Tier:
    """The tier called ``name``, or else MFA's multi-speaker "<speaker> - <name>" if there is exactly one."""
    if name in tiers:
        return tiers[name]
    matches = [tier for key, tier in tiers.items() if key.endswith(f" - {name}")]
    if len(matches) != 1:
        raise TextGridError(f"{source}: no interval tier named {name!r} (tiers: {', '.join(tiers) or 'none'})")
    return matches[0]


def textgrid_phones(tier: Tier, summary: FileSummary, config: Config, source: str) -> PhoneDurations:
    """Phones and frame counts of one utterance from its TextGrid, under the silence rule in the module docstring.

    Raises ``TextGridError`` when the TextGrid does not fit the audio or holds nothing but silence.
    """
    data, audio = config.data, config.audio
    silence = data.textgrid_silence
    result = phone_durations({tier.name: tier}, audio.sample_rate, audio.hop_length, summary.frames, tier=tier.name,
                             start_seconds=summary.trim_start_seconds, silence_label=silence or None, source=source)
    phones, durations = list(result.phones), result.durations.tolist()
    if silence and phones == [silence]:
        raise TextGridError(f"{source}: tier {tier.name!r} has only silence inside the utterance")
    if silence and phones[0] == silence:
        phones.pop(0)
        lead = durations.pop(0)
        durations[0] += lead
    if silence and phones[-1] == silence:
        phones.pop()
        tail = durations.pop()
        durations[-1] += tail
    return PhoneDurations(phones=phones, durations=np.asarray(durations, dtype=np.int64))


STORE_KIND = "feature store"


def _is_older_store(root: Path) -> bool:
    """A store prepared before output markers existed: its report.json is a prepare report."""
    try:
        report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {f.name for f in dataclasses.fields(PrepareReport)} <= set(report)


def prepare(config: Config, *, progress: bool = True, log=print) -> PrepareReport:
    """Prepare the corpus named by ``config.data`` into the store at ``config.data.features``: a new or empty
    folder, or a store this made before (re-runs reuse its work); any other folder is refused, unchanged."""
    wall = time.perf_counter()
    root = Path(config.data.features)
    if root.exists():  # refuse a foreign folder before reading the corpus; a new one is made once it is read
        claim_folder(root, STORE_KIND, flag="--out (data.features)", adopt=_is_older_store)
    scan = read_corpus(config.data.corpus, layout=config.data.layout, vctk_mic=config.data.vctk_mic,
                       name=config.data.name)
    report = PrepareReport(corpus=str(config.data.corpus), layout=scan.layout, store=str(root))
    report.found = len(scan.utterances) + len(scan.skipped)
    skipped: list[Skipped] = list(scan.skipped)
    claim_folder(root, STORE_KIND, flag="--out (data.features)", adopt=_is_older_store)
    for stale in root.glob("utts/*/.*.tmp-*"):
        stale.unlink(missing_ok=True)  # left by a killed run; never read as features

    # Text: normalize, phonemize in batches, drop what has nothing to pronounce. With TextGrids their phones are
    # the phonemes, so the phonemizer is not run; each utterance's TextGrid is read now, before any audio work.
    start = time.perf_counter()
    normalized = {utt.id: normalize_text(utt.text) for utt in scan.utterances}
    aligned = bool(config.data.textgrids)
    phonemes: dict[str, list[str]] = {}
    if not aligned:
        phonemes = _phonemize_all(list(normalized.values()), config, root / "phoneme-cache.json", progress)
        report.stages["phonemes"] = time.perf_counter() - start
    grids: dict[str, tuple[Path, Tier]] = {}  # utterance id -> its TextGrid and phone tier
    index = index_textgrids(config.data.textgrids) if aligned else {}
    new_symbols: set[str] = set()
    jobs: list[_Job] = []
    audio_settings = dataclasses.asdict(config.audio)
    for utt in scan.utterances:
        text = normalized[utt.id]
        if not text.strip():
            skipped.append(Skipped(utt.id, utt.audio_path, "text", "transcript is empty after normalization"))
            continue
        if aligned:
            found = _find_textgrid(index, utt)
            if isinstance(found, str):
                skipped.append(Skipped(utt.id, utt.audio_path, "textgrid", found))
                continue
            try:
                grids[utt.id] = (found, phone_tier(read_textgrid(found), config.data.textgrid_tier, str(found)))
            except TextGridError as error:
                skipped.append(Skipped(utt.id, str(found), "textgrid", f"TextGridError: {error}"))
                continue
        elif not phonemes.get(text):
            skipped.append(Skipped(utt.id, utt.audio_path, "text", f"nothing pronounceable in {utt.text!r}"))
            continue
        else:
            new_symbols.update(phonemes[text])
        jobs.append(_Job(utt, str(feature_path(root, utt.speaker, utt.id)), audio_settings))
    if aligned:
        report.stages["textgrids"] = time.perf_counter() - start

    # Audio: extract in worker processes (or inline for one worker, which keeps tracebacks simple).
    results: list[_Result] = []
    bar = tqdm(total=len(jobs), desc="features", unit="utt", disable=not progress)
    if config.data.workers == 1 or len(jobs) < 2:
        _init_worker(config.audio)
        for job in jobs:
            results.append(_extract(job))
            bar.update()
    else:
        context = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
        with context.Pool(config.data.workers, initializer=_init_worker, initargs=(config.audio,)) as pool:
            for result in pool.imap_unordered(_extract, jobs, chunksize=4):
                results.append(result)
                bar.update()
    bar.close()

    # Manifest and statistics from the file summaries (no array is read again).
    entries: list[ManifestEntry] = []
    global_f0, global_energy = Moments(), Moments()
    per_speaker: dict[str, list[Moments]] = {}
    for result in sorted(results, key=lambda r: (r.utt.speaker, r.utt.id)):
        for stage, seconds in result.timings.items():
            report.stages[stage] = report.stages.get(stage, 0.0) + seconds
        if result.skipped is not None:
            skipped.append(result.skipped)
            continue
        summary, utt = result.summary, result.utt
        assert summary is not None
        report.reused += result.reused
        report.extracted += not result.reused
        durations: list[int] | None = None
        if aligned:
            grid, tier = grids[utt.id]
            try:
                phones = textgrid_phones(tier, summary, config, str(grid))
            except TextGridError as error:
                skipped.append(Skipped(utt.id, str(grid), "textgrid", f"TextGridError: {error}"))
                continue
            utt_phonemes, durations = phones.phones, phones.durations.tolist()
            new_symbols.update(utt_phonemes)
        else:
            utt_phonemes = phonemes[normalized[utt.id]]
        report.seconds_of_audio += summary.seconds
        entries.append(ManifestEntry(
            id=utt.id, speaker=utt.speaker, text=normalized[utt.id], phonemes=utt_phonemes,
            frames=summary.frames, seconds=summary.seconds,
            path=str(Path(feature_path(root, utt.speaker, utt.id)).relative_to(root)),
            audio_path=str(utt.audio_path), corpus=utt.corpus, durations=durations))
        global_f0, global_energy = global_f0 + summary.log_f0, global_energy + summary.energy
        f0, energy, count = per_speaker.get(utt.speaker, [Moments(), Moments(), Moments()])
        per_speaker[utt.speaker] = [f0 + summary.log_f0, energy + summary.energy, count + Moments(1, 0, 0)]
    report.usable = len(entries)
    report.speakers = len(per_speaker)
    if not entries:
        raise ValueError(f"no usable utterance in {config.data.corpus}: "
                         f"{len(skipped)} skipped, see the reasons below\n" + _reasons_text(skipped))

    def stats(f0: Moments, energy: Moments, count: float) -> dict:
        return {"log_f0_mean": f0.mean, "log_f0_std": f0.std, "energy_mean": energy.mean,
                "energy_std": energy.std, "utterances": int(count)}

    # The split first: a saved one that no longer fits raises before any store file is rewritten.
    counts = {name: int(values[2].n) for name, values in per_speaker.items()}
    splits = load_or_make(root / "splits.json", counts, val_speakers=config.data.val_speakers,
                          test_speakers=config.data.test_speakers, seed=config.data.split_seed,
                          min_utterances=config.data.min_utterances_per_speaker)
    write_atomic(root / "stats.json", json.dumps({
        "global": stats(global_f0, global_energy, len(entries)),
        "speakers": {name: stats(f0, energy, count.n) for name, (f0, energy, count) in sorted(per_speaker.items())},
    }, indent=1))
    # The base table is fixed (stable ids across corpora); symbols it lacks are appended in sorted order.
    symbols = SymbolTable().extended(sorted(new_symbols))
    write_atomic(root / "symbols.json", symbols.to_json())
    save_config(config, root / "config.yaml")
    write_atomic(root / "manifest.jsonl", "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in entries))

    report.skipped = [dataclasses.asdict(item) for item in skipped]
    report.wall_seconds = time.perf_counter() - wall
    write_atomic(root / "report.json", json.dumps(dataclasses.asdict(report), indent=1))
    log(report.summary_table())
    log(f"  splits: {len(splits.train)} meta-train, {len(splits.val)} meta-val, {len(splits.test)} meta-test speakers")
    return report


def _reasons_text(skipped: list[Skipped]) -> str:
    counts = Counter(f"{item.stage}: {item.reason}" for item in skipped)
    return "\n".join(f"  {count:>5}  {reason}" for reason, count in counts.most_common(10))
