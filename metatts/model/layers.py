"""Building blocks of the acoustic model, smallest first. Sequences are [B, T, C] with a [B, T] bool mask.

Two rules hold throughout, and tests check them:
- padded positions never influence valid ones (inputs to every convolution are zeroed at padding, attention
  ignores padded keys), so an utterance gives the same output alone or in a padded batch;
- every operation is twice differentiable, because MAML differentiates through the inner loop's gradients.
  That is why attention is written out (matmul + masked softmax) instead of calling scaled_dot_product_attention,
  whose fused CPU/GPU kernels have no double backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoid_positions(length: int, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Transformer sinusoidal position encodings [length, channels], computed on the fly (no length cap)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, channels, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / channels))
    table = torch.zeros(length, channels, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: channels // 2])
    return table.to(dtype)


def frame_to_phoneme(durations: Tensor, frames: int) -> Tensor:
    """For each frame, the index of the phoneme it belongs to: [B, L] durations -> [B, T] long.

    Frames past an utterance's total point at the last phoneme; callers mask them. Zero-duration phonemes own no
    frames (``searchsorted`` on the running end positions skips them).
    """
    ends = durations.cumsum(dim=1)
    t = torch.arange(frames, device=durations.device).expand(durations.shape[0], frames).contiguous()
    return torch.searchsorted(ends, t, right=True).clamp(max=durations.shape[1] - 1)


class ConditionalLayerNorm(nn.Module):
    """Layer norm whose output can be modulated per speaker: LN(x) * (1 + g_s) + b_s.

    The usual affine (weight, bias) is shared by all speakers; g_s and b_s come from the speaker module (zero for
    a fresh table, so a new speaker starts as the plain layer norm). Per-speaker state is 2 x channels floats,
    which is what makes a voice a few kilobytes (AdaSpeech's conditional layer norm, with direct tables instead
    of generating g_s, b_s from the embedding).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """``condition``: [B, 2, channels] (gain offset, bias) or None for the unconditioned norm."""
        y = self.norm(x)
        if condition is None:
            return y
        return y * (1 + condition[:, None, 0]) + condition[:, None, 1]


class LowRankDelta(nn.Module):
    """A LoRA-style low-rank residual for a linear map or a 1-D convolution: x -> B(A x) * scale.

    ``A`` is a convolution with the wrapped layer's kernel into ``rank`` channels, ``B`` a 1x1 map back out, so the
    delta of the wrapped weight is B·A (rank ``rank``). ``B`` starts at zero: a model with adapters computes exactly
    what it computes without them until an adaptation step moves ``B`` (Hu et al., 2021). Its parameters are the
    ``adapters`` group -- per-voice fast weights, never trained by plain multi-speaker training (which would only
    re-parameterize the shared weights); meta-training learns their starting values.
    """

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel: int = 1):
        super().__init__()
        self.rank, self.kernel = rank, kernel
        self.lora_a = nn.Parameter(torch.randn(rank, in_channels, kernel) * (in_channels * kernel) ** -0.5)
        self.lora_b = nn.Parameter(torch.zeros(out_channels, rank))
        self.scale = 1.0 / rank  # LoRA's alpha / r with alpha = 1: the delta's size does not grow with the rank

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, C_in, T] (channels first, as Conv1d) -> [B, C_out, T]."""
        h = F.conv1d(x, self.lora_a, padding=self.kernel // 2)
        return torch.einsum("or,brt->bot", self.lora_b, h) * self.scale

    def linear(self, x: Tensor) -> Tensor:
        """``x`` [..., C_in] (channels last, as Linear; kernel must be 1) -> [..., C_out]."""
        return (x @ self.lora_a[:, :, 0].t()) @ self.lora_b.t() * self.scale


class MultiHeadAttention(nn.Module):
    """Self-attention written out so it is twice differentiable on every device.

    No dropout on the attention weights: on 400-frame decoder inputs the [B, heads, T, T] dropout mask alone cost
    13% of a CPU training step; the block's output dropout regularizes enough.
    """

    def __init__(self, channels: int, heads: int, adapter_rank: int = 0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.qkv_adapter = LowRankDelta(channels, 3 * channels, adapter_rank) if adapter_rank else None
        self.out_adapter = LowRankDelta(channels, channels, adapter_rank) if adapter_rank else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x) if self.qkv_adapter is None else self.qkv(x) + self.qkv_adapter.linear(x)
        q, k, v = qkv.view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, h, T, d]
        scores = q @ k.transpose(-1, -2) / math.sqrt(c // self.heads)
        # Padded keys get no weight. Every utterance has >= 1 valid key, so no row is all masked (no NaN).
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        h = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        return self.out(h) if self.out_adapter is None else self.out(h) + self.out_adapter.linear(h)


class ConvFeedForward(nn.Module):
    """FastSpeech's position-wise feed-forward: a wide convolution, ReLU, then a 1x1 convolution back."""

    def __init__(self, channels: int, filter_channels: int, kernel: int, dropout: float, adapter_rank: int = 0):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, filter_channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(filter_channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.conv1_adapter = LowRankDelta(channels, filter_channels, adapter_rank, kernel) if adapter_rank else None
        self.conv2_adapter = LowRankDelta(filter_channels, channels, adapter_rank) if adapter_rank else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = (x * mask[..., None]).transpose(1, 2)
        h = self.conv1(x) if self.conv1_adapter is None else self.conv1(x) + self.conv1_adapter(x)
        h = self.dropout(F.relu(h))
        # Padding frames carry relu(bias) here; a kernel-1 map never mixes them into valid frames.
        h = self.conv2(h) if self.conv2_adapter is None else self.conv2(h) + self.conv2_adapter(h)
        return self.dropout(h.transpose(1, 2))


class FFTBlock(nn.Module):
    """Feed-forward transformer block (post-norm, as in FastSpeech 2): attention then convolution, each with a
    residual and a layer norm that is speaker-conditional in the decoder."""

    def __init__(self, channels: int, heads: int, filter_channels: int, kernel: int, dropout: float,
                 adapter_rank: int = 0):
        super().__init__()
        self.attention = MultiHeadAttention(channels, heads, adapter_rank)
        self.norm1 = ConditionalLayerNorm(channels)
        self.feed_forward = ConvFeedForward(channels, filter_channels, kernel, dropout, adapter_rank)
        self.norm2 = ConditionalLayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, conditions: tuple[Tensor, Tensor] | None = None) -> Tensor:
        c1, c2 = conditions if conditions is not None else (None, None)
        x = self.norm1(x + self.dropout(self.attention(x, mask)), c1)
        x = self.norm2(x + self.feed_forward(x, mask), c2)
        return x * mask[..., None]


class FFTStack(nn.Module):
    """Positional encoding plus a stack of FFT blocks: the encoder and the decoder."""

    def __init__(self, layers: int, channels: int, heads: int, filter_channels: int, kernel: int, dropout: float,
                 adapter_rank: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(FFTBlock(channels, heads, filter_channels, kernel, dropout, adapter_rank)
                                    for _ in range(layers))

    @property
    def norm_widths(self) -> list[int]:
        """Widths of the layer norms a speaker can condition, in the order ``forward`` consumes conditions."""
        return [block.norm1.norm.normalized_shape[0] for block in self.blocks for _ in (0, 1)]

    def forward(self, x: Tensor, mask: Tensor, conditions: list[Tensor] | None = None) -> Tensor:
        """``conditions``: one [B, 2, C] tensor per layer norm (2 per block), or None."""
        x = x + sinusoid_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        x = x * mask[..., None]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if conditions is None else (conditions[2 * i], conditions[2 * i + 1]))
        return x


class VariancePredictor(nn.Module):
    """Two convolutions with (optionally speaker-conditional) layer norms and a linear output: one scalar per
    position. Used for log-durations (per phoneme) and pitch and energy (per frame)."""

    def __init__(self, channels: int, filter_channels: int, kernel: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, filter_channels, kernel, padding=kernel // 2)
        self.norm1 = ConditionalLayerNorm(filter_channels)
        self.conv2 = nn.Conv1d(filter_channels, filter_channels, kernel, padding=kernel // 2)
        self.norm2 = ConditionalLayerNorm(filter_channels)
        self.out = nn.Linear(filter_channels, 1)
        self.dropout = nn.Dropout(dropout)

    @property
    def norm_widths(self) -> list[int]:
        return [self.norm1.norm.normalized_shape[0], self.norm2.norm.normalized_shape[0]]

    def forward(self, x: Tensor, mask: Tensor, conditions: list[Tensor] | None = None) -> Tensor:
        c1, c2 = conditions if conditions is not None else (None, None)
        m = mask[..., None]
        h = self.conv1((x * m).transpose(1, 2)).transpose(1, 2)
        h = self.dropout(self.norm1(F.relu(h), c1))
        h = self.conv2((h * m).transpose(1, 2)).transpose(1, 2)
        h = self.dropout(self.norm2(F.relu(h), c2))
        return self.out(h).squeeze(-1) * mask


class Postnet(nn.Module):
    """Five convolutions predicting a residual for the mel (Tacotron 2 / FastSpeech 2).

    Layer norm over channels replaces the usual batch norm: batch statistics would make an inner-loop step depend
    on the other utterances of the batch and add running buffers that MAML's functional calls would mutate.
    """

    def __init__(self, n_mels: int, channels: int = 512, kernel: int = 5, layers: int = 5, dropout: float = 0.5):
        super().__init__()
        widths = [n_mels] + [channels] * (layers - 1) + [n_mels]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, padding=kernel // 2) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(b) for b in widths[1:])
        self.dropout = nn.Dropout(dropout)

    def forward(self, mel: Tensor, mask: Tensor) -> Tensor:
        """``mel`` [B, T, n_mels] -> residual [B, T, n_mels], zero at padding."""
        h = mel
        m = mask[..., None]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv((h * m).transpose(1, 2)).transpose(1, 2))
            if i < len(self.convs) - 1:
                h = torch.tanh(h)
            h = self.dropout(h)
        return h * m


class LengthRegulator(nn.Module):
    """Expands phoneme-level states to frames by their durations (no parameters).

    A gather from a frame->phoneme index replaces the per-utterance ``repeat_interleave`` + pad of FastSpeech 2:
    one vectorized op for the whole batch, differentiable (twice) with respect to the states. It also returns each
    frame's progress through its phoneme (0 at the first frame, towards 1 at the last), which lets the frame-level
    pitch and energy predictors shape contours inside a phoneme whose frames otherwise all carry the same state.
    """

    def forward(self, x: Tensor, durations: Tensor, frames: int) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` [B, L, C], ``durations`` [B, L] long (zero at padding) -> states [B, T, C], mask [B, T], progress
        [B, T]."""
        index = frame_to_phoneme(durations, frames)  # [B, T]
        states = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
        ends = durations.cumsum(dim=1)
        mask = torch.arange(frames, device=x.device)[None, :] < ends[:, -1:]
        start = (ends - durations).gather(1, index)
        t = torch.arange(frames, device=x.device)[None, :]
        progress = (t - start).to(x.dtype) / durations.gather(1, index).clamp(min=1).to(x.dtype)
        return states * mask[..., None], mask, progress * mask
