"""Speaker conditioning: the only place a voice lives, and the parameters a new speaker adapts.

Two kinds of per-speaker state, each kept twice -- a training table with one row per meta-train speaker, and
the new-speaker slot (φ0: the initialization a new voice starts from, and the tensors fast adaptation changes):

    speaker embedding         speaker.table_embedding [S, speaker_dim]   speaker.slot_embedding [speaker_dim]
    conditional-norm offsets  speaker.table_norms [S, N]                 speaker.slot_norms [N]

A speaker id of -1 (``NEW_SPEAKER``) selects the slot. During multi-speaker training a fraction
``new_speaker_prob`` of utterances is routed to the slot instead of the speaker's row, so the slot learns an
average voice and adaptation starts from it rather than from noise. Meta-learning and fast adaptation pass
``{**params, **adapted_slot}`` to ``torch.func.functional_call`` with speakers = -1: a voice pack is exactly the
slot tensors (about 25.6 KB for the paper model, 4.4 KB for the tiny one).

``slot_norms`` is a flat vector: for each conditional layer norm in order (decoder block 1 norm1, norm2, block 2
norm1, ..., then the variance predictors' norms when they are conditioned) a gain offset g (width values) then a
bias b (width values); the norm computes LN(x) * (1 + g) + b. The projection of the embedding to the model width
is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metatts.model.batch import NEW_SPEAKER


@dataclass
class SpeakerCondition:
    """One batch's speaker state, ready for the layers that consume it."""

    embedding: Tensor  # [B, hidden] projected speaker embedding, added to the encoder output
    norms: list[Tensor]  # one [B, 2, width] (gain offset, bias) per conditional layer norm


class SpeakerConditioning(nn.Module):
    def __init__(self, max_speakers: int, speaker_dim: int, hidden: int, norm_widths: list[int],
                 new_speaker_prob: float = 0.1):
        super().__init__()
        if not 0 <= new_speaker_prob <= 1:
            raise ValueError(f"new_speaker_prob must be in [0, 1], got {new_speaker_prob}")
        self.norm_widths = list(norm_widths)
        self.new_speaker_prob = new_speaker_prob
        n_norm = 2 * sum(self.norm_widths)
        std = speaker_dim ** -0.5  # unit-norm-ish embeddings, so the projection starts at a sensible scale
        self.table_embedding = nn.Parameter(torch.randn(max_speakers, speaker_dim) * std)
        self.slot_embedding = nn.Parameter(torch.randn(speaker_dim) * std)
        # Zero offsets: every speaker (and the slot) starts as the plain layer norm.
        self.table_norms = nn.Parameter(torch.zeros(max_speakers, n_norm))
        self.slot_norms = nn.Parameter(torch.zeros(n_norm))
        self.projection = nn.Linear(speaker_dim, hidden)

    def route(self, speakers: Tensor) -> Tensor:
        """Speakers with a fraction ``new_speaker_prob`` replaced by ``NEW_SPEAKER`` (only in training mode)."""
        if not self.training or self.new_speaker_prob == 0:
            return speakers
        drop = torch.rand(speakers.shape, device=speakers.device) < self.new_speaker_prob
        return torch.where(drop, torch.full_like(speakers, NEW_SPEAKER), speakers)

    def forward(self, speakers: Tensor) -> SpeakerCondition:
        """``speakers`` [B] long: table rows, or ``NEW_SPEAKER`` for the slot."""
        new = (speakers == NEW_SPEAKER)[:, None]
        rows = speakers.clamp(min=0)
        # torch.where keeps both branches differentiable: slot gradients come only from slot utterances and
        # table gradients only from table utterances.
        embedding = torch.where(new, self.slot_embedding[None], self.table_embedding[rows])
        norms = torch.where(new, self.slot_norms[None], self.table_norms[rows])
        b = speakers.shape[0]
        chunks = torch.split(norms, [2 * w for w in self.norm_widths], dim=1)
        return SpeakerCondition(
            embedding=self.projection(embedding),
            norms=[chunk.view(b, 2, w) for chunk, w in zip(chunks, self.norm_widths)],
        )
