"""Reference levels for speaker similarity and EER, measured on the evaluation's own episodes, and gap closed.

A similarity of 0.6 means little alone: with Resemblyzer d-vectors a real recording of *another* person already
scores ~0.57 against a speaker's clips and a real recording of the speaker ~0.88. So every episode is scored
three ways with one pairing (``candidate_similarity``: each candidate clip's d-vector against the mean d-vector of
the episode's support clips, averaged over the candidates):

    same speaker   candidates = the episode's real query recordings
    stranger       candidates = the real query recordings of each other test speaker in turn, averaged over them
    a method       candidates = its synthesized query sentences (``episode_similarities``)

and **gap closed** = (s − stranger) / (same − stranger) per episode: 0 is "as like the speaker as a random other
person", 1 "as like them as their own recordings". The EER levels use the same trials as a method's
(``candidate_eer``: ``metrics.verification_eer`` with every candidate of speaker s against every support clip of
every speaker, positive when the speaker matches): candidates = the real queries gives the same-speaker EER; the
stranger EER puts another speaker's real queries in every speaker's place (each cyclic shift of the speaker order
is one such assignment, and the EER is averaged over all of them, so every other speaker stands in once).

Why the support clips are the target, for references and methods alike: the real query recordings are the
same-speaker candidates, so they cannot also be the target (a clip scored against a centroid it is part of is
flattered). The support clips are what the method adapted from, and what a user has of a new voice.

Everything takes plain d-vectors (``EpisodeEmbeddings``) and calls ``metrics``' similarity and EER functions; it
does not know how the embeddings were made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from metatts.evaluation.bootstrap import Interval, bootstrap_statistic
from metatts.evaluation.metrics import equal_error_rate, mean_embedding, similarity_matrix, verification_eer


@dataclass(frozen=True)
class EpisodeEmbeddings:
    """The real recordings of one episode as d-vectors: its ``query`` utterances [Q, D] and ``support`` clips
    [N, D] (rows L2-normalized; a NaN row is a clip the encoder could not embed)."""

    speaker: str
    query: np.ndarray
    support: np.ndarray


def candidate_similarity(candidates: np.ndarray, support: np.ndarray) -> float:
    """Mean over the finite rows of ``candidates`` [C, D] of their cosine with the mean d-vector of ``support``
    [N, D] (``metrics.mean_embedding``: NaN rows left out). NaN when no candidate is finite."""
    cosines = similarity_matrix(candidates, mean_embedding(support)[None])[:, 0]
    cosines = cosines[np.isfinite(cosines)]
    return float(cosines.mean()) if cosines.size else math.nan


def episode_similarities(episodes: Sequence[EpisodeEmbeddings], candidates: Sequence[np.ndarray]) -> np.ndarray:
    """``candidate_similarity`` of each episode's candidates (e.g. a method's synthesized queries) with that
    episode's support clips: [E] float64."""
    if len(candidates) != len(episodes):
        raise ValueError(f"{len(candidates)} candidate sets for {len(episodes)} episodes")
    return np.array([candidate_similarity(c, e.support) for c, e in zip(candidates, episodes)], dtype=np.float64)


def _distinct_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack embedding blocks, keeping one copy of rows that are bit-identical (one clip in two episodes)."""
    stacked = np.concatenate([np.atleast_2d(np.asarray(r, dtype=np.float64)) for r in rows])
    seen, keep = set(), []
    for i, row in enumerate(stacked):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return stacked[keep]


def candidate_eer(episodes: Sequence[EpisodeEmbeddings], candidates: Sequence[np.ndarray]) -> float:
    """Verification EER of the candidates (per episode, pooled by speaker) against the support clips of all the
    episodes' speakers (``metrics.verification_eer``). NaN with fewer than two speakers (no negative trial) or
    when every trial involves an unusable clip."""
    if len(candidates) != len(episodes):
        raise ValueError(f"{len(candidates)} candidate sets for {len(episodes)} episodes")
    by_speaker: dict[str, list[np.ndarray]] = {}
    support: dict[str, list[np.ndarray]] = {}
    for episode, rows in zip(episodes, candidates):
        by_speaker.setdefault(episode.speaker, []).append(rows)
        support.setdefault(episode.speaker, []).append(episode.support)
    if len(by_speaker) < 2:
        return math.nan
    try:
        return verification_eer({s: _distinct_rows(v) for s, v in by_speaker.items()},
                                {s: _distinct_rows(v) for s, v in support.items()}).eer
    except ValueError:  # every trial NaN (nothing embeddable)
        return math.nan


def eer_interval(episodes: Sequence[EpisodeEmbeddings], candidates: Sequence[np.ndarray], *,
                 n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """``candidate_eer`` (the interval's ``mean``) with its bootstrap-over-speakers interval. A replicate draws the
    speakers with replacement and keeps the trials of ``candidate_eer`` with each (candidate speaker s, support
    speaker r) block repeated c_s·c_r times (c: how often each was drawn), positive when s == r, so a speaker drawn
    twice is one speaker seen twice, not two speakers; ``metrics.equal_error_rate`` scores the replicate."""
    if len(candidates) != len(episodes):
        raise ValueError(f"{len(candidates)} candidate sets for {len(episodes)} episodes")
    order = list(dict.fromkeys(e.speaker for e in episodes))
    index = {s: i for i, s in enumerate(order)}
    by_speaker: dict[str, list[np.ndarray]] = {}
    support: dict[str, list[np.ndarray]] = {}
    for episode, rows in zip(episodes, candidates):
        by_speaker.setdefault(episode.speaker, []).append(rows)
        support.setdefault(episode.speaker, []).append(episode.support)
    scores, first, second = [], [], []
    for s in order:
        synth = _distinct_rows(by_speaker[s])
        for r in order:
            cosines = similarity_matrix(synth, _distinct_rows(support[r])).ravel()
            cosines = cosines[np.isfinite(cosines)]  # trials with an unusable clip are skipped, as in verification_eer
            scores.append(cosines)
            first.append(np.full(cosines.size, index[s]))
            second.append(np.full(cosines.size, index[r]))
    scores, first, second = np.concatenate(scores), np.concatenate(first), np.concatenate(second)
    labels = first == second

    def statistic(counts: np.ndarray) -> float:
        weights = counts[first] * counts[second]
        replicate, same = np.repeat(scores, weights), np.repeat(labels, weights)
        if not same.any() or same.all():
            return math.nan
        return equal_error_rate(replicate, same)[0]

    return bootstrap_statistic(order, statistic, n_resamples=n_resamples, level=level, seed=seed)


def stranger_candidates(episodes: Sequence[EpisodeEmbeddings], shift: int) -> list[np.ndarray]:
    """For each episode, the real query recordings of the speaker ``shift`` places further in the (first-seen)
    speaker order, all its episodes' queries together: a stranger standing in for the episode's speaker.
    ``shift`` in 1 .. speakers − 1, so nobody stands in for themselves."""
    order = list(dict.fromkeys(e.speaker for e in episodes))
    if not 1 <= shift < len(order):
        raise ValueError(f"shift must be in [1, {len(order) - 1}] for {len(order)} speakers, got {shift}")
    queries: dict[str, list[np.ndarray]] = {}
    for episode in episodes:
        queries.setdefault(episode.speaker, []).append(episode.query)
    pooled = {s: _distinct_rows(v) for s, v in queries.items()}
    position = {s: i for i, s in enumerate(order)}
    return [pooled[order[(position[e.speaker] + shift) % len(order)]] for e in episodes]


def gap_closed(similarity, stranger, same):
    """(similarity − stranger) / (same − stranger), elementwise (scalars or arrays). NaN where the same-speaker
    level is not above the stranger level (the encoder cannot tell that speaker from others, so no gap exists)."""
    s, lo, hi = (np.asarray(x, dtype=np.float64) for x in (similarity, stranger, same))
    gap = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(gap > 0, (s - lo) / np.where(gap > 0, gap, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class ReferenceLevels:
    """Same-speaker and stranger levels of the episodes, in their order (arrays [E])."""

    speakers: tuple[str, ...]
    same_speaker: np.ndarray  # similarity of the episode's real queries to its support
    stranger: np.ndarray  # mean similarity of the other test speakers' real queries to the episode's support
    eer_same_speaker: float
    eer_stranger: float  # mean over the cyclic stand-in assignments

    def gap_closed(self, similarities: Sequence[float]) -> np.ndarray:
        """Per-episode gap closed of a method's per-episode similarities (``episode_similarities``): [E]."""
        similarities = np.asarray(similarities, dtype=np.float64)
        if similarities.shape != self.same_speaker.shape:
            raise ValueError(f"{similarities.size} similarities for {self.same_speaker.size} episodes")
        return gap_closed(similarities, self.stranger, self.same_speaker)

    def summary(self) -> dict:
        """``{"same_speaker": {"similarity", "eer"}, "stranger": {...}}``: means over episodes (the result file's
        ``references`` entry for similarity and EER)."""
        def mean(values):
            finite = values[np.isfinite(values)]
            return float(finite.mean()) if finite.size else math.nan

        return {"same_speaker": {"similarity": mean(self.same_speaker), "eer": self.eer_same_speaker},
                "stranger": {"similarity": mean(self.stranger), "eer": self.eer_stranger}}


def reference_levels(episodes: Sequence[EpisodeEmbeddings]) -> ReferenceLevels:
    """Same-speaker and stranger similarity per episode and EER over all, with the pairing methods are scored
    with. Needs episodes of at least two speakers (a stranger has to be one of them)."""
    if not episodes:
        raise ValueError("no episode")
    order = list(dict.fromkeys(e.speaker for e in episodes))
    if len(order) < 2:
        raise ValueError(f"reference levels need episodes of at least 2 speakers (a stranger is another test "
                         f"speaker), got only {order[0]}")
    real = [e.query for e in episodes]
    same = episode_similarities(episodes, real)
    shifts = range(1, len(order))
    stranger_sets = [stranger_candidates(episodes, k) for k in shifts]
    table = np.array([episode_similarities(episodes, c) for c in stranger_sets])  # [shifts, E]
    finite = np.isfinite(table)
    with np.errstate(invalid="ignore", divide="ignore"):
        stranger = np.where(finite, table, 0.0).sum(axis=0) / finite.sum(axis=0)  # NaN where no stranger scored
    eers = np.array([candidate_eer(episodes, c) for c in stranger_sets])
    eer_stranger = float(eers[np.isfinite(eers)].mean()) if np.isfinite(eers).any() else math.nan
    return ReferenceLevels(speakers=tuple(e.speaker for e in episodes), same_speaker=same, stranger=stranger,
                           eer_same_speaker=candidate_eer(episodes, real), eer_stranger=eer_stranger)
