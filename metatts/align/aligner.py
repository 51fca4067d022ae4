"""The built-in aligner: learns which phoneme each mel frame belongs to, jointly with the acoustic model.

Following "One TTS Alignment to Rule Them All" (Badlani et al., 2022) and RAD-TTS: a small convolutional text
encoder and mel encoder map phonemes and frames into one space; the negative squared distance between every frame
and every phoneme, log-softmaxed over phonemes and multiplied by a static beta-binomial prior (which favours the
diagonal and makes early training converge), is a soft alignment. It is trained with the forward-sum loss (the
likelihood of all monotonic paths, computed as CTC with one blank), and monotonic alignment search turns it into
integer durations for the length regulator and the duration predictor. No external forced aligner is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metatts.align.mas import mas_batch

_LOG_PRIOR_FLOOR = math.log(1e-8)  # the prior never rules a cell out completely (as in RAD-TTS: log(prior + 1e-8))
_MASKED = -1e4  # finite stand-in for log(0) at padded phonemes: keeps CTC and its gradients free of NaN


@dataclass
class AlignerConfig:
    """Sizes of the aligner (candidates for a ``model.aligner`` section of the config)."""

    embed_dim: int = 128  # the aligner's own phoneme embedding width (independent of the acoustic model)
    channels: int = 80  # width of the space where frames and phonemes are compared
    # Kernel of the text encoder's first convolution. RAD-TTS uses 3, but phoneme context lets a key stand for its
    # neighbour, and on small data training then settles on alignments shifted by a phoneme; 1 (keys from the
    # phoneme alone, like a monophone aligner) does not have that failure. Frames keep a kernel of 3.
    text_kernel: int = 1
    temperature: float = 0.0005  # scales squared distances into logits (RAD-TTS value)
    prior_scaling: float = 1.0  # sharpness of the beta-binomial diagonal prior; 0 turns the prior off
    blank_logprob: float = -1.0  # log-probability given to the CTC blank in the forward-sum loss


@dataclass
class AlignmentOutput:
    """Soft and hard alignment of a batch."""

    log_probs: Tensor  # [B, T, L] log-softmax over phonemes plus log prior; very negative at padded phonemes
    soft: Tensor  # [B, T, L] attention: each valid frame a distribution over valid phonemes; zero at padding
    durations: Tensor  # [B, L] long, MAS durations (sum = mel length; >= 1 when mel length >= phoneme length)
    phoneme_lengths: Tensor  # [B]
    mel_lengths: Tensor  # [B]


def beta_binomial_log_prior(phoneme_lengths: Tensor, mel_lengths: Tensor, frames: int, phonemes: int,
                            scaling: float = 1.0) -> Tensor:
    """log P(phoneme k | frame t) [B, T, L] of the static prior: frame t of T (1-based) draws its phoneme from
    BetaBinomial(n = L - 1, a = s t, b = s (T + 1 - t)), whose mass slides along the diagonal. Floored at 1e-8
    and zero outside the valid region (callers mask it)."""
    dtype = torch.float64  # differences of large lgammas lose precision in float32
    device = phoneme_lengths.device
    n = (phoneme_lengths.to(dtype) - 1)[:, None, None]  # [B, 1, 1]
    m = mel_lengths.to(dtype)[:, None, None]
    t = torch.arange(1, frames + 1, device=device, dtype=dtype)[None, :, None]  # [1, T, 1]
    k = torch.arange(phonemes, device=device, dtype=dtype)[None, None, :]  # [1, 1, L]
    a = scaling * t
    b = (scaling * (m + 1 - t)).clamp(min=1e-3)  # frames past the length would give b <= 0; masked later
    kk = torch.minimum(k, n)  # keep lgamma arguments positive at padded phonemes; masked later
    log_choose = torch.lgamma(n + 1) - torch.lgamma(kk + 1) - torch.lgamma(n - kk + 1)
    log_beta_num = torch.lgamma(kk + a) + torch.lgamma(n - kk + b) - torch.lgamma(n + a + b)
    log_beta_den = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    log_pmf = log_choose + log_beta_num - log_beta_den
    log_pmf = torch.logaddexp(log_pmf, torch.full_like(log_pmf, _LOG_PRIOR_FLOOR))
    valid = (k <= n) & (t <= m)
    return torch.where(valid, log_pmf, torch.zeros_like(log_pmf)).float()


class Aligner(nn.Module):
    """Text and mel encoders whose pairwise distances give a soft alignment; MAS gives hard durations."""

    def __init__(self, n_symbols: int, n_mels: int, config: AlignerConfig | None = None):
        super().__init__()
        self.config = config or AlignerConfig()
        e, c = self.config.embed_dim, self.config.channels
        self.embedding = nn.Embedding(n_symbols, e, padding_idx=0)
        # Only the first convolution of each encoder can have a kernel > 1, so masking its input is enough to make
        # padded positions irrelevant to valid ones.
        k = self.config.text_kernel
        if k % 2 == 0:
            raise ValueError(f"AlignerConfig.text_kernel must be odd so lengths are kept, got {k}")
        self.text_encoder = nn.Sequential(nn.Conv1d(e, 2 * e, k, padding=k // 2), nn.ReLU(), nn.Conv1d(2 * e, c, 1))
        self.mel_encoder = nn.Sequential(
            nn.Conv1d(n_mels, 2 * n_mels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(2 * n_mels, n_mels, 1), nn.ReLU(),
            nn.Conv1d(n_mels, c, 1),
        )

    def scores(self, phonemes: Tensor, phoneme_lengths: Tensor, mels: Tensor, mel_lengths: Tensor) -> Tensor:
        """log-softmax over phonemes (+ log prior) [B, T, L]; ``_MASKED`` at padded phonemes."""
        text_mask = torch.arange(phonemes.shape[1], device=phonemes.device)[None] < phoneme_lengths[:, None]
        mel_mask = torch.arange(mels.shape[-1], device=mels.device)[None] < mel_lengths[:, None]
        keys = self.text_encoder((self.embedding(phonemes) * text_mask[..., None]).transpose(1, 2))  # [B, C, L]
        queries = self.mel_encoder(mels * mel_mask[:, None, :])  # [B, C, T]
        # ||q - k||^2 = ||q||^2 + ||k||^2 - 2 q.k, without a [B, T, L, C] intermediate.
        dist = (queries.pow(2).sum(1)[:, :, None] + keys.pow(2).sum(1)[:, None, :]
                - 2 * torch.bmm(queries.transpose(1, 2), keys))
        logits = -self.config.temperature * dist
        log_probs = logits.masked_fill(~text_mask[:, None, :], float("-inf")).log_softmax(dim=-1)
        if self.config.prior_scaling > 0:
            # As in RAD-TTS: log-softmax plus log prior, not renormalized (the forward-sum loss renormalizes
            # with the blank, the soft attention below without it).
            log_probs = log_probs + beta_binomial_log_prior(
                phoneme_lengths, mel_lengths, mels.shape[-1], phonemes.shape[1], self.config.prior_scaling
            ).to(log_probs.dtype)
        return torch.where(text_mask[:, None, :], log_probs, torch.full_like(log_probs, _MASKED))

    def forward(self, phonemes: Tensor, phoneme_lengths: Tensor, mels: Tensor, mel_lengths: Tensor) -> AlignmentOutput:
        log_probs = self.scores(phonemes, phoneme_lengths, mels, mel_lengths)
        mel_mask = torch.arange(mels.shape[-1], device=mels.device)[None] < mel_lengths[:, None]
        soft = log_probs.softmax(dim=-1) * mel_mask[..., None]
        durations = mas_batch(log_probs, phoneme_lengths, mel_lengths)
        return AlignmentOutput(log_probs=log_probs, soft=soft, durations=durations,
                               phoneme_lengths=phoneme_lengths, mel_lengths=mel_lengths)


def forward_sum_loss(alignment: AlignmentOutput, blank_logprob: float = -1.0) -> Tensor:
    """Negative log-likelihood of all monotonic alignments, per phoneme, averaged over the batch.

    CTC over targets 1..L (each phoneme exactly once, in order) with a blank at index 0 whose log-probability is
    fixed, exactly as in RAD-TTS. Note: CTC's backward is not itself differentiable, so this term must stay out of
    any loss differentiated twice (it does not depend on speaker parameters, so an inner loop over them skips it).
    """
    log_probs = alignment.log_probs
    b, _, length = log_probs.shape
    padded = F.pad(log_probs, (1, 0), value=blank_logprob).log_softmax(dim=-1)  # [B, T, L + 1]
    targets = torch.arange(1, length + 1, device=log_probs.device).expand(b, length)
    return F.ctc_loss(padded.transpose(0, 1), targets, alignment.mel_lengths, alignment.phoneme_lengths,
                      blank=0, reduction="mean", zero_infinity=True)


def bin_loss(alignment: AlignmentOutput) -> Tensor:
    """Mean negative log soft-attention on the hard (MAS) path: pulls the soft alignment towards the durations."""
    log_probs, durations = alignment.log_probs, alignment.durations
    frames = log_probs.shape[1]
    ends = durations.cumsum(1)
    t = torch.arange(frames, device=log_probs.device).expand(durations.shape[0], frames)
    index = torch.searchsorted(ends, t.contiguous(), right=True).clamp(max=durations.shape[1] - 1)
    log_soft = log_probs.log_softmax(dim=-1).gather(2, index[..., None]).squeeze(-1)  # [B, T]
    mask = t < alignment.mel_lengths[:, None]
    return -(log_soft * mask).sum() / mask.sum().clamp(min=1)


def durations_to_attention(durations: Tensor | np.ndarray, frames: int | None = None) -> np.ndarray:
    """Hard attention [T, L] (0/1) of one utterance's durations [L], for plotting."""
    d = np.asarray(durations.cpu() if isinstance(durations, Tensor) else durations, dtype=np.int64)
    total = int(d.sum()) if frames is None else frames
    attn = np.zeros((total, len(d)), dtype=np.float32)
    start = 0
    for j, n in enumerate(d):
        attn[start:min(start + n, total), j] = 1
        start += n
    return attn


def plot_alignment(attention: Tensor | np.ndarray, path: str | Path, durations: Tensor | np.ndarray | None = None,
                   title: str = "", phonemes: list[str] | None = None) -> Path:
    """Save a soft alignment [T, L] (one utterance, valid region) as a PNG; hard durations drawn on top if given.

    Uses matplotlib's object API with the Agg canvas, so no global backend is switched and no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attn = np.asarray(attention.detach().cpu() if isinstance(attention, Tensor) else attention, dtype=np.float32)
    frames, phonemes_n = attn.shape
    fig = Figure(figsize=(max(4.0, frames / 60), max(3.0, phonemes_n / 12)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(attn.T, aspect="auto", origin="lower", interpolation="none", cmap="viridis")
    fig.colorbar(image, ax=ax)
    if durations is not None:
        hard = durations_to_attention(durations, frames)
        t, j = np.nonzero(hard)
        ax.plot(t, j, color="red", linewidth=0.8, alpha=0.8)
    if phonemes is not None and len(phonemes) == phonemes_n:
        ax.set_yticks(range(phonemes_n))
        ax.set_yticklabels(phonemes, fontsize=6)
    ax.set_xlabel("mel frame")
    ax.set_ylabel("phoneme")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
