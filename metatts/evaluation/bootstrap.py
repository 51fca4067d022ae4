"""Uncertainty of an evaluation mean: a bootstrap over speakers.

Episodes of one speaker share that speaker's voice, recordings and sentences, so their scores are correlated; a
bootstrap that resampled episodes would treat 16 speakers × 2 episodes as 32 independent draws and give an
interval too narrow by up to √2. Here the unit of resampling is the speaker: each bootstrap replicate draws as many
speakers as there are, with replacement, and takes all episodes of each drawn speaker (a speaker drawn twice
counts twice). The statistic is the mean over the replicate's episodes, which for the full sample is the plain
mean over episodes the evaluation reports. The interval is the percentile interval of the replicates
(Efron & Tibshirani 1993, ch. 13), 95 % by default.

``paired_difference`` does the same for method A − method B on the same episodes: the per-episode differences are
resampled by speaker, so what the two methods share (a hard speaker, a hard sentence) cancels, and the interval is
that of the difference, narrower than the two separate intervals suggest.

Pure numpy and seeded: the same values, speakers and seed give the same interval on any machine. Non-finite values
(an episode a metric could not score) are left out, and counted in ``n_episodes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 10000
DEFAULT_LEVEL = 0.95
_CHUNK = 2_000_000  # drawn speaker indices per block (bounds memory for large speaker counts)


@dataclass(frozen=True)
class Interval:
    """A mean over episodes and its bootstrap-over-speakers percentile interval.

    ``ci_low``/``ci_high`` are NaN when fewer than two speakers have a finite value (one speaker cannot tell how
    much a mean varies between speakers); all three are NaN when no episode has one."""

    mean: float
    ci_low: float
    ci_high: float
    level: float
    n_speakers: int  # speakers with at least one finite value
    n_episodes: int  # finite values used (0 from ``bootstrap_statistic``, which never sees episodes)
    n_resamples: int

    def as_dict(self) -> dict:
        """The ``{mean, ci_low, ci_high}`` entry of a result file."""
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high}


def speaker_bootstrap(values: Sequence[float], speakers: Sequence[str], *, n_resamples: int = DEFAULT_RESAMPLES,
                      level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Mean of per-episode ``values`` and its ``level`` percentile interval, resampling ``speakers`` (the speaker
    of each episode, same length) with replacement ``n_resamples`` times from ``np.random.default_rng(seed)``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    speakers = np.asarray(list(speakers), dtype=object)
    if values.shape != speakers.shape:
        raise ValueError(f"{values.size} values but {speakers.size} speakers")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = np.isfinite(values)
    values, speakers = values[finite], speakers[finite]
    if values.size == 0:
        return Interval(math.nan, math.nan, math.nan, level, 0, 0, n_resamples)
    _, owner = np.unique(speakers.astype(str), return_inverse=True)
    sums = np.bincount(owner, weights=values)
    counts = np.bincount(owner).astype(np.float64)
    n_speakers = len(sums)
    mean = float(values.mean())
    if n_speakers < 2:
        return Interval(mean, math.nan, math.nan, level, n_speakers, int(values.size), n_resamples)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    rows = max(1, _CHUNK // n_speakers)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        drawn = rng.integers(0, n_speakers, size=(stop - start, n_speakers))
        stats[start:stop] = sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), level, n_speakers, int(values.size), n_resamples)


def bootstrap_statistic(speakers: Sequence[str], statistic: Callable[[np.ndarray], float], *,
                        n_resamples: int = 1000, level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """The percentile interval of a statistic that is not a mean of per-episode values (a pooled EER), resampling
    ``speakers`` (distinct names; order fixed) the same way. ``statistic(counts)`` gets how often each speaker was
    drawn ([S] integers; all ones for the full sample, which gives ``mean``) and must weight the speaker's data by
    that count; replicates where it returns NaN are left out. Fewer than two speakers: NaN interval."""
    names = list(speakers)
    if len(set(names)) != len(names):
        raise ValueError("speakers must be distinct names (one entry per speaker)")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_speakers = len(names)
    point = float(statistic(np.ones(n_speakers, dtype=np.int64))) if n_speakers else math.nan
    if n_speakers < 2:
        return Interval(point, math.nan, math.nan, level, n_speakers, 0, n_resamples)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_speakers, size=(n_resamples, n_speakers))
    stats = np.array([statistic(np.bincount(row, minlength=n_speakers)) for row in drawn], dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return Interval(point, math.nan, math.nan, level, n_speakers, 0, n_resamples)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return Interval(point, float(low), float(high), level, n_speakers, 0, n_resamples)


def paired_difference(values_a: Sequence[float], values_b: Sequence[float], speakers: Sequence[str], *,
                      n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Mean of A − B over the episodes both scored (``values_a[i]`` and ``values_b[i]`` are the same episode, of
    speaker ``speakers[i]``) and its bootstrap-over-speakers interval. Episodes where either is not finite are
    left out, so the mean can differ from mean(A) − mean(B) when the two methods failed on different episodes."""
    a = np.asarray(values_a, dtype=np.float64).ravel()
    b = np.asarray(values_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values must be of the same episodes: {a.size} and {b.size} values")
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, and left out like any non-finite difference
        return speaker_bootstrap(a - b, speakers, n_resamples=n_resamples, level=level, seed=seed)


def intervals_by_step(rows: Sequence[Sequence[float]], steps: Sequence[int], speakers: Sequence[str], *,
                      n_resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                      seed: int = 0) -> dict[int, Interval]:
    """``speaker_bootstrap`` of each column of ``rows`` ([episode][step index], the harness's per-episode layout)
    keyed by the integer step count."""
    table = np.asarray(rows, dtype=np.float64)
    if table.ndim != 2 or table.shape != (len(speakers), len(steps)):
        raise ValueError(f"rows must be [episodes={len(speakers)}][steps={len(steps)}], got shape {table.shape}")
    return {int(k): speaker_bootstrap(table[:, j], speakers, n_resamples=n_resamples, level=level, seed=seed)
            for j, k in enumerate(steps)}


def paired_by_step(rows_a: Sequence[Sequence[float]], rows_b: Sequence[Sequence[float]], steps: Sequence[int],
                   speakers: Sequence[str], **options) -> dict[int, Interval]:
    """``paired_difference`` of two methods' per-episode tables ([episode][step index], same episodes), by step."""
    a, b = np.asarray(rows_a, dtype=np.float64), np.asarray(rows_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired tables must be of the same episodes and steps: {a.shape} and {b.shape}")
    with np.errstate(invalid="ignore"):
        return intervals_by_step(a - b, steps, speakers, **options)


def as_table(intervals: Mapping[int, Interval]) -> dict[int, dict]:
    """``{step: {mean, ci_low, ci_high}}`` (integer keys; the result file writes them as strings)."""
    return {int(k): v.as_dict() for k, v in intervals.items()}
