"""`metatts evaluate`: every adaptation method on the same frozen episodes, scored per inner-step count.

    suite (tasks/*.yaml) ─ frozen_episodes ─▶ episodes: one held-out speaker, N support + Q query utterances
    per episode, per method (``evaluation.methods``):  adapter from the support clips
        after each step count k of the grid: render the Q query sentences (``evaluation.scoring.render``) and
        score them (every registered scorer: similarity, MCD, log-F0 RMSE, query mel L1)
    over all episodes: means and spreads, the pooled verification EER (``evaluation.results``), the compute behind
    each method (``evaluation.compute``) ─▶ ``EvaluationResult`` ─ to_json ─▶ results.json, results.md, plots, tb/

A new method is one class in ``evaluation.methods``; a new metric one scorer in ``evaluation.scoring``.

Speed (2 shared cores): real utterances' d-vectors are cached on disk (``cache_dir``); each episode is adapted
once, incrementally along the grid; real references are analysed once. The default vocoder is Griffin-Lim: its
real-time factor with the tiny model is ~0.08 on one thread against ~0.6 for HiFi-GAN V1 (benchmarks/results/
synthesis-*.json), and the evaluation vocodes (methods × steps × queries) sentences per episode; Resemblyzer's
d-vectors and the DTW MCD read through its phase artefacts well enough to rank methods (use ``vocoder="hifigan"``
for final numbers).

Compute: ``results["compute"][method]`` is the training behind the model (updates and wall seconds its checkpoint
records; a meta checkpoint initialized from a ``metatts train`` one adds that run; checkpoints saved before compute
was recorded fall back to the span of their run's TensorBoard events) plus the adaptation updates and seconds per
episode (to the largest step count; aligner included).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from metatts.checkpoints import StoreModel, load_for_store
from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.collate import aligned_batch
from metatts.episodes.sampler import Episode
from metatts.episodes.tasks import TaskSuite, episodes_digest, frozen_episodes, load_task_suite
from metatts.evaluation import report
from metatts.evaluation.compute import adapt_compute, training_compute
from metatts.evaluation.curves import step_grid
from metatts.evaluation.errors import EvaluationError
from metatts.evaluation.methods import FULL_LR, METHODS, REGISTRY, EvalContext, Method, needs, timed_adapter
from metatts.evaluation.metrics import SpeakerEncoder, mean_embedding
from metatts.evaluation.real_audio import RealAudio
from metatts.evaluation.results import EvaluationResult, MethodRun, metric_tables
from metatts.evaluation.scoring import Reference, Rendered, render, score
from metatts.evaluation.stats import clean
from metatts.features.store import FeatureStore, StoreError
from metatts.runtime.checkpoint import CheckpointError, CheckpointMeta, read_meta
from metatts.runtime.env import machine_info, resolve_device
from metatts.runtime.outputs import safe_name
from metatts.vocoder import load_vocoder

SETTINGS = {
    "similarity": "cosine of each synthesized query's d-vector with the mean d-vector of the episode's real query "
                  "utterances, averaged over the queries",
    "eer": "verification_eer over (synthesized query, real query) pairs of all episodes; spread over rounds (the "
           "r-th episode of every speaker)",
    "mcd": "dB, DTW on mel cepstra, synthesized vs real query",
    "f0_rmse": "cents, over frames voiced in both after the same DTW",
    "mel_l1": "query mel L1, teacher-forced with the model's aligner durations",
}


def check_checkpoints(meta_checkpoint: str | Path | None, baseline_checkpoint: str | Path | None,
                      methods: Sequence[str]) -> tuple[CheckpointMeta | None, CheckpointMeta | None]:
    """Validate the inputs before any work: method names, which checkpoints they need, their kinds and that the
    two share a symbol table. Raises ``EvaluationError`` with one clear sentence."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EvaluationError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if not methods:
        raise EvaluationError(f"no method to evaluate: choose from {', '.join(METHODS)}")

    def read(path, role: str) -> CheckpointMeta:
        if path is None:
            raise EvaluationError(f"methods {', '.join(m for m in methods)} need the {role} checkpoint")
        if not Path(path).is_dir():
            raise EvaluationError(f"{role} checkpoint {path} does not exist")
        try:
            return read_meta(path)
        except CheckpointError as error:
            raise EvaluationError(f"{role} checkpoint: {error}") from error

    needed = needs(methods)
    meta = read(meta_checkpoint, "meta") if "meta" in needed else None
    base = read(baseline_checkpoint, "baseline") if "baseline" in needed else None
    if meta is not None and meta.kind != "meta":
        raise EvaluationError(f"{meta_checkpoint} is a {meta.kind!r} checkpoint, not a meta-trained one: pass the "
                              f"`metatts meta-train` checkpoint as --checkpoint")
    if base is not None and base.kind != "train":
        raise EvaluationError(f"baseline {baseline_checkpoint} is a {base.kind!r} checkpoint: the baseline is the "
                              f"multi-speaker `metatts train` checkpoint")
    if meta is not None and base is not None and meta.symbols != base.symbols:
        raise EvaluationError(f"{meta_checkpoint} and {baseline_checkpoint} have different phoneme symbol tables: "
                              f"they were not trained on the same store, so their numbers would not compare")
    return meta, base


# --------------------------------------------------------------------------------------------------- inputs
def _suite_and_episodes(suite, features, tasks_per_speaker, speakers, log):
    """The suite (features / tasks-per-speaker overridden), its store, splits and frozen episodes."""
    if isinstance(suite, TaskSuite):
        if features is not None:
            suite = dataclasses.replace(suite, features=str(features))
    else:
        suite = load_task_suite(suite, features=features)
    if tasks_per_speaker is not None:
        suite = dataclasses.replace(suite, tasks_per_speaker=int(tasks_per_speaker))
    root = Path(suite.features)
    if not (root / "manifest.jsonl").is_file():
        raise EvaluationError(f"the feature store {root} of suite {suite.name!r} does not exist or is not prepared "
                              f"(no manifest.jsonl): run `metatts prepare`, or pass --features")
    if not (root / "splits.json").is_file():
        raise StoreError(f"{root} has no splits.json: re-run `metatts prepare`")
    store = FeatureStore(root)
    splits = SpeakerSplits.load(root / "splits.json")
    episodes = frozen_episodes(suite, store, splits, log=log)
    if speakers is not None:
        available = list(dict.fromkeys(e.speaker for e in episodes))
        keep = available[:speakers] if isinstance(speakers, int) else list(speakers)
        unknown = [s for s in keep if s not in available]
        if unknown:
            raise EvaluationError(f"speaker {unknown[0]} gives no episode of suite {suite.name!r} (its {suite.split} "
                                  f"speakers with episodes: {', '.join(available)})")
        episodes = [e for e in episodes if e.speaker in keep]
    return suite, store, splits, episodes


def _load_models(paths: dict[str, str | Path], infos: dict[str, CheckpointMeta | None], store: FeatureStore,
                 device: torch.device) -> dict[str, StoreModel]:
    models = {role: load_for_store(paths[role], store, device) for role, info in infos.items() if info is not None}
    if len(models) == 2 and dataclasses.asdict(models["meta"].config.audio) != \
            dataclasses.asdict(models["baseline"].config.audio):
        raise EvaluationError(f"{paths['meta']} and {paths['baseline']} use different audio settings")
    return models


# --------------------------------------------------------------------------------------------------- the loop
@dataclass
class _Episode:
    """One episode ready for every method: its reference, and a query batch per checkpoint (aligned once)."""

    reference: Reference
    queries: dict[str, object]  # checkpoint role -> Batch
    write_samples: bool


def _prepare_episode(episode: Episode, models: dict[str, StoreModel], real: RealAudio, device: torch.device,
                     write_samples: bool) -> _Episode:
    query_ids = list(episode.query)
    real_embeddings = real.embeddings(query_ids)
    frames = max(real.store.by_id[u].frames for u in query_ids)
    reference = Reference(episode, real, real_embeddings, mean_embedding(real_embeddings), max_frames=4 * frames + 200)
    queries = {role: aligned_batch(ev.model, ev.collator, query_ids, device) for role, ev in models.items()}
    return _Episode(reference, queries, write_samples)


def _run_method(m: Method, ep: _Episode, grid: Sequence[int], vocoder, encoder,
                bar) -> tuple[list[dict], list[Rendered], float]:
    """Adapt along the grid and score each step count; a flat method is scored once and repeated."""
    adapter, seconds = timed_adapter(m, ep.reference.episode)
    query = ep.queries[m.checkpoint]
    scores, rendered = [], []
    for k in grid:
        if m.flat and rendered:
            scores.append(scores[0])
            rendered.append(rendered[0])
            continue
        tick = time.perf_counter()
        adapter.advance(k - adapter.steps)
        seconds += time.perf_counter() - tick
        out = render(m.model, adapter.params(), query, ep.reference, vocoder, encoder)
        scores.append(score(out, ep.reference))
        rendered.append(out)
        bar.update()
    return scores, rendered, seconds


def _write_waves(folder: Path, speaker: str, waves: Sequence[np.ndarray], rate: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, wave in enumerate(waves):
        path = folder / f"{safe_name(speaker)}-{n}.wav"  # speaker ids are corpus data, never paths
        sf.write(path, np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16")
        paths.append(str(path))
    return paths


def _samples(samples: dict, method: Method, ep: _Episode, grid: Sequence[int], rendered: Sequence[Rendered],
             count: int, out_dir: Path) -> None:
    speaker = ep.reference.episode.speaker
    written = None
    for k, r in zip(grid, rendered):
        if not method.flat or written is None:  # a flat method's files: under step<first>
            written = _write_waves(out_dir / "samples" / method.name / f"step{k}", speaker, r.waves[:count],
                                   r.sample_rate)
        samples[method.name].setdefault(k, []).extend(written)


def _evaluate_episodes(methods: dict[str, Method], episodes: Sequence[Episode], context: EvalContext,
                       grid: Sequence[int], vocoder, samples: int, progress: bool,
                       out_dir: Path) -> tuple[dict[str, MethodRun], dict]:
    runs = {name: MethodRun() for name in methods}
    paths: dict[str, dict[int, list[str]]] = {name: {} for name in [*methods, "real"]}
    first_of_speaker: dict[str, int] = {}
    for index, episode in enumerate(episodes):
        first_of_speaker.setdefault(episode.speaker, index)
    total = sum(1 if m.flat else len(grid) for m in methods.values()) * len(episodes)
    bar = tqdm(total=total, desc="evaluate", unit="eval", disable=not progress)
    real, rate = context.real, context.real.audio.sample_rate
    for index, episode in enumerate(episodes):
        ep = _prepare_episode(episode, context.models, real, context.device,
                              samples > 0 and first_of_speaker[episode.speaker] == index)
        if ep.write_samples:
            paths["real"].setdefault(0, []).extend(_write_waves(
                out_dir / "samples" / "real", episode.speaker, [real.wave(u) for u in episode.query[:samples]], rate))
        for name, m in methods.items():
            scores, rendered, seconds = _run_method(m, ep, grid, vocoder, context.encoder, bar)
            runs[name].add(scores, rendered, seconds, sum(r.unusable for r in rendered[:1 if m.flat else None]))
            if ep.write_samples:
                _samples(paths, m, ep, grid, rendered, samples, out_dir)
        real.save()
    bar.close()
    return runs, paths


# --------------------------------------------------------------------------------------------------- results
def _compute(methods: dict[str, Method], runs: dict[str, MethodRun], grid: Sequence[int]) -> dict[str, dict]:
    compute = {}
    for name, m in methods.items():
        record = training_compute(m.model.path)
        record.update(adapt_compute(0 if m.flat else max(grid), m.measures, runs[name].adapt_seconds))
        record.update(m.compute_note(record))
        compute[name] = record
    return compute


def _result(methods: dict[str, Method], runs: dict[str, MethodRun], context: EvalContext, grid: list[int],
            episodes: Sequence[Episode], suite: TaskSuite, samples: dict, vocoder_name, vocoder,
            started: float) -> EvaluationResult:
    notes: dict[str, str] = {}
    tables = {name: metric_tables(runs[name], episodes, grid, context.real, notes, name) for name in methods}
    settings = {"groups": context.groups}
    for m in methods.values():
        settings.update(m.settings())
    dvector = methods.get("dvector")
    return EvaluationResult(
        steps=grid, methods=list(methods), flat_methods=[n for n, m in methods.items() if m.flat], tables=tables,
        compute=_compute(methods, runs, grid), episodes=list(episodes), episodes_digest=episodes_digest(episodes),
        suite={**dataclasses.asdict(suite), "speakers": list(dict.fromkeys(e.speaker for e in episodes))},
        checkpoints={role: {"path": str(ev.path), "kind": ev.meta.kind, "step": ev.meta.step, "digest": ev.digest}
                     for role, ev in context.models.items()},
        settings={**settings, **SETTINGS},
        vocoder={"name": str(vocoder_name), "class": type(vocoder).__name__,
                 "why": "Griffin-Lim by default: real-time factor ~0.08 (tiny model, 1 thread) against ~0.6 for "
                        "HiFi-GAN V1, and every episode vocodes methods × steps × queries sentences"},
        unusable_synthesis={n: r.unusable for n, r in runs.items()}, eer_notes=notes, samples=samples,
        dvector=clean({k: v for k, v in dvector.fitted.info.items() if k != "key"}) if dvector else None,
        machine=machine_info(), seconds=time.perf_counter() - started, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _write(result: EvaluationResult, out_dir: Path, tensorboard: bool) -> dict:
    data = result.to_json()
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    report.write_markdown(data, out_dir / "results.md")
    report.plot_curves(data, "similarity", out_dir / "similarity.png")
    report.plot_curves(data, "eer", out_dir / "eer.png")
    if tensorboard:
        report.write_tensorboard(data, out_dir / "tb", out_dir)
    return data


def run_evaluation(meta_checkpoint, baseline_checkpoint, suite, out_dir, *, methods=METHODS, steps=None,
                   vocoder="griffinlim", device="cpu", samples=1, progress=True, log: Callable[[str], None] = print,
                   features: str | Path | None = None, baseline_lr: float | None = None, full_lr: float = FULL_LR,
                   threads: int | None = None, speakers: Sequence[str] | int | None = None,
                   tasks_per_speaker: int | None = None, cache_dir: str | Path | None = None,
                   dvector_utterances: int | None = None, tensorboard: bool = True) -> EvaluationResult:
    """Evaluate ``methods`` on the frozen episodes of ``suite`` (a tasks/*.yaml path or a ``TaskSuite``) after each
    step count of ``steps`` (None: the suite's ``step_grid``) and write ``out_dir``/results.json (``EvaluationResult.to_json``), results.md, plots,
    samples and tb/; returns the typed result. See the module docstring. Extra keywords: ``features`` overrides
    the suite's store; ``speakers`` keeps only these held-out speakers (a list, or the first N);
    ``tasks_per_speaker`` overrides the suite's; ``threads`` sets torch's CPU threads for the run; ``cache_dir``
    holds the d-vector cache (default ``out_dir``/cache); ``dvector_utterances`` caps the utterances per training
    speaker for the d-vector fit."""
    started = time.perf_counter()
    methods = list(dict.fromkeys(methods))
    if samples < 0:
        raise EvaluationError(f"samples must be >= 0, got {samples}")
    meta_info, base_info = check_checkpoints(meta_checkpoint, baseline_checkpoint, methods)
    suite, store, splits, episodes = _suite_and_episodes(suite, features, tasks_per_speaker, speakers, log)
    try:
        grid = step_grid(suite.step_grid if steps is None else steps)
    except ValueError:
        raise EvaluationError(f"steps must be step counts >= 0, got {list(steps)}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch_device = resolve_device(device)
        models = _load_models({"meta": meta_checkpoint, "baseline": baseline_checkpoint},
                              {"meta": meta_info, "baseline": base_info}, store, torch_device)
        reference = models.get("meta") or models["baseline"]
        audio = reference.config.audio
        vocoder_impl = load_vocoder(vocoder, audio, torch_device)
        encoder = SpeakerEncoder(device="cpu")
        context = EvalContext(models=models, groups=list(reference.config.model.speaker_groups), device=torch_device,
                              real=RealAudio(store, audio, encoder, cache_dir / "dvectors.npz"), encoder=encoder,
                              splits=splits, shots=suite.shots, queries=suite.queries, out_dir=out_dir,
                              baseline_lr=baseline_lr, full_lr=full_lr, dvector_utterances=dvector_utterances, log=log)
        chosen = {name: REGISTRY[name](context) for name in methods}
        runs, sample_paths = _evaluate_episodes(chosen, episodes, context, grid, vocoder_impl, samples, progress,
                                                out_dir)
        result = _result(chosen, runs, context, grid, episodes, suite, sample_paths, vocoder, vocoder_impl, started)
        _write(result, out_dir, tensorboard)
        log(f"evaluation: {len(episodes)} episodes × {len(methods)} methods × {len(grid)} step counts in "
            f"{result.seconds:.0f} s; {out_dir / 'results.json'}")
        return result
    finally:
        torch.set_num_threads(previous_threads)
