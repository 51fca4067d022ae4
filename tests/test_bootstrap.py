"""Bootstrap over speakers against known distributions: coverage, width, grouping and pairing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metatts.evaluation.bootstrap import (
    as_table,
    intervals_by_step,
    paired_by_step,
    paired_difference,
    speaker_bootstrap,
)

TRIALS = 300
RESAMPLES = 2000


def _speakers(n_speakers: int, per_speaker: int) -> list[str]:
    return [f"s{i:02d}" for i in range(n_speakers) for _ in range(per_speaker)]


def test_interval_covers_the_true_mean_about_95_percent_with_the_normal_width():
    mu, sigma, n = 3.0, 2.0, 20
    speakers = _speakers(n, 1)
    covered, widths = 0, []
    for seed in range(TRIALS):
        values = np.random.default_rng(1000 + seed).normal(mu, sigma, n)
        interval = speaker_bootstrap(values, speakers, n_resamples=RESAMPLES, seed=seed)
        assert interval.mean == pytest.approx(values.mean())
        assert interval.ci_low < interval.mean < interval.ci_high
        covered += interval.ci_low <= mu <= interval.ci_high
        widths.append(interval.ci_high - interval.ci_low)
    # The percentile interval of a mean of 20 under-covers slightly (plug-in variance); 300 trials: SE ~1.3 %.
    assert 0.89 <= covered / TRIALS <= 0.98
    normal_width = 2 * 1.96 * sigma / math.sqrt(n)
    assert np.mean(widths) == pytest.approx(normal_width, rel=0.08)


def test_correlated_episodes_of_a_speaker_widen_the_interval_as_they_should():
    # Each speaker has its own offset (sd tau) shared by its episodes: the mean's standard error is
    # sqrt((tau² + sigma²/m) / S), much more than sqrt((tau² + sigma²) / (S m)) for independent episodes.
    tau, sigma, n_speakers, per_speaker = 1.0, 0.5, 12, 6
    speakers = _speakers(n_speakers, per_speaker)
    as_independent = [f"e{i}" for i in range(len(speakers))]  # every episode its own "speaker"
    covered = {"speaker": 0, "episode": 0}
    widths = {"speaker": [], "episode": []}
    for seed in range(TRIALS):
        rng = np.random.default_rng(5000 + seed)
        values = np.repeat(rng.normal(0.0, tau, n_speakers), per_speaker) + rng.normal(0.0, sigma, len(speakers))
        for name, groups in (("speaker", speakers), ("episode", as_independent)):
            interval = speaker_bootstrap(values, groups, n_resamples=RESAMPLES, seed=seed)
            covered[name] += interval.ci_low <= 0.0 <= interval.ci_high
            widths[name].append(interval.ci_high - interval.ci_low)
    true_se = math.sqrt((tau ** 2 + sigma ** 2 / per_speaker) / n_speakers)
    assert np.mean(widths["speaker"]) == pytest.approx(2 * 1.96 * true_se, rel=0.12)
    assert np.mean(widths["speaker"]) > 1.8 * np.mean(widths["episode"])
    assert covered["speaker"] / TRIALS >= 0.87
    assert covered["episode"] / TRIALS <= 0.75  # ignoring the grouping is overconfident


def test_paired_difference_cancels_what_both_methods_share():
    # Both methods inherit each speaker's large offset; method A is better by delta on every episode up to noise.
    delta, n_speakers, per_speaker = 0.05, 16, 2
    speakers = _speakers(n_speakers, per_speaker)
    covered, paired_widths, separate_widths = 0, [], []
    for seed in range(100):
        rng = np.random.default_rng(9000 + seed)
        shared = np.repeat(rng.normal(0.6, 0.1, n_speakers), per_speaker) + rng.normal(0, 0.05, len(speakers))
        a = shared + delta + rng.normal(0, 0.02, len(speakers))
        b = shared + rng.normal(0, 0.02, len(speakers))
        diff = paired_difference(a, b, speakers, n_resamples=RESAMPLES, seed=seed)
        assert diff.mean == pytest.approx(np.mean(a - b))
        covered += diff.ci_low <= delta <= diff.ci_high
        paired_widths.append(diff.ci_high - diff.ci_low)
        wa = speaker_bootstrap(a, speakers, n_resamples=RESAMPLES, seed=seed)
        wb = speaker_bootstrap(b, speakers, n_resamples=RESAMPLES, seed=seed)
        separate_widths.append(math.hypot(wa.ci_high - wa.ci_low, wb.ci_high - wb.ci_low))
    assert covered >= 87
    assert np.mean(paired_widths) < 0.25 * np.mean(separate_widths)


def test_seeded_and_reproducible():
    values = np.random.default_rng(0).normal(size=30)
    speakers = _speakers(10, 3)
    one = speaker_bootstrap(values, speakers, n_resamples=500, seed=7)
    assert speaker_bootstrap(values, speakers, n_resamples=500, seed=7) == one
    assert speaker_bootstrap(values, speakers, n_resamples=500, seed=8) != one


def test_nan_episodes_are_left_out_and_one_speaker_gives_no_interval():
    values = [1.0, math.nan, 3.0, 5.0, math.inf, 7.0]
    speakers = ["a", "a", "b", "b", "c", "c"]
    interval = speaker_bootstrap(values, speakers, n_resamples=200)
    assert (interval.mean, interval.n_episodes, interval.n_speakers) == (4.0, 4, 3)
    only_one = speaker_bootstrap([1.0, 2.0, math.nan], ["a", "a", "b"])
    assert only_one.mean == 1.5 and only_one.n_speakers == 1
    assert math.isnan(only_one.ci_low) and math.isnan(only_one.ci_high)
    empty = speaker_bootstrap([math.nan], ["a"])
    assert math.isnan(empty.mean) and empty.n_episodes == 0


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="3 values but 2 speakers"):
        speaker_bootstrap([1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference([1, 2], [1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="level"):
        speaker_bootstrap([1, 2], ["a", "b"], level=95)


def test_tables_by_step_match_the_single_column_calls():
    rng = np.random.default_rng(3)
    speakers = _speakers(6, 2)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    steps = [0, 5, 20]
    by_step = intervals_by_step(a, steps, speakers, n_resamples=300, seed=1)
    assert list(by_step) == steps
    assert by_step[5] == speaker_bootstrap(a[:, 1], speakers, n_resamples=300, seed=1)
    paired = paired_by_step(a, b, steps, speakers, n_resamples=300, seed=1)
    assert paired[20] == paired_difference(a[:, 2], b[:, 2], speakers, n_resamples=300, seed=1)
    table = as_table(by_step)
    assert set(table) == {0, 5, 20} and set(table[0]) == {"mean", "ci_low", "ci_high"}
    with pytest.raises(ValueError, match="rows must be"):
        intervals_by_step(a[:, :2], steps, speakers)
