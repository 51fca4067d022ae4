"""Synthesis and scores of one method at one step count on one episode.

    params ─ render ─▶ Rendered: the Q query sentences synthesized free-running (their phonemes; predicted durations,
                       pitch and energy) and vocoded, their d-vectors, and the teacher-forced query mel L1
    Rendered ─ each registered scorer ─▶ {metric: value} for the episode

A scorer is one class registered with ``@scorer``; it names the metrics it returns and reads the ``Rendered``
output and the episode's ``Reference`` (the real query recordings, their d-vectors and analysis). Metrics pooled
over every episode (the verification EER) are scored in ``evaluation.results`` from the kept d-vectors.

    similarity     cosine of Resemblyzer d-vectors: each synthesized query vs the mean d-vector of the real query
                   utterances of the episode; mean over the Q sentences
    mcd, f0_rmse   each synthesized query against its real recording (``metrics.compare_mels`` on the same analysis
                   ``compare_audio`` does): MCD in dB after DTW, log-F0 RMSE in cents over frames voiced in both
    mel_l1         teacher-forced on the query with the aligner's durations, as ``adaptation_curve``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from metatts.checkpoints import StoreModel
from metatts.episodes.sampler import Episode
from metatts.evaluation.metrics import compare_mels, similarity_matrix
from metatts.evaluation.real_audio import RealAudio, analyse
from metatts.evaluation.stats import nanmean
from metatts.model.acoustic import infer_with
from metatts.model.batch import NEW_SPEAKER, Batch
from metatts.model.losses import FastSpeech2Loss


@dataclass
class Reference:
    """An episode's real query recordings as the scorers compare against them."""

    episode: Episode
    real: RealAudio
    embeddings: np.ndarray  # [Q, 256] d-vectors of the real query utterances
    centroid: np.ndarray  # [256] their mean
    max_frames: int  # cap on synthesized frames (a broken duration predictor must not run away)


@dataclass
class Rendered:
    """One method's output on an episode's queries at one step count."""

    waves: list[np.ndarray]
    embeddings: np.ndarray  # [Q, 256] synthesized queries' d-vectors (NaN rows: unusable synthesis)
    mel_l1: float
    sample_rate: int

    @property
    def unusable(self) -> int:
        """Synthesized queries Resemblyzer could not embed."""
        return int((~np.isfinite(self.embeddings).all(axis=1)).sum())


def render(ev: StoreModel, params: Mapping[str, Tensor], query: Batch, reference: Reference, vocoder,
           encoder) -> Rendered:
    """Synthesize and vocode the queries with ``params`` in place of the model's tensors (``infer_with``)."""
    model = ev.model
    with torch.no_grad():
        terms = FastSpeech2Loss()(functional_call(model, dict(params), (query,)), query)
    speakers = torch.full((query.size,), NEW_SPEAKER, dtype=torch.long, device=query.phonemes.device)
    synthesis = infer_with(model, params, query.phonemes, query.phoneme_lengths, speakers,
                           max_frames=reference.max_frames)
    waves = []
    with torch.no_grad():
        for i in range(query.size):
            mel = synthesis.mels[i:i + 1, :, :max(int(synthesis.mel_lengths[i]), 1)]
            waves.append(vocoder(mel.float())[0].cpu().numpy().astype(np.float32))
    rate = ev.config.audio.sample_rate
    return Rendered(waves=waves, embeddings=encoder.embed_many(waves, rate, on_error="nan"),
                    mel_l1=float(terms.postnet_mel if ev.postnet else terms.mel), sample_rate=rate)


class Scorer:
    """Scores of one ``Rendered`` output against its episode's ``Reference``."""

    metrics: ClassVar[tuple[str, ...]]

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        raise NotImplementedError


SCORERS: list[Scorer] = []


def scorer(cls: type[Scorer]) -> type[Scorer]:
    """Register a scorer: its metrics join every method's results (per episode and as means over episodes)."""
    SCORERS.append(cls())
    return cls


@scorer
class SimilarityScorer(Scorer):
    metrics = ("similarity",)

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        cosines = similarity_matrix(rendered.embeddings, reference.centroid[None])[:, 0]
        return {"similarity": nanmean(cosines)}


@scorer
class AcousticScorer(Scorer):
    metrics = ("mcd", "f0_rmse")

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        mcds, f0s = [], []
        audio = reference.real.audio
        for utt, wave in zip(reference.episode.query, rendered.waves):
            real_mel, real_f0 = reference.real.analysis(utt)
            synth_mel, synth_f0 = analyse(wave, audio)
            comparison = compare_mels(real_mel, synth_mel, f0_a=real_f0, f0_b=synth_f0)
            mcds.append(comparison.mcd_db)
            f0s.append(comparison.f0_rmse_cents)
        return {"mcd": nanmean(mcds), "f0_rmse": nanmean(f0s)}


@scorer
class MelL1Scorer(Scorer):
    metrics = ("mel_l1",)

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        return {"mel_l1": rendered.mel_l1}


def episode_metrics() -> list[str]:
    """Every metric the registered scorers give, in registration order."""
    return [m for s in SCORERS for m in s.metrics]


def score(rendered: Rendered, reference: Reference) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in SCORERS:
        out.update(s(rendered, reference))
    return out
