"""The typed result of ``metatts evaluate``: per method, per metric, per step count (integer keys), plus what
produced it. ``EvaluationResult.to_json`` is the one place it becomes results.json (string step keys, NaN → null,
the shape ``evaluation.schema`` documents and checks); ``means_from_json`` reads means back for reports.

Every metric is a mean over episodes with a 95 % bootstrap interval over speakers (``evaluation.bootstrap``:
episodes of one speaker are not independent). Metrics scored here rather than per episode:

- ``gap_closed``: each episode's similarity placed between its stranger and same-speaker levels
  (``references.ReferenceLevels.gap_closed``), then averaged like any per-episode metric;
- ``eer``: the verification EER of every (synthesized query, support clip) trial over all episodes
  (``references.candidate_eer``, the trials of the reference levels too), its interval from
  ``references.eer_interval``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from metatts.episodes.sampler import Episode
from metatts.evaluation.bootstrap import Interval, intervals_by_step, paired_by_step, speaker_bootstrap
from metatts.evaluation.references import EpisodeEmbeddings, ReferenceLevels, eer_interval
from metatts.evaluation.scoring import Rendered
from metatts.evaluation.stats import clean, spread

POOLED_METRICS = ("eer",)
RESAMPLES = 2000  # bootstrap replicates per interval (the EER's cost a full sort each)


@dataclass
class MethodRun:
    """What one method gave on every episode, as the evaluation goes."""

    metrics: Sequence[str]
    rows: dict[str, list[list[float]]] = field(default_factory=dict)
    embeddings: list[list[np.ndarray]] = field(default_factory=list)  # [episode][step] -> [Q, 256]
    adapt_seconds: list[float] = field(default_factory=list)
    unusable: int = 0

    def __post_init__(self):
        self.rows = {m: [] for m in self.metrics}

    def add(self, scores: Sequence[dict[str, float]], rendered: Sequence[Rendered], seconds: float,
            unusable: int) -> None:
        """One episode: the scores and outputs at each step count of the grid."""
        self.add_rows(scores, [r.embeddings for r in rendered], seconds, unusable)

    def add_rows(self, scores: Sequence[dict[str, float]], embeddings: Sequence[np.ndarray], seconds: float,
                 unusable: int) -> None:
        """One episode: the scores and synthesized d-vectors at each step count of the grid."""
        for metric in self.rows:
            self.rows[metric].append([s[metric] for s in scores])
        self.embeddings.append(list(embeddings))
        self.adapt_seconds.append(seconds)
        self.unusable += unusable


@dataclass
class MetricTable:
    """One metric of one method per step count: the mean and its interval, the spread over episodes, and every
    episode's row ([episode][step index]; None for pooled metrics)."""

    interval: dict[int, Interval]
    spread: dict[int, dict]
    per_episode: list[list[float]] | None = None

    @property
    def mean(self) -> dict[int, float]:
        return {k: v.mean for k, v in self.interval.items()}


def _no_interval(value: float = math.nan) -> Interval:
    return Interval(mean=value, ci_low=math.nan, ci_high=math.nan, level=0.95, n_speakers=0, n_episodes=0,
                    n_resamples=0)


def episode_table(rows: list[list[float]], grid: Sequence[int], speakers: Sequence[str]) -> MetricTable:
    """A per-episode metric: mean over episodes and speaker-bootstrap interval at each step."""
    columns = list(zip(*rows)) if rows else [[] for _ in grid]
    return MetricTable(interval=intervals_by_step(rows, grid, speakers, n_resamples=RESAMPLES),
                       spread={k: spread(c) for k, c in zip(grid, columns)}, per_episode=rows)


def eer_table(run: MethodRun, embedded: Sequence[EpisodeEmbeddings], grid: Sequence[int]) -> MetricTable:
    table = MetricTable(interval={}, spread={})
    for j, k in enumerate(grid):
        interval = eer_interval(embedded, [rows[j] for rows in run.embeddings], n_resamples=RESAMPLES // 2)
        table.interval[k], table.spread[k] = interval, {"over": "speakers (bootstrap)"}
    return table


def metric_tables(run: MethodRun, episodes: Sequence[Episode], grid: Sequence[int],
                  embedded: Sequence[EpisodeEmbeddings], levels: ReferenceLevels | None,
                  notes: dict[str, str], method: str) -> dict[str, MetricTable]:
    """Every metric of a method: episode metrics, gap closed (with reference levels) and the pooled EER."""
    speakers = [e.speaker for e in episodes]
    tables = {metric: episode_table(rows, grid, speakers) for metric, rows in run.rows.items()}
    if levels is None:
        notes[method] = "EER and gap closed need episodes of at least 2 speakers (a stranger is another speaker)"
        nothing = {k: _no_interval() for k in grid}
        tables["gap_closed"] = MetricTable(interval=dict(nothing), spread={k: spread([]) for k in grid})
        tables["eer"] = MetricTable(interval=dict(nothing), spread={k: spread([]) for k in grid})
        return tables
    similarity = np.asarray(run.rows["similarity"], dtype=np.float64)  # [episode, step]
    gap = [levels.gap_closed(similarity[:, j]) for j in range(len(grid))]
    tables["gap_closed"] = episode_table(np.stack(gap, axis=1).tolist(), grid, speakers)
    tables["eer"] = eer_table(run, embedded, grid)
    return tables


def reference_table(levels: ReferenceLevels | None, embedded: Sequence[EpisodeEmbeddings],
                    real_rows: dict[str, list[float]], speakers: Sequence[str]) -> dict:
    """``references``: same-speaker and stranger similarity (intervals over speakers) and EER, and the ``real``
    row of the metrics scored on the real query recordings (CER, WER, DNSMOS)."""
    def bootstrap(values) -> Interval:
        return speaker_bootstrap(values, speakers, n_resamples=RESAMPLES)

    out: dict = {"real": {metric: bootstrap(values) for metric, values in real_rows.items()}}
    if levels is None:
        out["same_speaker"] = {"similarity": _no_interval(), "eer": _no_interval()}
        out["stranger"] = {"similarity": _no_interval(), "eer": _no_interval()}
        return out
    out["same_speaker"] = {"similarity": bootstrap(levels.same_speaker),
                           "eer": eer_interval(embedded, [e.query for e in embedded], n_resamples=RESAMPLES // 2)}
    out["stranger"] = {"similarity": bootstrap(levels.stranger), "eer": _no_interval(levels.eer_stranger)}
    return out


def paired_tables(tables: dict[str, dict[str, MetricTable]], episodes: Sequence[Episode], grid: Sequence[int],
                  first: str = "meta") -> dict[str, dict[str, dict[int, Interval]]]:
    """``first`` − each other method on the same episodes, per per-episode metric and step: the paired
    speaker bootstrap (what both share, a hard speaker, cancels)."""
    if first not in tables:
        return {}
    speakers = [e.speaker for e in episodes]
    out: dict[str, dict[str, dict[int, Interval]]] = {}
    for other, metrics in tables.items():
        if other == first:
            continue
        for metric, table in metrics.items():
            mine = tables[first][metric].per_episode
            if table.per_episode is None or mine is None:
                continue
            out.setdefault(metric, {})[f"{first}-{other}"] = paired_by_step(
                mine, table.per_episode, grid, speakers, n_resamples=RESAMPLES)
    return out


def _intervals(table: dict[int, Interval]) -> dict[int, dict]:
    return {k: v.as_dict() for k, v in table.items()}


def _value(value):
    return value.as_dict() if isinstance(value, Interval) else value


@dataclass
class EvaluationResult:
    """Everything ``metatts evaluate`` found, typed; steps are ints throughout."""

    steps: list[int]
    methods: list[str]
    flat_methods: list[str]
    tables: dict[str, dict[str, MetricTable]]  # method -> metric -> table
    references: dict  # reference_table
    paired: dict[str, dict[str, dict[int, Interval]]]  # metric -> "meta-<method>" -> step -> interval
    baselines_tuned: dict[str, dict]  # method -> {chosen, grid, scores, metric, episodes}
    scorers_skipped: dict[str, str]  # metric -> why it is null
    compute: dict[str, dict]
    episodes: list[Episode]
    episodes_digest: str
    suite: dict
    checkpoints: dict[str, dict]
    settings: dict
    vocoder: dict
    unusable_synthesis: dict[str, int]
    eer_notes: dict[str, str]
    samples: dict[str, dict[int, list[str]]]  # method (and "real") -> step -> wav paths
    dvector: dict | None
    machine: dict
    seconds: float
    created: str

    @property
    def metrics(self) -> list[str]:
        first = next(iter(self.tables.values()), {})
        return list(first)

    def mean(self, metric: str, method: str) -> dict[int, float]:
        """{step: mean over episodes} of a metric for a method."""
        return self.tables[method][metric].mean

    def interval(self, metric: str, method: str) -> dict[int, Interval]:
        return self.tables[method][metric].interval

    def to_json(self) -> dict:
        """results.json (``evaluation.schema``): one table per metric ({method: {"step": {mean, ci_low, ci_high}}}),
        references, tuned baselines, paired differences, spreads and per-episode rows, and the rest."""
        out: dict = {metric: {m: _intervals(self.tables[m][metric].interval) for m in self.methods}
                     for metric in self.metrics}
        out["references"] = {level: {k: _value(v) for k, v in table.items()}
                             for level, table in self.references.items()}
        out["paired"] = {metric: {pair: _intervals(table) for pair, table in pairs.items()}
                         for metric, pairs in self.paired.items()}
        out["spread"] = {metric: {m: self.tables[m][metric].spread for m in self.methods} for metric in self.metrics}
        out["per_episode"] = {metric: {m: self.tables[m][metric].per_episode for m in self.methods}
                              for metric in self.metrics if metric not in POOLED_METRICS}
        out.update({
            "baselines_tuned": self.baselines_tuned, "scorers_skipped": self.scorers_skipped,
            "compute": self.compute, "steps": self.steps, "methods": self.methods,
            "flat_methods": {m: "no gradient step: evaluated once per episode and repeated over the grid"
                             for m in self.flat_methods},
            "episodes": [{"speaker": e.speaker, "support": list(e.support), "query": list(e.query)}
                         for e in self.episodes],
            "episodes_digest": self.episodes_digest, "suite": self.suite, "checkpoints": self.checkpoints,
            "settings": self.settings, "vocoder": self.vocoder, "unusable_synthesis": self.unusable_synthesis,
            "eer_notes": self.eer_notes, "samples": {m: paths for m, paths in self.samples.items() if paths},
            "dvector": self.dvector, "machine": self.machine, "seconds": self.seconds, "created": self.created,
        })
        return clean(out)


def mean_of(value) -> float:
    """The mean of a result-file cell: an interval {mean, ci_low, ci_high}, a bare number (files written before
    intervals), or null."""
    if isinstance(value, dict):
        value = value.get("mean")
    return math.nan if value is None else float(value)


def means_from_json(results: dict, metric: str) -> dict[str, dict[int, float]]:
    """{method: {step: mean}} of a metric in a results.json dict (null → NaN): for readers of the file."""
    return {m: {int(k): mean_of(v) for k, v in row.items()} for m, row in (results.get(metric) or {}).items()}


def intervals_from_json(results: dict, metric: str) -> dict[str, dict[int, tuple[float, float, float]]]:
    """{method: {step: (mean, ci_low, ci_high)}} (NaN where absent or unknown)."""
    def triple(value):
        if not isinstance(value, dict):
            return mean_of(value), math.nan, math.nan
        return tuple(math.nan if value.get(k) is None else float(value[k]) for k in ("mean", "ci_low", "ci_high"))

    return {m: {int(k): triple(v) for k, v in row.items()} for m, row in (results.get(metric) or {}).items()}
