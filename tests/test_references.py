"""Same-speaker and stranger reference levels and gap closed: on clustered d-vectors, and on real speech."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metatts.evaluation.metrics import mean_embedding, similarity_matrix, verification_eer
from metatts.evaluation.references import (
    EpisodeEmbeddings,
    candidate_eer,
    candidate_similarity,
    eer_interval,
    episode_similarities,
    gap_closed,
    reference_levels,
    stranger_candidates,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _episodes(n_speakers=5, per_speaker=2, shots=5, queries=4, noise=0.6, seed=0) -> list[EpisodeEmbeddings]:
    """Speakers as random directions in 32-d, clips as a speaker's direction plus noise (non-negative like
    Resemblyzer's d-vectors, so strangers are similar too, not orthogonal)."""
    rng = np.random.default_rng(seed)
    centres = _unit(np.abs(rng.normal(size=(n_speakers, 32))))

    def clips(s, n):
        return _unit(np.abs(centres[s] + noise * rng.normal(size=(n, 32)) / math.sqrt(32)))

    return [EpisodeEmbeddings(f"spk{s}", query=clips(s, queries), support=clips(s, shots))
            for s in range(n_speakers) for _ in range(per_speaker)]


def test_similarity_is_the_cosine_with_the_support_centroid_averaged_over_candidates():
    episode = _episodes()[0]
    expected = similarity_matrix(episode.query, mean_embedding(episode.support)[None])[:, 0].mean()
    assert candidate_similarity(episode.query, episode.support) == pytest.approx(expected)
    with_nan = np.vstack([episode.query, np.full((1, 32), np.nan)])  # an unusable clip is left out
    assert candidate_similarity(with_nan, episode.support) == pytest.approx(expected)
    assert math.isnan(candidate_similarity(np.full((2, 32), np.nan), episode.support))


def test_returning_the_real_query_audio_closes_the_whole_gap_and_a_stranger_none():
    episodes = _episodes()
    levels = reference_levels(episodes)
    assert (levels.same_speaker > levels.stranger + 0.05).all()
    # A "method" whose output is the real query recordings: gap closed 1 on every episode, the same-speaker EER.
    real = [e.query for e in episodes]
    np.testing.assert_allclose(levels.gap_closed(episode_similarities(episodes, real)), 1.0)
    assert candidate_eer(episodes, real) == levels.eer_same_speaker
    # A "method" that outputs another test speaker's real voice: gap closed ~0 for each stand-in, exactly 0 over
    # all of them (that is what the stranger level is), and the stranger EER.
    shifts = range(1, len({e.speaker for e in episodes}))
    gaps = np.array([levels.gap_closed(episode_similarities(episodes, stranger_candidates(episodes, k)))
                     for k in shifts])
    assert np.abs(gaps.mean(axis=1)).max() < 0.35
    np.testing.assert_allclose(gaps.mean(axis=0), 0.0, atol=1e-9)
    eers = [candidate_eer(episodes, stranger_candidates(episodes, k)) for k in shifts]
    assert levels.eer_stranger == pytest.approx(np.mean(eers))
    assert levels.eer_same_speaker < 0.2 and levels.eer_stranger > 0.5


def test_stranger_candidates_never_use_the_speakers_own_recordings():
    episodes = _episodes(n_speakers=3, per_speaker=2)
    own = {e.speaker: np.vstack([x.query for x in episodes if x.speaker == e.speaker]) for e in episodes}
    for shift in (1, 2):
        for episode, stand_in in zip(episodes, stranger_candidates(episodes, shift)):
            others = [s for s, rows in own.items() if rows.shape == stand_in.shape and np.array_equal(rows, stand_in)]
            assert len(others) == 1 and others[0] != episode.speaker
    with pytest.raises(ValueError, match="shift must be in"):
        stranger_candidates(episodes, 3)


def test_eer_uses_metrics_verification_eer_with_support_clips_as_the_real_side():
    episodes = _episodes(n_speakers=4, per_speaker=2)
    candidates = [e.query for e in episodes]
    by_speaker = {}
    support = {}
    for e in episodes:
        by_speaker.setdefault(e.speaker, []).append(e.query)
        support.setdefault(e.speaker, []).append(e.support)
    expected = verification_eer({s: np.vstack(v) for s, v in by_speaker.items()},
                                {s: np.vstack(v) for s, v in support.items()}).eer
    assert candidate_eer(episodes, candidates) == expected
    assert math.isnan(candidate_eer(episodes[:2], candidates[:2]))  # one speaker: no negative trial


def test_gap_closed_formula_and_degenerate_gap():
    assert gap_closed(0.7, 0.6, 0.9) == pytest.approx(1 / 3)
    assert gap_closed(0.6, 0.6, 0.9) == 0.0 and gap_closed(0.9, 0.6, 0.9) == 1.0
    np.testing.assert_allclose(gap_closed([0.5, 0.95], 0.6, 0.9), [-1 / 3, 7 / 6])  # worse than a stranger: < 0
    assert math.isnan(gap_closed(0.7, 0.8, 0.8)) and math.isnan(gap_closed(0.7, 0.9, 0.8))


def test_summary_and_bad_input():
    levels = reference_levels(_episodes())
    summary = levels.summary()
    assert set(summary) == {"same_speaker", "stranger"}
    assert summary["same_speaker"]["similarity"] == pytest.approx(levels.same_speaker.mean())
    assert summary["stranger"]["eer"] == levels.eer_stranger
    with pytest.raises(ValueError, match="at least 2 speakers"):
        reference_levels(_episodes(n_speakers=1))
    with pytest.raises(ValueError, match="similarities for"):
        levels.gap_closed([0.5])
    with pytest.raises(ValueError, match="candidate sets for"):
        episode_similarities(_episodes(), [np.zeros((1, 32))])


@pytest.mark.slow
def test_real_speech_levels_on_speechocean762(speechocean):
    """Resemblyzer d-vectors of real adults: own recordings ~0.85-0.9, other speakers clearly lower."""
    from metatts.corpus.readers import read_corpus
    from metatts.evaluation.metrics import SpeakerEncoder
    from metatts.features.audio import load_audio

    scan = read_corpus(speechocean)
    speakers = sorted(scan.speakers())[:: 16][:6]
    encoder = SpeakerEncoder()
    episodes = []
    for speaker in speakers:
        utts = [u for u in scan.utterances if u.speaker == speaker][:10]
        embeddings = encoder.embed_many([load_audio(u.audio_path, 16000) for u in utts], 16000, on_error="nan")
        episodes.append(EpisodeEmbeddings(speaker, query=embeddings[5:], support=embeddings[:5]))
    levels = reference_levels(episodes)
    summary = levels.summary()
    assert summary["same_speaker"]["similarity"] > 0.8
    assert summary["same_speaker"]["similarity"] - summary["stranger"]["similarity"] > 0.15
    assert (levels.same_speaker > levels.stranger).all()
    assert levels.eer_same_speaker < 0.2 and levels.eer_stranger > 0.5
    np.testing.assert_allclose(levels.gap_closed(episode_similarities(episodes, [e.query for e in episodes])), 1.0)


def test_eer_interval_is_centred_on_the_pooled_eer_and_widens_with_fewer_speakers():
    many = _episodes(n_speakers=10, per_speaker=2, noise=1.6, seed=1)
    interval = eer_interval(many, [e.query for e in many], n_resamples=300, seed=0)
    assert interval.mean == candidate_eer(many, [e.query for e in many])
    assert interval.ci_low < interval.mean < interval.ci_high
    assert interval.n_speakers == 10
    few = many[:6]  # 3 speakers
    narrow = interval.ci_high - interval.ci_low
    small = eer_interval(few, [e.query for e in few], n_resamples=300, seed=0)
    wide = small.ci_high - small.ci_low
    assert wide > narrow
    alone = eer_interval(many[:2], [e.query for e in many[:2]])
    assert math.isnan(alone.mean) and math.isnan(alone.ci_low)
