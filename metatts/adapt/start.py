"""Where adaptation starts: the one function every adaptation calls for its fast weights before step 0.

    φ_start = φ0                               a checkpoint without a reference encoder (as before)
    φ_start = φ0 + Δ(support clips' mels)      with one (``meta.amortized_start``; ``metatts.model.reference``)

Meta-training (``meta.step.task_loss``), ``metatts adapt`` / ``TTS.adapt`` (``adapt.fast``), the adaptation curves
of meta-validation and ``metatts tasks``, and the evaluation's ``meta`` method all start here, so the start that was
meta-trained is the start that is adapted and measured. The only clips it is given are the support: there is no
argument through which a query clip could reach the prediction.

Δ covers the new-speaker slot tensors (embedding and conditional-norm offsets) that are among the fast weights;
other fast weights (the ``adapters`` group) start at their φ0, which for the adapters is already "no change".
A voice blended with ``alpha`` at synthesis still mixes with the model's φ0, not with the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metatts.model.acoustic import select_parameters
from metatts.model.batch import Batch


def starting_params(model: nn.Module, groups: Sequence[str], support: Batch | Sequence[Batch], *,
                    differentiable: bool = True) -> dict[str, Tensor]:
    """φ_start of the fast weights ``groups`` (``select_parameters`` names) from the ``support`` clips (one batch,
    or the length buckets of one support set). Differentiable (meta-training): attached to the model's φ0 and
    encoder, so the outer loss back-propagates into both. ``differentiable=False`` (test time): detached, and the
    encoder runs without a graph."""
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        fast = select_parameters(model, groups)
        encoder = getattr(model, "reference_encoder", None)
        if encoder is not None:
            batches = [support] if isinstance(support, Batch) else list(support)
            # Mean over clips, not over batches: buckets of different sizes give the mean of one padded batch.
            embedding = torch.cat([encoder.embed(b.mels, b.mel_lengths) for b in batches]).mean(dim=0)
            offsets = encoder.offsets(embedding)
            fast = {name: phi + offsets[name] if name in offsets else phi for name, phi in fast.items()}
    return fast if differentiable else {name: t.detach() for name, t in fast.items()}
