"""The typed result of ``metatts evaluate``: per method, per metric, per step count (integer keys), plus what
produced it. ``EvaluationResult.to_json`` is the one place it becomes results.json (string keys, NaN → null);
``from_json`` reads one back for reports.

Pooled metrics are scored here, over every episode at once: the verification EER of Meta-TTS's trials
(``metrics.verification_eer``): every (synthesized, real) pair over all episodes' speakers, positive when of one
speaker; its spread is over rounds (round r = the r-th episode of every speaker).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from metatts.episodes.sampler import Episode
from metatts.evaluation.metrics import verification_eer
from metatts.evaluation.real_audio import RealAudio
from metatts.evaluation.scoring import Rendered, episode_metrics
from metatts.evaluation.stats import clean, nanmean, spread

POOLED_METRICS = ("eer",)


@dataclass
class MethodRun:
    """What one method gave on every episode, as the evaluation goes."""

    rows: dict[str, list[list[float]]] = field(default_factory=lambda: {m: [] for m in episode_metrics()})
    embeddings: list[list[np.ndarray]] = field(default_factory=list)  # [episode][step] -> [Q, 256]
    adapt_seconds: list[float] = field(default_factory=list)
    unusable: int = 0

    def add(self, scores: Sequence[dict[str, float]], rendered: Sequence[Rendered], seconds: float,
            unusable: int) -> None:
        """One episode: the scores and outputs at each step count of the grid."""
        for metric in self.rows:
            self.rows[metric].append([s[metric] for s in scores])
        self.embeddings.append([r.embeddings for r in rendered])
        self.adapt_seconds.append(seconds)
        self.unusable += unusable


@dataclass
class MetricTable:
    """One metric of one method: mean and spread over episodes per step count, and every episode's row."""

    mean: dict[int, float]
    spread: dict[int, dict]
    per_episode: list[list[float]] | None = None  # [episode][step index]; None for pooled metrics


def _eer(episodes: Sequence[Episode], embeddings: list[list[np.ndarray]], step_index: int, real: RealAudio,
         round_index: int | None = None) -> float:
    synth: dict[str, list[np.ndarray]] = {}
    reals: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for episode, rows in zip(episodes, embeddings):
        r = seen.get(episode.speaker, 0)
        seen[episode.speaker] = r + 1
        if round_index is not None and r != round_index:
            continue
        synth.setdefault(episode.speaker, []).append(rows[step_index])
        known = reals.setdefault(episode.speaker, [])
        known.extend(u for u in episode.query if u not in known)
    if len(synth) < 2:
        return math.nan
    try:
        return verification_eer({s: np.concatenate(v) for s, v in synth.items()},
                                {s: real.embeddings(ids) for s, ids in reals.items()}).eer
    except ValueError:  # every trial NaN (nothing embeddable)
        return math.nan


def eer_table(run: MethodRun, episodes: Sequence[Episode], grid: Sequence[int], real: RealAudio) -> MetricTable:
    speakers = list(dict.fromkeys(e.speaker for e in episodes))
    rounds = max(sum(1 for e in episodes if e.speaker == s) for s in speakers)
    table = MetricTable(mean={}, spread={})
    for j, k in enumerate(grid):
        pooled = _eer(episodes, run.embeddings, j, real)
        per_round = [_eer(episodes, run.embeddings, j, real, round_index=r) for r in range(rounds)] \
            if rounds > 1 else []
        table.mean[k], table.spread[k] = pooled, {**spread(per_round), "over": "rounds"}
    return table


def metric_tables(run: MethodRun, episodes: Sequence[Episode], grid: Sequence[int], real: RealAudio,
                  notes: dict[str, str], method: str) -> dict[str, MetricTable]:
    """Every metric of a method: episode metrics averaged over episodes, pooled metrics scored over all."""
    tables = {}
    for metric, rows in run.rows.items():
        columns = list(zip(*rows))
        tables[metric] = MetricTable(mean={k: nanmean(c) for k, c in zip(grid, columns)},
                                     spread={k: spread(c) for k, c in zip(grid, columns)}, per_episode=rows)
    if len({e.speaker for e in episodes}) < 2:
        notes[method] = "EER needs episodes of at least 2 speakers (negative trials)"
        tables["eer"] = MetricTable(mean={k: math.nan for k in grid}, spread={k: spread([]) for k in grid})
    else:
        tables["eer"] = eer_table(run, episodes, grid, real)
    return tables


@dataclass
class EvaluationResult:
    """Everything ``metatts evaluate`` found, typed; steps are ints throughout."""

    steps: list[int]
    methods: list[str]
    flat_methods: list[str]
    tables: dict[str, dict[str, MetricTable]]  # method -> metric -> table
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

    def to_json(self) -> dict:
        """results.json: one dict per metric ({method: {"step": value}}), spreads, per-episode rows, the rest."""
        out: dict = {metric: {m: self.tables[m][metric].mean for m in self.methods} for metric in self.metrics}
        out["spread"] = {metric: {m: self.tables[m][metric].spread for m in self.methods} for metric in self.metrics}
        out["per_episode"] = {metric: {m: self.tables[m][metric].per_episode for m in self.methods}
                              for metric in self.metrics if metric not in POOLED_METRICS}
        out.update({
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


def means_from_json(results: dict, metric: str) -> dict[str, dict[int, float]]:
    """{method: {step: value}} of a metric in a results.json dict (null → NaN): for readers of the file."""
    return {m: {int(k): math.nan if v is None else float(v) for k, v in row.items()}
            for m, row in (results.get(metric) or {}).items()}
