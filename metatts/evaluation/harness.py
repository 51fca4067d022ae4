"""`metatts evaluate`: every adaptation method on the same episodes, scored per inner-step count, against the
real speaker and a stranger, with tuned baselines and intervals.

    suite (tasks/*.yaml, or built on the fly from a store's split) ─ frozen_episodes ─▶ episodes: one held-out
        speaker, N support + Q query utterances
    non-meta gradient methods: their setting chosen on meta-val episodes (``evaluation.tuning``), never test ones
    per episode: the real recordings' d-vectors (support = the target, query = the same-speaker candidates) and
        the real query sentences' CER/WER/DNSMOS (the reference row)
    per episode, per method (``evaluation.methods``): adapter from the support clips; after each step count k of
        the grid: render the Q query sentences (``evaluation.scoring.render``; HiFi-GAN by
        default, what `metatts synthesize` plays) and score them (similarity, MCD, log-F0 RMSE, mel L1, CER/WER,
        DNSMOS)
    over all episodes: reference levels (same speaker, stranger: ``evaluation.references``), gap closed, the pooled
        verification EER, 95 % bootstrap intervals over speakers and paired meta − method differences
        (``evaluation.results``), the compute behind each method (``evaluation.compute``)
    ─▶ ``EvaluationResult`` ─ to_json ─▶ results.json (``evaluation.schema``), results.md, plots, tb/

A new method is one class in ``evaluation.methods``; a new metric one scorer in ``evaluation.scoring``.

Speed (2 cores): real utterances' d-vectors are cached on disk (``cache_dir``); each episode is adapted once,
incrementally along the grid; the Q sentences of a step are vocoded in one batch on a GPU (one by one on the
CPU, where padding costs more than batching saves: ``scoring.vocode_batch``); real references are analysed
once. ``seconds`` in the result is the whole evaluation's wall time, ``stage_seconds`` its parts.

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
from metatts.evaluation import report, schema
from metatts.evaluation.compute import adapt_compute, training_compute
from metatts.evaluation.curves import step_grid
from metatts.evaluation.episode_cache import CachedEpisode, EpisodeCache, cache_key, episode_ids
from metatts.evaluation.errors import EvaluationError
from metatts.evaluation.methods import METHODS, REGISTRY, EvalContext, Method, needs, timed_adapter
from metatts.evaluation.metrics import SpeakerEncoder
from metatts.evaluation.real_audio import RealAudio
from metatts.evaluation.references import EpisodeEmbeddings, ReferenceLevels, reference_levels
from metatts.evaluation.results import (EvaluationResult, MethodRun, metric_tables, paired_tables,
                                        reference_table)
from metatts.evaluation.scoring import (Reference, Rendered, Scorer, build_scorers, episode_metrics, score,
                                        score_real)
from metatts.evaluation.stats import clean
from metatts.evaluation.tuning import Tuned, fixed, tune, val_episodes
from metatts.features.store import FeatureStore, StoreError
from metatts.runtime.checkpoint import CheckpointError, CheckpointMeta, read_meta
from metatts.runtime.env import machine_info, resolve_device
from metatts.runtime.outputs import safe_name
from metatts.vocoder import load_vocoder

DEFAULT_GRID = (0, 1, 2, 5, 10, 20, 50, 100)  # step counts of a suite built on the fly

SETTINGS = {
    "similarity": "cosine of each synthesized query's d-vector with the mean d-vector of the episode's support "
                  "clips, averaged over the queries (references.candidate_similarity)",
    "gap_closed": "(similarity - stranger) / (same_speaker - stranger) per episode, then averaged; same_speaker: "
                  "the episode's real queries scored the same way, stranger: the other test speakers' real queries",
    "eer": "verification EER over (synthesized query, support clip) trials of all episodes (references.candidate_eer)",
    "mcd": "dB, DTW on mel cepstra, synthesized vs real query",
    "f0_rmse": "cents, over frames voiced in both after the same DTW",
    "mel_l1": "query mel L1, teacher-forced with the model's aligner durations",
    "cer": "PocketSphinx character error rate of the query sentences, edits pooled per episode",
    "wer": "PocketSphinx word error rate of the query sentences, edits pooled per episode",
    "dnsmos": "DNSMOS P.835 overall (1-5), mean over the query sentences",
    "intervals": "95 % percentile bootstrap over speakers (episodes of one speaker resampled together)",
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
def adhoc_suite(features: str | Path, *, split: str = "test", shots: int = 5, queries: int = 5,
                tasks_per_speaker: int = 2, seed: int = 0, steps: Sequence[int] = DEFAULT_GRID) -> TaskSuite:
    """A task suite built from a prepared store alone (no tasks/*.yaml): its ``split`` speakers, this episode
    shape and seed. The same arguments give the same episodes (``frozen_episodes``), so a run can be repeated."""
    root = Path(features)
    if not (root / "manifest.jsonl").is_file():
        raise EvaluationError(f"the feature store {root} does not exist or is not prepared (no manifest.jsonl): "
                              f"run `metatts prepare`, or pass --features")
    store = FeatureStore(root)
    corpora = sorted({e.corpus for e in store.entries})
    suite = TaskSuite(corpus=",".join(corpora) or root.name, features=str(root), split=split, shots=int(shots),
                      queries=int(queries), tasks_per_speaker=int(tasks_per_speaker), seed=int(seed),
                      step_grid=list(step_grid(steps)), name=f"{root.name}-{split}-{shots}shot")
    suite.check("on-the-fly suite")
    return suite


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


# --------------------------------------------------------------------------------------------------- tuning
def _tune_methods(methods: Sequence[str], context: EvalContext, suite: TaskSuite, store, grid: Sequence[int],
                  log, cache: EpisodeCache) -> dict[str, Tuned]:
    """Choose each tunable method's setting on meta-val episodes (``evaluation.tuning``); a setting the user fixed
    is recorded as such. Writes the choices into ``context.tuned``."""
    out: dict[str, Tuned] = {}
    episodes = None

    def remember(method, key_episodes, steps, compute):
        key = cache_key(kind="tuning", **_method_identity(method, context), grid=list(steps),
                        episodes=episode_ids(key_episodes))
        return cache.value(key, compute)

    for name in methods:
        cls = REGISTRY[name]
        if not cls.tuning_grid:
            continue
        given = cls(context).fixed_setting()
        if given is not None:
            out[name] = fixed(given, "fixed on the command line")
        else:
            if episodes is None:
                episodes = val_episodes(suite, store, context.splits, log=log)
            out[name] = tune(lambda setting, c=cls: c(context, setting), cls.tuning_grid, episodes, grid, log=log,
                             name=name, remember=remember)
        context.tuned[name] = out[name].chosen
    return out


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
    frames = max(real.store.by_id[u].frames for u in query_ids)
    reference = Reference(episode, real, real.embeddings(query_ids), real.embeddings(list(episode.support)),
                          max_frames=4 * frames + 200)
    queries = {role: aligned_batch(ev.model, ev.collator, query_ids, device) for role, ev in models.items()}
    return _Episode(reference, queries, write_samples)


def _method_identity(m: Method, context: EvalContext) -> dict:
    """What a method's numbers depend on besides the episode (the cache key's method part)."""
    return {"method": m.name, "checkpoint": m.model.digest, "setting": m.setting, "groups": context.groups}


def _run_method(m: Method, ep: _Episode, grid: Sequence[int], vocoder, encoder, scorers: Sequence[Scorer],
                bar, listener_steps: Sequence[int] | None = None) -> tuple[list[dict], list[Rendered], float]:
    """Adapt along the grid and score each step count (the costly scorers only at ``listener_steps``, None: all);
    a flat method is scored once and repeated."""
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
        out = m.render(adapter.params(), query, ep.reference, vocoder, encoder)
        scores.append(score(scorers, out, ep.reference, listener_steps is None or k in listener_steps))
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


def _real_scores(cache: EpisodeCache, key: str, scorers: Sequence[Scorer], reference: Reference) -> dict:
    """The reference row of an episode (the real queries' CER, WER, DNSMOS), cached like a method's scores."""
    entry = cache.episode(key)
    if entry is None:
        entry = CachedEpisode([score_real(scorers, reference)], [np.zeros((0, 1))], 0.0, 0, {})
        cache.save_episode(key, entry)
    return entry.scores[0]


def _samples(samples: dict, method: Method, ep: _Episode, grid: Sequence[int], rendered: Sequence[Rendered],
             count: int, out_dir: Path) -> None:
    speaker = ep.reference.episode.speaker
    written = None
    for k, r in zip(grid, rendered):
        if not method.flat or written is None:  # a flat method's files: under step<first>
            written = _write_waves(out_dir / "samples" / method.name / f"step{k}", speaker, r.waves[:count],
                                   r.sample_rate)
        samples[method.name].setdefault(k, []).extend(written)


@dataclass
class _Runs:
    """What the loop over episodes gathered."""

    methods: dict[str, MethodRun]
    embedded: list[EpisodeEmbeddings]  # real d-vectors per episode (the references' input)
    real_rows: dict[str, list[float]]  # metric -> per-episode value of the real query recordings
    samples: dict


def _evaluate_episodes(methods: dict[str, Method], episodes: Sequence[Episode], context: EvalContext,
                       grid: Sequence[int], vocoder, scorers: Sequence[Scorer], samples: int, progress: bool,
                       out_dir: Path, cache: EpisodeCache, listener_steps: Sequence[int] | None = None) -> _Runs:
    """Every method on every episode (an entry already in ``cache`` is read, not recomputed)."""
    metrics = episode_metrics(scorers)
    skipped = [s.skipped is not None for s in scorers]
    vocoder_label = vocoder_name(vocoder)
    runs = _Runs({name: MethodRun(metrics) for name in methods}, [], {}, {name: {} for name in [*methods, "real"]})
    first_of_speaker: dict[str, int] = {}
    for index, episode in enumerate(episodes):
        first_of_speaker.setdefault(episode.speaker, index)
    total = sum(1 if m.flat else len(grid) for m in methods.values()) * len(episodes)
    bar = tqdm(total=total, desc="evaluate", unit="eval", disable=not progress)
    real, rate = context.real, context.real.audio.sample_rate
    for index, episode in enumerate(episodes):
        ep = _prepare_episode(episode, context.models, real, context.device,
                              samples > 0 and first_of_speaker[episode.speaker] == index)
        runs.embedded.append(EpisodeEmbeddings(episode.speaker, ep.reference.embeddings,
                                               ep.reference.support_embeddings))
        real_key = cache_key(kind="real", metrics=metrics, skipped=skipped, episode=episode_ids([episode]))
        for metric, value in _real_scores(cache, real_key, scorers, ep.reference).items():
            runs.real_rows.setdefault(metric, []).append(value)
        if ep.write_samples:
            runs.samples["real"].setdefault(0, []).extend(_write_waves(
                out_dir / "samples" / "real", episode.speaker, [real.wave(u) for u in episode.query[:samples]], rate))
        for name, m in methods.items():
            key = cache_key(kind="episode", **_method_identity(m, context), grid=list(grid), vocoder=vocoder_label,
                            metrics=metrics, skipped=skipped, episode=episode_ids([episode]),
                            samples=samples if ep.write_samples else 0, out=str(out_dir),
                            listener_steps=None if listener_steps is None else sorted(listener_steps))
            entry = cache.episode(key)
            if entry is None:
                scores, rendered, seconds = _run_method(m, ep, grid, vocoder, context.encoder, scorers, bar,
                                                        listener_steps)
                written = {m.name: {}}
                if ep.write_samples:
                    _samples(written, m, ep, grid, rendered, samples, out_dir)
                entry = CachedEpisode(scores, [r.embeddings for r in rendered], seconds,
                                      sum(r.unusable for r in rendered[:1 if m.flat else None]),
                                      written.get(m.name, {}))
                cache.save_episode(key, entry)
            else:
                bar.update(1 if m.flat else len(grid))
            runs.methods[name].add_rows(entry.scores, entry.embeddings, entry.seconds, entry.unusable)
            for k, paths in entry.samples.items():
                runs.samples[name].setdefault(k, []).extend(paths)
        real.save()
    bar.close()
    return runs


# --------------------------------------------------------------------------------------------------- results
def _compute(methods: dict[str, Method], runs: dict[str, MethodRun], grid: Sequence[int]) -> dict[str, dict]:
    compute = {}
    for name, m in methods.items():
        record = training_compute(m.model.path)
        record.update(adapt_compute(0 if m.flat else max(grid), m.measures, runs[name].adapt_seconds))
        record.update(m.compute_note(record))
        compute[name] = record
    return compute


def vocoder_name(vocoder) -> str:
    """"hifigan" or "griffinlim": which vocoder made the audio (a HiFi-GAN request without its weights falls back
    to Griffin-Lim, and the result must say so)."""
    from metatts.vocoder import GriffinLim

    return "griffinlim" if isinstance(vocoder, GriffinLim) else "hifigan"


def _levels(embedded: Sequence[EpisodeEmbeddings]) -> ReferenceLevels | None:
    return reference_levels(embedded) if len({e.speaker for e in embedded}) >= 2 else None


def _result(methods: dict[str, Method], runs: _Runs, context: EvalContext, grid: list[int],
            episodes: Sequence[Episode], suite: TaskSuite, tuned: dict[str, Tuned], scorers: Sequence[Scorer],
            vocoder, started: float, stages: dict[str, float],
            listener_steps: Sequence[int] | None) -> EvaluationResult:
    notes: dict[str, str] = {}
    levels = _levels(runs.embedded)
    tables = {name: metric_tables(runs.methods[name], episodes, grid, runs.embedded, levels, notes, name)
              for name in methods}
    speakers = [e.speaker for e in episodes]
    settings = {"groups": context.groups}
    for m in methods.values():
        settings.update(m.settings())
    dvector = methods.get("dvector")
    return EvaluationResult(
        steps=grid, methods=list(methods), flat_methods=[n for n, m in methods.items() if m.flat], tables=tables,
        references=reference_table(levels, runs.embedded, runs.real_rows, speakers),
        paired=paired_tables(tables, episodes, grid),
        baselines_tuned={name: t.to_json() for name, t in tuned.items()},
        scorers_skipped={metric: s.skipped for s in scorers if s.skipped for metric in s.metrics},
        compute=_compute(methods, runs.methods, grid), episodes=list(episodes),
        episodes_digest=episodes_digest(episodes),
        suite={**dataclasses.asdict(suite), "speakers": list(dict.fromkeys(e.speaker for e in episodes))},
        checkpoints={role: {"path": str(ev.path), "kind": ev.meta.kind, "step": ev.meta.step, "digest": ev.digest}
                     for role, ev in context.models.items()},
        settings={**settings, **SETTINGS, "stage_seconds": stages,
                  "listener_steps": grid if listener_steps is None else list(listener_steps)},
        vocoder={"name": vocoder_name(vocoder), "class": type(vocoder).__name__},
        unusable_synthesis={n: r.unusable for n, r in runs.methods.items()}, eer_notes=notes, samples=runs.samples,
        dvector=clean({k: v for k, v in dvector.fitted.info.items() if k != "key"}) if dvector else None,
        machine=machine_info(), seconds=time.perf_counter() - started, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _write(result: EvaluationResult, out_dir: Path, tensorboard: bool) -> dict:
    data = result.to_json()
    schema.validate(data, in_file=True)  # the documented shape, checked on every write rather than trusted
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    report.write_markdown(data, out_dir / "results.md")
    report.plot_curves(data, "similarity", out_dir / "similarity.png")
    report.plot_curves(data, "gap_closed", out_dir / "gap_closed.png")
    report.plot_curves(data, "eer", out_dir / "eer.png")
    if tensorboard:
        report.write_tensorboard(data, out_dir / "tb", out_dir)
    return data


def run_evaluation(meta_checkpoint, baseline_checkpoint, suite, out_dir, *, methods=METHODS, steps=None,
                   vocoder="hifigan", device="cpu", samples=1, progress=True, log: Callable[[str], None] = print,
                   features: str | Path | None = None, baseline_lr: float | None = None,
                   full_lr: float | None = None, threads: int | None = None,
                   speakers: Sequence[str] | int | None = None, tasks_per_speaker: int | None = None,
                   cache_dir: str | Path | None = None, dvector_utterances: int | None = None,
                   groups: Sequence[str] | None = None, listener_steps: Sequence[int] | None = None,
                   tensorboard: bool = True) -> EvaluationResult:
    """Evaluate ``methods`` on the frozen episodes of ``suite`` (a tasks/*.yaml path or a ``TaskSuite``, e.g. from
    ``adhoc_suite``) after each step count of ``steps`` (None: the suite's ``step_grid``) and write
    ``out_dir``/results.json (``EvaluationResult.to_json``), results.md, plots, samples and tb/; returns the typed
    result. See the module docstring. Extra keywords: ``features`` overrides the suite's store; ``speakers`` keeps
    only these held-out speakers (a list, or the first N); ``tasks_per_speaker`` overrides the suite's;
    ``baseline_lr`` / ``full_lr`` fix those methods' rates instead of tuning them on meta-val episodes;
    ``listener_steps`` limits CER, WER and DNSMOS (seconds per sentence on a CPU) to those step counts (None:
    every step; the others are null); ``groups`` are the speaker groups the baseline adapts (default: the meta
    checkpoint's, else the baseline's);
    ``threads`` sets torch's CPU threads for the run; ``cache_dir`` holds the d-vector cache and every episode's
    and tuning setting's scores (``evaluation.episode_cache``: a stopped or extended run redoes nothing; default
    ``out_dir``/cache); ``dvector_utterances`` caps the utterances per training speaker for the d-vector fit."""
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
        chosen_groups = list(groups) if groups else list(reference.config.model.speaker_groups)
        audio = reference.config.audio
        vocoder_impl = load_vocoder(vocoder, audio, torch_device)
        encoder = SpeakerEncoder(device="cpu")
        scorers = build_scorers(log)
        context = EvalContext(models=models, groups=chosen_groups, device=torch_device,
                              real=RealAudio(store, audio, encoder, cache_dir / "dvectors.npz"), encoder=encoder,
                              splits=splits, shots=suite.shots, queries=suite.queries, out_dir=out_dir,
                              baseline_lr=baseline_lr, full_lr=full_lr, dvector_utterances=dvector_utterances, log=log)
        if listener_steps is not None:  # empty: no listener metrics at all
            listener_steps = [k for k in step_grid(listener_steps) if k in grid] if listener_steps else []
        stages = {}
        tick = time.perf_counter()
        cache = EpisodeCache(cache_dir / "scores")
        tuned = _tune_methods(methods, context, suite, store, grid, log, cache)
        stages["tuning"] = time.perf_counter() - tick
        chosen = {name: REGISTRY[name](context) for name in methods}
        tick = time.perf_counter()
        runs = _evaluate_episodes(chosen, episodes, context, grid, vocoder_impl, scorers, samples, progress, out_dir,
                                  cache, listener_steps)
        stages["episodes"] = time.perf_counter() - tick
        tick = time.perf_counter()
        result = _result(chosen, runs, context, grid, episodes, suite, tuned, scorers, vocoder_impl, started, stages,
                         listener_steps)
        stages["summaries"] = time.perf_counter() - tick
        result.seconds = time.perf_counter() - started
        _write(result, out_dir, tensorboard)
        log(f"evaluation: {len(episodes)} episodes × {len(methods)} methods × {len(grid)} step counts in "
            f"{result.seconds:.0f} s; {out_dir / 'results.json'}")
        return result
    finally:
        torch.set_num_threads(previous_threads)
