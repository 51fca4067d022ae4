"""DNSMOS through speechmos: real speech against noise, input checks, and the skip line when it is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from metatts.evaluation.naturalness import Dnsmos, DnsmosScore
from metatts.evaluation.optional import ScorerUnavailable
from metatts.features.audio import AudioError


@pytest.fixture(scope="module")
def dnsmos() -> Dnsmos:
    try:
        return Dnsmos()
    except ScorerUnavailable as error:
        pytest.skip(str(error))


def test_missing_speechmos_is_one_skip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "speechmos.dnsmos", None)
    with pytest.raises(ScorerUnavailable, match=r"naturalness \(DNSMOS\) skipped: install metatts\[eval\]"):
        Dnsmos()


def test_bad_waves_are_clear_errors(dnsmos):
    for wave, reason in ((np.zeros(0), "no samples"), (np.zeros((2, 100)), "mono"),
                         (np.array([0.0, np.inf] * 800), "not finite")):
        with pytest.raises(AudioError, match=reason):
            dnsmos.score(wave, 16000)
    with pytest.raises(ValueError, match="threads"):
        Dnsmos(threads=0)


@pytest.mark.slow
def test_real_speech_scores_above_noise_and_its_own_shuffled_samples(dnsmos, vctk_mini):
    from metatts.corpus.readers import read_corpus
    from metatts.features.audio import load_audio

    scan = read_corpus(vctk_mini)
    utts = [next(u for u in scan.utterances if u.speaker == s) for s in sorted(scan.speakers())]
    waves = [load_audio(u.audio_path, 22050) for u in utts]
    rng = np.random.default_rng(0)
    real = [dnsmos.score(w, 22050) for w in waves]
    noise = [dnsmos.score(rng.normal(0.0, np.std(w), len(w)), 22050) for w in waves]
    # An overshooting wave (synthesis can exceed 1) is clipped rather than rejected.
    shuffled = [dnsmos.score(1.5 * rng.permutation(w) / np.abs(w).max(), 22050) for w in waves]
    assert all(isinstance(s, DnsmosScore) and 1.0 <= s.ovrl <= 5.0 for s in real + noise + shuffled)
    mean = {name: np.mean([s.ovrl for s in scores]) for name, scores in
            (("real", real), ("noise", noise), ("shuffled", shuffled))}
    assert mean["real"] > 2.8  # measured 3.24 over all 40 vctk-mini utterances (white noise: 1.09)
    assert mean["real"] > mean["noise"] + 1.0 and mean["real"] > mean["shuffled"] + 1.0
    assert min(s.sig for s in real) > max(s.sig for s in noise)
    assert dnsmos.score(waves[0], 22050) == real[0]  # deterministic
