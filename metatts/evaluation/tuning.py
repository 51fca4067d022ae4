"""Settings of the methods that are not meta-learned, chosen on meta-validation speakers, never on test ones.

A baseline adapted at an arbitrary rate is a straw man; one tuned on the test speakers is a leak. So every gradient
method with a ``tuning_grid`` (the speaker-group baseline: SGD rates; full fine-tuning: optimizer and rate) is run
with each setting of its grid on episodes of the store's ``val`` speakers (the meta-validation split, disjoint from
train and test), and the setting with the lowest **query mel L1 (teacher-forced), averaged over the step counts of
the evaluation's grid that take a step** wins: one number per setting that rewards a good curve, not one step
count. Teacher-forced L1 needs no vocoder, so tuning costs adaptation steps only. A setting whose adaptation
diverges scores NaN and is never chosen. The meta method is not tuned: it uses the rates it learned.

The choice, every setting's score, the metric and the val episodes used are recorded (``baselines_tuned`` in
results.json), so a reader can check both what was chosen and that no test speaker was touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from metatts.episodes.sampler import Episode
from metatts.episodes.tasks import TaskSuite, frozen_episodes
from metatts.evaluation.errors import EvaluationError
from metatts.evaluation.scoring import query_mel_l1

METRIC = "query mel L1 (teacher-forced) on meta-val episodes, mean over the grid's step counts > 0"


@dataclass
class Tuned:
    """One method's tuning: the settings tried, their scores (lower is better), the chosen one."""

    chosen: dict
    grid: list[dict]
    scores: list[float]
    metric: str
    episodes: list[Episode]  # the val episodes the scores come from

    def to_json(self) -> dict:
        return {"chosen": self.chosen, "grid": self.grid,
                "scores": [s if math.isfinite(s) else None for s in self.scores], "metric": self.metric,
                "speakers": sorted({e.speaker for e in self.episodes}),
                "episodes": [{"speaker": e.speaker, "support": list(e.support), "query": list(e.query)}
                             for e in self.episodes]}


def fixed(setting: dict, why: str) -> Tuned:
    """A setting the user fixed (``--baseline-lr``, ``--full-lr``): recorded as a one-point grid, not tuned."""
    return Tuned(chosen=dict(setting), grid=[dict(setting)], scores=[math.nan], metric=f"not tuned: {why}",
                 episodes=[])


def val_episodes(suite: TaskSuite, store, splits, tasks_per_speaker: int = 1, log=print) -> list[Episode]:
    """Episodes of the store's meta-validation speakers with the suite's shape (shots, queries, seed)."""
    if not splits.val:
        raise EvaluationError(f"the store {store.root} has no meta-validation speakers to tune the baselines on "
                              f"(data.val_speakers = 0): fix their settings (--baseline-lr, --full-lr) or re-split")
    val_suite = dataclasses.replace(suite, split="val", tasks_per_speaker=tasks_per_speaker)
    return frozen_episodes(val_suite, store, splits, log=log)


def setting_score(method, episodes: Sequence[Episode], grid: Sequence[int]) -> float:
    """Mean over ``episodes`` of the query mel L1 averaged over the step counts of ``grid`` above 0."""
    steps = [k for k in grid if k > 0] or list(grid)
    ev = method.model
    per_episode = []
    for episode in episodes:
        adapter = method.adapter(episode)
        query = method.query_batch(episode)
        values = []
        for k in steps:
            adapter.advance(k - adapter.steps)
            values.append(query_mel_l1(ev, adapter.params(), query))
        per_episode.append(float(np.mean(values)))
    score = float(np.mean(per_episode))
    return score if math.isfinite(score) else math.nan


def tune(make: Callable[[dict], object], settings: Sequence[dict], episodes: Sequence[Episode],
         grid: Sequence[int], log=print, name: str = "", remember=None) -> Tuned:
    """Score each setting (``make(setting)`` builds the method with it) on the val ``episodes``; pick the lowest.
    ``remember(method, episodes, grid, compute)``: a cache that returns a stored score or ``compute()``'s."""
    scores = []
    for setting in settings:
        method = make(setting)

        def compute(m=method):
            return setting_score(m, episodes, grid)

        scores.append(compute() if remember is None else remember(method, episodes, grid, compute))
        log(f"tuning {name}: {setting} -> {scores[-1]:.4f}")
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        raise EvaluationError(f"tuning {name}: every setting of {list(settings)} diverged on the meta-val episodes")
    best = min(finite, key=lambda i: scores[i])
    return Tuned(chosen=dict(settings[best]), grid=[dict(s) for s in settings], scores=scores, metric=METRIC,
                 episodes=list(episodes))
