"""Synthesis and scores of one method at one step count on one episode.

    params ─ render ─▶ Rendered: the Q query sentences synthesized free-running (their phonemes; predicted durations,
                       pitch and energy), vocoded (one batch on a GPU), their d-vectors, and the teacher-forced
                       query mel L1
    Rendered ─ each scorer of the run ─▶ {metric: value} for the episode

A scorer is one class registered with ``@scorer``; it names the metrics it returns and reads the ``Rendered``
output and the episode's ``Reference`` (the real support and query recordings, their d-vectors and analysis).
``build_scorers`` makes the run's instances: a scorer whose optional package is missing (``metatts[eval]``) is
replaced by one that returns NaN for its metrics, and its one-line reason is kept for the result file. Scorers with
``on_real`` are also applied once per episode to the real query recordings: that is the reference row a
synthesized voice's CER or DNSMOS is read against. Metrics pooled over every episode (the verification EER) and
those derived from the reference levels (gap closed) are scored in ``evaluation.results``.

    similarity     cosine of Resemblyzer d-vectors: each synthesized query vs the mean d-vector of the episode's
                   support clips (``references.candidate_similarity``, the pairing the reference levels use);
                   mean over the Q sentences
    mcd, f0_rmse   each synthesized query against its real recording (``metrics.compare_mels`` on the same analysis
                   ``compare_audio`` does): MCD in dB after DTW, log-F0 RMSE in cents over frames voiced in both
    mel_l1         teacher-forced on the query with the aligner's durations, as ``adaptation_curve``
    cer, wer       PocketSphinx (``intelligibility.Recognizer``): edits over the episode's Q sentences pooled
    dnsmos         DNSMOS P.835 overall (``naturalness.Dnsmos``), mean over the Q sentences
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from metatts.checkpoints import StoreModel
from metatts.episodes.sampler import Episode
from metatts.evaluation.metrics import compare_mels
from metatts.evaluation.optional import ScorerUnavailable
from metatts.evaluation.real_audio import RealAudio, analyse
from metatts.evaluation.references import candidate_similarity
from metatts.evaluation.stats import nanmean
from metatts.model.acoustic import infer_with
from metatts.model.batch import NEW_SPEAKER, Batch
from metatts.model.losses import FastSpeech2Loss


@dataclass
class Reference:
    """An episode's real recordings as the scorers compare against them."""

    episode: Episode
    real: RealAudio
    embeddings: np.ndarray  # [Q, 256] d-vectors of the real query utterances
    support_embeddings: np.ndarray  # [N, 256] d-vectors of the support clips (the similarity target)
    max_frames: int  # cap on synthesized frames (a broken duration predictor must not run away)

    @property
    def texts(self) -> list[str]:
        """The query sentences' transcripts (what the recognizer should hear)."""
        return [self.real.store.by_id[u].text for u in self.episode.query]

    def real_waves(self) -> list[np.ndarray]:
        return [self.real.wave(u) for u in self.episode.query]


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


def query_mel_l1(ev: StoreModel, params: Mapping[str, Tensor], query: Batch) -> float:
    """Teacher-forced query mel L1 with ``params`` in place of the model's tensors (postnet output if any)."""
    with torch.no_grad():
        terms = FastSpeech2Loss()(functional_call(ev.model, dict(params), (query,)), query)
    return float(terms.postnet_mel if ev.postnet else terms.mel)


def vocode_batch(vocoder, mels: Tensor, lengths: Sequence[int], floor: float) -> list[np.ndarray]:
    """Vocode the [B, n_mels, T] mels of the given frame lengths, each wave cut to its own frames.

    On a GPU in one call: frames past each length are set to ``floor`` (the log of the mel floor: silence, not the
    0 = loud of a zero pad), and the vocoder's contract (frame t only shapes samples near t × hop) makes the cut
    waves those of separate calls. On the CPU one sentence at a time: padding is work a CPU pays for in full
    (measured with HiFi-GAN V1 on one thread, five speechocean762 sentences of 101-409 frames: 36.8 s one by one,
    58.7 s as one padded batch)."""
    lengths = [max(int(n), 1) for n in lengths]
    hop = int(vocoder.hop_length)
    with torch.no_grad():
        if mels.device.type == "cpu":
            return [vocoder(mels[i:i + 1, :, :n].float())[0, :n * hop].numpy().astype(np.float32)
                    for i, n in enumerate(lengths)]
        mels = mels[:, :, :max(lengths)].float().clone()
        for i, n in enumerate(lengths):
            mels[i, :, n:] = floor
        waves = vocoder(mels)
    return [waves[i, :n * hop].cpu().numpy().astype(np.float32) for i, n in enumerate(lengths)]


def render(ev: StoreModel, params: Mapping[str, Tensor], query: Batch, reference: Reference, vocoder,
           encoder) -> Rendered:
    """Synthesize and vocode the queries with ``params`` in place of the model's tensors (``infer_with``)."""
    model = ev.model
    mel_l1 = query_mel_l1(ev, params, query)
    speakers = torch.full((query.size,), NEW_SPEAKER, dtype=torch.long, device=query.phonemes.device)
    synthesis = infer_with(model, params, query.phonemes, query.phoneme_lengths, speakers,
                           max_frames=reference.max_frames)
    waves = vocode_batch(vocoder, synthesis.mels, synthesis.mel_lengths.tolist(), math.log(ev.config.audio.log_floor))
    rate = ev.config.audio.sample_rate
    return Rendered(waves=waves, embeddings=encoder.embed_many(waves, rate, on_error="nan"), mel_l1=mel_l1,
                    sample_rate=rate)


class Scorer:
    """Scores of one ``Rendered`` output against its episode's ``Reference``: ``score_waves`` of its waves unless
    a subclass reads more (d-vectors, mel L1). ``on_real``: the scorer also reads the real query recordings
    (``score_real``), which gives the reference row of its metrics."""

    metrics: ClassVar[tuple[str, ...]]
    on_real: ClassVar[bool] = False
    costly: ClassVar[bool] = False  # seconds per sentence: may be limited to some step counts (``listener_steps``)
    skipped: str | None = None  # why the scorer gives NaN everywhere (an optional package missing)

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        return self.score_waves(rendered.waves, rendered.sample_rate, reference)

    def score_real(self, reference: Reference) -> dict[str, float]:
        return self.score_waves(reference.real_waves(), reference.real.audio.sample_rate, reference)

    def score_waves(self, waves: Sequence[np.ndarray], rate: int, reference: Reference) -> dict[str, float]:
        raise NotImplementedError


REGISTRY: list[type[Scorer]] = []


def scorer(cls: type[Scorer]) -> type[Scorer]:
    """Register a scorer class: its metrics join every method's results (per episode and as means over episodes)."""
    REGISTRY.append(cls)
    return cls


@scorer
class SimilarityScorer(Scorer):
    metrics = ("similarity",)

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        return {"similarity": candidate_similarity(rendered.embeddings, reference.support_embeddings)}


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


@scorer
class IntelligibilityScorer(Scorer):
    """CER and WER of what PocketSphinx hears in the Q sentences, edits pooled over them."""

    metrics, on_real, costly = ("cer", "wer"), True, True

    def __init__(self):
        from metatts.evaluation.intelligibility import Recognizer

        self.recognizer = Recognizer()

    def score_waves(self, waves, rate, reference) -> dict[str, float]:
        from metatts.evaluation.intelligibility import corpus_error_rates

        rates = corpus_error_rates(self.recognizer.score(waves, rate, reference.texts))
        return {"cer": rates.cer, "wer": rates.wer}


@scorer
class NaturalnessScorer(Scorer):
    """DNSMOS P.835 overall, mean over the Q sentences."""

    metrics, on_real, costly = ("dnsmos",), True, True

    def __init__(self):
        from metatts.evaluation.naturalness import Dnsmos

        self.dnsmos = Dnsmos(threads=1)

    def score_waves(self, waves, rate, reference) -> dict[str, float]:
        return {"dnsmos": nanmean([self.dnsmos.score(w, rate).ovrl for w in waves])}


class Skipped(Scorer):
    """Stands in for a scorer that cannot run here: NaN for each of its metrics, with the reason."""

    def __init__(self, cls: type[Scorer], reason: str):
        self.metrics, self.on_real, self.costly, self.skipped = cls.metrics, cls.on_real, cls.costly, reason

    def __call__(self, rendered: Rendered, reference: Reference) -> dict[str, float]:
        return {m: float("nan") for m in self.metrics}

    def score_real(self, reference: Reference) -> dict[str, float]:
        return {m: float("nan") for m in self.metrics}


def build_scorers(log: Callable[[str], None] = print) -> list[Scorer]:
    """One instance of each registered scorer; an optional one that cannot run is ``Skipped`` with its one-line
    reason logged ("... skipped: install metatts[eval] ...")."""
    out: list[Scorer] = []
    for cls in REGISTRY:
        try:
            out.append(cls())
        except ScorerUnavailable as error:
            log(str(error))
            out.append(Skipped(cls, str(error)))
    return out


def episode_metrics(scorers: Sequence[Scorer] | None = None) -> list[str]:
    """Every metric the scorers give (default: the registered ones), in registration order."""
    return [m for s in (scorers if scorers is not None else REGISTRY) for m in s.metrics]


def score(scorers: Sequence[Scorer], rendered: Rendered, reference: Reference, costly: bool = True) -> dict[str, float]:
    """Every scorer's metrics; with ``costly`` False the costly ones (recognizer, DNSMOS) give NaN, not run."""
    out: dict[str, float] = {}
    for s in scorers:
        out.update(s(rendered, reference) if costly or not s.costly else {m: float("nan") for m in s.metrics})
    return out


def score_real(scorers: Sequence[Scorer], reference: Reference) -> dict[str, float]:
    """The ``on_real`` scorers' metrics of the episode's real query recordings (the reference row)."""
    out: dict[str, float] = {}
    for s in scorers:
        if s.on_real:
            out.update(s.score_real(reference))
    return out
