"""Objective metrics for adapted voices: speaker similarity and verification EER from an external speaker
encoder, mel cepstral distortion and log-F0 error with DTW alignment, and masked mel L1.

Every function takes plain arrays (numpy, or CPU tensors where noted) and returns floats or small dataclasses;
nothing here reads files, and the only state is the speaker encoder's network, built on first use.

- **Speaker similarity** is the cosine of Resemblyzer d-vectors (GE2E, 256-d, non-negative and L2-normalized,
  so cosines lie in [0, 1]). ``SpeakerEncoder`` wraps its pretrained ``VoiceEncoder`` (the weights ship in the
  wheel).
- **EER** is read off the ROC with linear interpolation between ROC points where the miss and false-alarm
  rates cross; ``verification_eer`` builds the trials as Meta-TTS does: every (synthesized, real) pair of
  embeddings is a trial, positive when both are of one speaker.
- **MCD** (dB) and **F0 RMSE** (cents) compare two renditions of one sentence after aligning their frames with
  DTW on the mel cepstra (``compare_audio``); see ``mel_cepstrum`` for the exact cepstrum and constant.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import librosa
import numpy as np
import scipy.fft
import torch

from metatts.config.schema import AudioConfig
from metatts.features.audio import SILENCE_DBFS, AudioError, SilentAudio, TooShort, resample, scorer_input
from metatts.features.mel import MelSpectrogram
from metatts.features.pitch import PitchTracker

# ---------------------------------------------------------------------------------------------------------------
# Speaker embeddings
# ---------------------------------------------------------------------------------------------------------------

ENCODER_SAMPLE_RATE = 16000  # Resemblyzer's fixed input rate (resemblyzer.hparams.sampling_rate)


class SpeakerEncoder:
    """Utterance and speaker d-vectors from Resemblyzer's pretrained GE2E encoder.

    ``embed(wave, sample_rate)`` resamples to 16 kHz, clips to [-1, 1], applies Resemblyzer's
    ``preprocess_wav`` (volume up to -30 dBFS, webrtcvad removal of long pauses) and its ``embed_utterance``
    (the mean of 1.6 s partial windows at 1.3 per second, renormalized). ``embed_many`` gives the same vectors,
    but runs the partial windows of all utterances through the LSTM in shared batches (the LSTM dominates the
    cost). ``speaker_embedding`` is the renormalized mean of utterance embeddings.

    Policy for unusable input: a wave that is empty, not finite, or below -80 dBFS overall raises
    ``SilentAudio``/``AudioError``; one with less than ``min_speech_seconds`` of speech left after the VAD
    raises ``TooShort`` (Resemblyzer would zero-pad it to 1.6 s and return a confident but meaningless vector).
    ``embed_many(..., on_error="nan")`` instead returns a row of NaN for such a wave, so that a batch of
    synthesized clips can be scored with the failures counted rather than aborting the run; NaN rows then
    propagate to NaN similarities and are skipped by ``speaker_embedding`` and ``verification_eer``.

    The network is built on first use (importing Resemblyzer costs ~2-3 s; its import-time DeprecationWarning
    and its load message are suppressed). It never sets torch's thread count: callers decide.
    """

    def __init__(self, device: str | torch.device = "cpu", min_speech_seconds: float = 0.5, batch_size: int = 32):
        if min_speech_seconds < 0:
            raise ValueError(f"min_speech_seconds must be >= 0, got {min_speech_seconds}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.min_speech_seconds = min_speech_seconds
        self.batch_size = batch_size
        self._encoder = None
        self._resemblyzer = None

    def _load(self):
        """Import Resemblyzer and build its encoder once; returns the module."""
        if self._encoder is None:
            with warnings.catch_warnings():
                # resemblyzer.audio imports scipy.ndimage.morphology, deprecated since SciPy 1.8.
                warnings.simplefilter("ignore", DeprecationWarning)
                import resemblyzer
            self._resemblyzer = resemblyzer
            self._encoder = resemblyzer.VoiceEncoder(device=self.device, verbose=False).eval()
        return self._resemblyzer

    @property
    def encoder(self):
        """The ``resemblyzer.VoiceEncoder`` (an ``nn.Module`` in eval mode), built on first access."""
        self._load()
        return self._encoder

    @property
    def dim(self) -> int:
        return self.encoder.linear.out_features

    def preprocess(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """The 16 kHz waveform the encoder sees (after Resemblyzer's volume normalization and VAD trimming).

        Raises ``AudioError`` (``SilentAudio``, ``TooShort``) for unusable input; see the class docstring."""
        wave = scorer_input(wave, sample_rate, ENCODER_SAMPLE_RATE)  # the VAD converts to int16
        rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        if rms <= 10.0 ** (SILENCE_DBFS / 20.0):
            raise SilentAudio(f"all silent (level below {SILENCE_DBFS:.0f} dBFS)")
        speech = self._load().preprocess_wav(wave)
        seconds = len(speech) / ENCODER_SAMPLE_RATE
        if seconds < self.min_speech_seconds:
            raise TooShort(f"{seconds:.2f} s of speech after voice activity detection, "
                           f"need at least {self.min_speech_seconds:.2f} s for a speaker embedding")
        return speech.astype(np.float32, copy=False)

    def _partial_mels(self, speech: np.ndarray) -> np.ndarray:
        """The [n_partials, 160, 40] mel windows ``VoiceEncoder.embed_utterance`` would feed the LSTM."""
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(speech), rate=1.3, min_coverage=0.75)
        if wav_slices[-1].stop >= len(speech):
            speech = np.pad(speech, (0, wav_slices[-1].stop - len(speech)))
        mel = self._load().audio.wav_to_mel_spectrogram(speech)
        return np.stack([mel[s] for s in mel_slices])

    def embed_many(self, waves: Sequence[np.ndarray], sample_rate: int, on_error: str = "raise") -> np.ndarray:
        """Utterance embeddings [N, 256] float32 (rows L2-normalized). ``on_error``: ``"raise"`` (the first
        unusable wave's ``AudioError``, naming its index) or ``"nan"`` (a NaN row for each unusable wave)."""
        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
        partials, owners = [], []
        for index, wave in enumerate(waves):
            try:
                windows = self._partial_mels(self.preprocess(wave, sample_rate))
            except AudioError as error:
                if on_error == "raise":
                    raise type(error)(f"wave {index}: {error.reason}") from error
                continue
            partials.append(windows)
            owners.append(np.full(len(windows), index))
        out = np.full((len(waves), self.dim), np.nan, dtype=np.float32)
        if not partials:
            return out
        windows, owners = np.concatenate(partials), np.concatenate(owners)
        embeds = []
        with torch.inference_mode():
            for start in range(0, len(windows), self.batch_size):
                batch = torch.from_numpy(windows[start:start + self.batch_size]).to(self.device)
                embeds.append(self.encoder(batch).float().cpu().numpy())
        embeds = np.concatenate(embeds)
        for index in np.unique(owners):
            mean = embeds[owners == index].mean(axis=0)
            out[index] = mean / np.linalg.norm(mean)
        return out

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """One utterance's embedding [256] float32, L2-normalized; raises ``AudioError`` for unusable input."""
        return self.embed_many([wave], sample_rate)[0]

    def speaker_embedding(self, waves: Sequence[np.ndarray], sample_rate: int, on_error: str = "raise") -> np.ndarray:
        """A speaker's embedding: the mean of its utterance embeddings, renormalized (Resemblyzer's
        ``embed_speaker``). With ``on_error="nan"`` unusable waves are left out; none usable raises."""
        return mean_embedding(self.embed_many(waves, sample_rate, on_error=on_error))


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The L2-normalized mean of the finite rows of ``embeddings`` [N, D]; ``ValueError`` if there are none."""
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.any():
        raise ValueError("no usable embedding to average (all rows are NaN or the list is empty)")
    mean = embeddings[finite].mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def speaker_similarity(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (NaN if either holds NaN or is all zeros)."""
    a, b = np.asarray(emb_a, dtype=np.float64).ravel(), np.asarray(emb_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embedding sizes differ: {a.shape[0]} and {b.shape[0]}")
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else math.nan


def similarity_matrix(embs_a: np.ndarray, embs_b: np.ndarray) -> np.ndarray:
    """Cosines of every row of ``embs_a`` [N, D] with every row of ``embs_b`` [M, D]: [N, M] float64
    (NaN rows give NaN rows/columns)."""
    a, b = np.atleast_2d(np.asarray(embs_a, dtype=np.float64)), np.atleast_2d(np.asarray(embs_b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} and {b.shape[1]}")
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


# ---------------------------------------------------------------------------------------------------------------
# Equal error rate
# ---------------------------------------------------------------------------------------------------------------


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """EER and its threshold for trials ``scores`` (higher = more likely the same speaker) with ``labels``
    (True/1 = same speaker), a trial being accepted when ``score >= threshold``.

    The ROC has one point per distinct score (ties move both rates at once), plus the point accepting nothing
    (false-alarm rate 0, miss rate 1). Walking from high thresholds to low, the miss rate falls and the false-alarm
    rate rises; the EER is where the straight segment between the two ROC points that bracket the crossing meets
    miss = false alarm, and the threshold is interpolated between those points' thresholds with the same weight
    (the accept-nothing point's threshold counts as the highest score). Perfectly separated scores give 0;
    all-tied scores give 0.5.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (drop NaN trials first)")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need both positive and negative trials, got {n_pos} positive and {n_neg} negative")

    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # The last index of each run of equal scores: the ROC point reached by accepting down to that score.
    last = np.flatnonzero(np.diff(sorted_scores) != 0)
    last = np.append(last, len(scores) - 1)
    accepted_pos = np.cumsum(sorted_labels)[last]
    accepted_neg = (last + 1) - accepted_pos
    false_alarm = np.concatenate(([0.0], accepted_neg / n_neg))
    miss = np.concatenate(([1.0], 1.0 - accepted_pos / n_pos))
    thresholds = np.concatenate(([sorted_scores[0]], sorted_scores[last]))

    gap = miss - false_alarm  # starts at 1, ends at -1 (false alarm 1, miss 0); non-increasing
    i = int(np.flatnonzero(gap <= 0)[0])
    if gap[i] == 0:
        return float(miss[i]), float(thresholds[i])
    weight = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = false_alarm[i - 1] + weight * (false_alarm[i] - false_alarm[i - 1])
    threshold = thresholds[i - 1] + weight * (thresholds[i] - thresholds[i - 1])
    return float(eer), float(threshold)


@dataclass(frozen=True)
class VerificationResult:
    """Speaker-verification EER of synthesized against real speech, and the trials it came from."""

    eer: float
    threshold: float  # cosine at which false acceptances and false rejections are equal
    n_positive: int  # same-speaker (synthesized, real) trials
    n_negative: int  # different-speaker trials
    n_skipped: int  # trials dropped because an embedding was NaN (an unusable clip)


def verification_eer(synth_embeddings_by_speaker: Mapping[str, np.ndarray],
                     real_embeddings_by_speaker: Mapping[str, np.ndarray]) -> VerificationResult:
    """EER of a verifier that scores (synthesized, real) pairs by cosine, as in Meta-TTS: every synthesized
    embedding of speaker s against every real embedding of speaker r is a trial, positive when s == r.

    Values are [N, D] arrays (or [D] for one embedding): utterance embeddings, or speaker centroids for a
    speaker-level test. Trials involving a NaN embedding are skipped and counted. At least one speaker must be
    in both mappings (else there is no positive trial) and at least two speakers overall.
    """
    synth = {s: np.atleast_2d(np.asarray(e, dtype=np.float64)) for s, e in synth_embeddings_by_speaker.items()}
    real = {s: np.atleast_2d(np.asarray(e, dtype=np.float64)) for s, e in real_embeddings_by_speaker.items()}
    if not set(synth) & set(real):
        raise ValueError("no speaker has both synthesized and real embeddings, so there is no positive trial")
    scores, labels = [], []
    for s, synth_rows in synth.items():
        for r, real_rows in real.items():
            cosines = similarity_matrix(synth_rows, real_rows).ravel()
            scores.append(cosines)
            labels.append(np.full(cosines.size, s == r))
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    usable = np.isfinite(scores)
    eer, threshold = equal_error_rate(scores[usable], labels[usable])
    return VerificationResult(eer=eer, threshold=threshold, n_positive=int(labels[usable].sum()),
                              n_negative=int((~labels[usable]).sum()), n_skipped=int((~usable).sum()))


# ---------------------------------------------------------------------------------------------------------------
# Mel cepstral distortion and F0 error
# ---------------------------------------------------------------------------------------------------------------

# MCD = (10 √2 / ln 10) · sqrt(Σ_{k=1..D} (c_k - c'_k)²) dB per frame (Kubichek 1993). With cepstra of the natural
# log amplitude in the convention ln A(ω) = c_0 + Σ_k c_k cos(kω), that is the RMS over (warped) frequency of the
# difference of the two log spectra in dB, 20 log10 |A|, after cepstral smoothing.
MCD_CONSTANT = 10.0 * math.sqrt(2.0) / math.log(10.0)
# A voiced frame's F0 is grossly wrong when it is off by more than this fraction of the reference's (GPE).
GROSS_PITCH_ERROR = 0.2


def mel_cepstrum(log_mel: np.ndarray, n_coefficients: int = 24) -> np.ndarray:
    """Mel cepstra c_1..c_D [frames, D] (c_0, the level, excluded) of a natural-log mel amplitude spectrogram
    ``log_mel`` [n_mels, frames], as ``MelSpectrogram`` and the acoustic model produce it.

    Exactly: ``c = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0) * sqrt(2 / n_mels)`` (rows 1..D), which is
    ``c_k = (2/M) Σ_m L_m cos(πk(m + ½)/M)``: the coefficients of the cosine series L_m = c_0 + Σ_k c_k cos(kω_m)
    on the mel axis sampled at ω_m = π(m + ½)/M. This is the convention of SPTK's mel-cepstrum (ln|H| =
    c_0 + Σ c_k cos kω̃), for which ``MCD_CONSTANT`` was defined, so MCD here reads as the RMS dB distance of the
    cepstrally smoothed mel spectra (orthonormal DCT ⇒ Parseval). It is not WORLD/SPTK MCD (no spectral
    envelope extraction, an 80-band mel axis instead of an all-pass warp), so compare values within this
    toolkit; they are of the same order as the literature's. D = 24 mirrors the common 25-dim mcep without c_0.
    """
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if log_mel.ndim != 2:
        raise ValueError(f"expected a log-mel [n_mels, frames], got shape {log_mel.shape}")
    n_mels = log_mel.shape[0]
    if not 1 <= n_coefficients < n_mels:
        raise ValueError(f"n_coefficients must be in [1, {n_mels - 1}] for {n_mels} mel bands, got {n_coefficients}")
    cepstra = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0) * math.sqrt(2.0 / n_mels)
    return np.ascontiguousarray(cepstra[1:n_coefficients + 1].T)


def align_frames(cepstra_a: np.ndarray, cepstra_b: np.ndarray, alignment: str = "dtw") -> np.ndarray:
    """Frame pairs [P, 2] (index into a, index into b) in time order.

    ``"dtw"``: the path minimizing the summed Euclidean cepstral distance (hence the summed per-frame MCD) with
    steps (1,1), (1,0), (0,1) of equal weight, from (0, 0) to the last frames (librosa.sequence.dtw).
    ``"truncate"``: frame i with frame i, up to the shorter length (no alignment; the reference point DTW is
    measured against).
    """
    if len(cepstra_a) == 0 or len(cepstra_b) == 0:
        raise ValueError(f"cannot align an empty sequence ({len(cepstra_a)} and {len(cepstra_b)} frames)")
    if alignment == "truncate":
        index = np.arange(min(len(cepstra_a), len(cepstra_b)))
        return np.stack([index, index], axis=1)
    if alignment != "dtw":
        raise ValueError(f"alignment must be 'dtw' or 'truncate', got {alignment!r}")
    _, path = librosa.sequence.dtw(X=cepstra_a.T, Y=cepstra_b.T, metric="euclidean", backtrack=True)
    return np.ascontiguousarray(path[::-1])


@dataclass(frozen=True)
class AcousticComparison:
    """Two renditions of one sentence compared frame by frame along one alignment.

    ``mcd_db`` is the mean over aligned frame pairs of the per-frame MCD. ``a`` is the reference (real speech).

    F0 is split as in pitch-tracking evaluation (Chu & Alwan 2009), over the pairs voiced in both (all NaN when
    there are none, or when no F0 was given): ``f0_rmse_cents`` is the RMS of 1200·log2(F0_b / F0_a) over all of
    them (100 cents = one semitone); ``gross_pitch_error`` is the fraction off by more than 20% of F0_a (GPE);
    ``f0_fine_rmse_cents`` is the RMS over the others. Why both: a tracker's octave slip costs 1200 cents, so on
    real speech a few creaky or onset frames (~3% on some VCTK sentences with this YIN) can double the plain RMSE
    of a copy shifted by one semitone, while the fine RMSE stays near 100. ``voicing_error`` is the fraction of
    pairs whose voiced/unvoiced decisions differ (VDE). Frame rate: one frame per ``hop_length`` samples of the
    analysis config (11.6 ms by default).
    """

    mcd_db: float
    f0_rmse_cents: float
    f0_fine_rmse_cents: float
    gross_pitch_error: float
    voicing_error: float
    frames_a: int
    frames_b: int
    pairs: int  # length of the alignment: the frame pairs MCD averages over
    voiced_pairs: int  # pairs voiced in both, which F0 RMSE averages over


def compare_mels(log_mel_a: np.ndarray, log_mel_b: np.ndarray, n_coefficients: int = 24, alignment: str = "dtw",
                 f0_a: np.ndarray | None = None, f0_b: np.ndarray | None = None) -> AcousticComparison:
    """Compare two log-mels [n_mels, frames] (numpy or CPU tensors, same analysis settings), e.g. a model's
    output against the ground truth. ``f0_a``/``f0_b`` [frames] in Hz with 0 = unvoiced (optional) add the F0
    and voicing errors along the same alignment."""
    log_mel_a, log_mel_b = np.asarray(log_mel_a), np.asarray(log_mel_b)
    if log_mel_a.ndim != 2 or log_mel_a.shape[0] != log_mel_b.shape[0] or log_mel_b.ndim != 2:
        raise ValueError(f"expected two log-mels [n_mels, frames] with equal n_mels, got {log_mel_a.shape} "
                         f"and {log_mel_b.shape}")
    cepstra_a, cepstra_b = mel_cepstrum(log_mel_a, n_coefficients), mel_cepstrum(log_mel_b, n_coefficients)
    path = align_frames(cepstra_a, cepstra_b, alignment)
    ia, ib = path[:, 0], path[:, 1]
    mcd = float(MCD_CONSTANT * np.linalg.norm(cepstra_a[ia] - cepstra_b[ib], axis=1).mean())

    f0_rmse = fine_rmse = gpe = vde = math.nan
    n_voiced = 0
    if f0_a is not None and f0_b is not None:
        f0_a, f0_b = np.asarray(f0_a, dtype=np.float64), np.asarray(f0_b, dtype=np.float64)
        if len(f0_a) != len(cepstra_a) or len(f0_b) != len(cepstra_b):
            raise ValueError(f"F0 tracks ({len(f0_a)}, {len(f0_b)} frames) do not match the mels "
                             f"({len(cepstra_a)}, {len(cepstra_b)} frames)")
        fa, fb = f0_a[ia], f0_b[ib]
        voiced_a, voiced_b = fa > 0, fb > 0
        both = voiced_a & voiced_b
        n_voiced = int(both.sum())
        vde = float(np.mean(voiced_a != voiced_b))
        if n_voiced:
            cents = 1200.0 * np.log2(fb[both] / fa[both])
            gross = np.abs(fb[both] - fa[both]) > GROSS_PITCH_ERROR * fa[both]
            f0_rmse = float(np.sqrt(np.mean(np.square(cents))))
            gpe = float(gross.mean())
            if not gross.all():
                fine_rmse = float(np.sqrt(np.mean(np.square(cents[~gross]))))
    return AcousticComparison(mcd_db=mcd, f0_rmse_cents=f0_rmse, f0_fine_rmse_cents=fine_rmse,
                              gross_pitch_error=gpe, voicing_error=vde, frames_a=len(cepstra_a),
                              frames_b=len(cepstra_b), pairs=len(path), voiced_pairs=n_voiced)


def compare_audio(wave_a: np.ndarray, wave_b: np.ndarray, sample_rate: int, audio: AudioConfig | None = None,
                  n_coefficients: int = 24, alignment: str = "dtw") -> AcousticComparison:
    """Compare two waveforms (mono, at ``sample_rate``; ``wave_a`` is the reference): MCD, F0 errors and voicing
    error along one DTW path.

    Both are resampled to ``audio.sample_rate`` (default ``AudioConfig()``, 22.05 kHz) and analysed exactly as
    training features are: ``MelSpectrogram.from_config(audio)`` (HiFi-GAN log-mel) and
    ``PitchTracker.from_config(audio)`` (YIN; frames match the mel's one to one). Nothing is trimmed: silences
    are part of the comparison (DTW pairs silence with silence). Waves are not loudness-normalized either, so a
    level difference raises MCD only through the log floor (c_0, the level, is excluded).
    """
    audio = audio or AudioConfig()
    mel = MelSpectrogram.from_config(audio)
    pitch = PitchTracker.from_config(audio)
    log_mels, f0s = [], []
    for wave in (wave_a, wave_b):
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1 or not np.isfinite(wave).all():
            raise ValueError(f"expected a finite mono waveform [T], got shape {wave.shape}")
        wave = resample(wave, sample_rate, audio.sample_rate)
        with torch.inference_mode():
            log_mels.append(mel(torch.from_numpy(wave)).double().numpy())
        f0s.append(pitch(wave).f0)
    return compare_mels(log_mels[0], log_mels[1], n_coefficients, alignment, f0s[0], f0s[1])


def mel_cepstral_distortion(a: np.ndarray, b: np.ndarray, sample_rate: int | None = None, *,
                            audio: AudioConfig | None = None, n_coefficients: int = 24,
                            alignment: str = "dtw") -> float:
    """MCD in dB of ``a`` against ``b`` after DTW: two 1-D waveforms at ``sample_rate``, or two precomputed
    natural-log mels [n_mels, frames] (``sample_rate`` then unused). Identical inputs give exactly 0.
    ``compare_audio``/``compare_mels`` also report the frames used."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 and b.ndim == 2:
        return compare_mels(a, b, n_coefficients, alignment).mcd_db
    if a.ndim == 1 and b.ndim == 1:
        if sample_rate is None:
            raise ValueError("sample_rate is required for waveforms")
        return compare_audio(a, b, sample_rate, audio, n_coefficients, alignment).mcd_db
    raise ValueError(f"expected two waveforms [T] or two log-mels [n_mels, frames], got {a.shape} and {b.shape}")


def f0_rmse(wave_a: np.ndarray, wave_b: np.ndarray, sample_rate: int, *, audio: AudioConfig | None = None,
            alignment: str = "dtw") -> float:
    """Log-F0 RMSE in cents (1200·log2 ratio; 100 cents = a semitone) over all frames voiced in both waves after
    DTW alignment on their mel cepstra, gross errors included; NaN when no aligned pair is voiced in both.
    ``compare_audio`` also gives the gross pitch error rate and the RMSE without gross errors."""
    return compare_audio(wave_a, wave_b, sample_rate, audio, alignment=alignment).f0_rmse_cents


# ---------------------------------------------------------------------------------------------------------------
# Mel L1
# ---------------------------------------------------------------------------------------------------------------


def mel_l1(mel_a: torch.Tensor, mel_b: torch.Tensor, lengths: torch.Tensor) -> float:
    """Mean absolute difference of two log-mel batches [B, n_mels, T] over the first ``lengths[b]`` frames of
    each item and all bands (the training loss's mel term, without gradients). The mels must share frame
    timing (teacher-forced durations); for free-running synthesis use ``compare_mels``."""
    if mel_a.shape != mel_b.shape or mel_a.dim() != 3:
        raise ValueError(f"expected two mels [B, n_mels, T] of one shape, got {tuple(mel_a.shape)} and "
                         f"{tuple(mel_b.shape)}")
    lengths = torch.as_tensor(lengths, device=mel_a.device)
    if lengths.shape != (mel_a.shape[0],) or bool((lengths < 0).any()) or bool((lengths > mel_a.shape[-1]).any()):
        raise ValueError(f"lengths must be [B={mel_a.shape[0]}] in [0, {mel_a.shape[-1]}], got {lengths.tolist()}")
    mask = torch.arange(mel_a.shape[-1], device=mel_a.device)[None, :] < lengths[:, None]  # [B, T]
    if not bool(mask.any()):
        raise ValueError("all lengths are 0: no frame to compare")
    with torch.no_grad():
        difference = (mel_a.float() - mel_b.float()).abs().sum(dim=1)  # [B, T], summed over bands
        return float(difference[mask].sum() / (mask.sum() * mel_a.shape[1]))
