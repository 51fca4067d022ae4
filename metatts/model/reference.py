"""The reference encoder of an amortized start (``meta.amortized_start``): a new speaker's support clips -> offsets
of the speaker tensors, so adaptation starts at φ_start = φ0 + Δ(support) instead of φ0 (as in LEO and
Meta-StyleSpeech). Step 0 is then zero-shot cloning; the inner loop refines from there.

    log-mel [B, n_mels, T] ─ LayerNorm over bands ─ 3 × (conv k=3, ReLU) ─ masked mean over frames   one per clip
    mean over the clips ─ linear, ReLU ─ head (zero-initialized) ─ Δ per speaker tensor

The head starts at zero, so a fresh encoder predicts exactly φ0 (no regression at init) and meta-training learns
Δ. Its inputs are mels and their lengths only: no speaker id, no transcript, no model scoring the evaluation.
Padding does not change a clip's embedding (inputs are zeroed past each clip's end before every convolution), so
the support may arrive as one padded batch or as length buckets (``embed`` each, ``offsets`` of the mean).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from metatts.model.batch import lengths_to_mask


class ReferenceEncoder(nn.Module):
    """``outputs``: name -> shape of each tensor it predicts an offset for (the new-speaker slot tensors)."""

    def __init__(self, n_mels: int, channels: int, outputs: Mapping[str, tuple[int, ...]], kernel: int = 3,
                 layers: int = 3):
        super().__init__()
        self.shapes = {name: tuple(shape) for name, shape in outputs.items()}
        # Per-frame LayerNorm: log-mels sit around -5 with a corpus-dependent level; the spectral shape is the voice.
        self.norm = nn.LayerNorm(n_mels)
        self.convs = nn.ModuleList(nn.Conv1d(n_mels if i == 0 else channels, channels, kernel, padding=kernel // 2)
                                   for i in range(layers))
        self.hidden = nn.Linear(channels, channels)
        self.head = nn.Linear(channels, sum(int(torch.Size(s).numel()) for s in self.shapes.values()))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed(self, mels: Tensor, mel_lengths: Tensor) -> Tensor:
        """[B, n_mels, T] log-mels and [B] lengths -> [B, channels], one embedding per clip."""
        mask = lengths_to_mask(mel_lengths, mels.shape[-1]).to(mels.dtype)[:, None, :]  # [B, 1, T]
        x = self.norm(mels.transpose(1, 2)).transpose(1, 2)
        for conv in self.convs:
            x = torch.relu(conv(x * mask))
        return (x * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)

    def offsets(self, embedding: Tensor) -> dict[str, Tensor]:
        """[channels] (the mean of the clips' embeddings) -> {name: Δ of that tensor's shape}."""
        flat = self.head(torch.relu(self.hidden(embedding)))
        sizes = [int(torch.Size(s).numel()) for s in self.shapes.values()]
        return {name: chunk.view(shape) for (name, shape), chunk in zip(self.shapes.items(), flat.split(sizes))}
