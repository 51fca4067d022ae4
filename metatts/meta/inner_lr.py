"""Learned inner-loop learning rates (Meta-SGD, Li et al. 2017), trained by the outer optimizer.

One learning-rate tensor per fast weight: the same shape as the weight (``"per_parameter"``, Meta-SGD proper) or a
single scalar (``"per_tensor"``, far fewer meta-parameters; what MAML++ calls per-layer LRs).

Parameterization. By default the module stores log α and hands out α = exp(log α):

* α stays positive. Raw α may cross zero and flip sign, turning the inner step into gradient *ascent* on the
  support loss for those elements. The outer loss, which sees only the meta-trained k steps, may tolerate that;
  test-time adaptation runs many more steps (the step grid goes to 100) and then climbs the support loss.
* Outer updates become relative: ∂L/∂(log α) = α ∂L/∂α, so Adam's ~constant step size changes every α by a
  similar *factor*, whatever its magnitude. Raw α would move a 1e-3 and a 1e-1 rate by the same absolute amount.

``parameterization="identity"`` keeps raw α (the paper's form; also what the tests compare against ``higher``).

File format (``metatts.checkpoints`` stores it beside the weights): the state dict as safetensors plus
``file_info()`` in the checkpoint metadata; ``rates_from_file`` turns the two back into α tensors without building
the module. Both live here so the format has one owner.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn

MODES = ("per_parameter", "per_tensor")
PARAMETERIZATIONS = ("log", "identity")


def _key(name: str) -> str:
    # Module attribute names cannot contain "."; parameter names like "speaker.slot_norms" always do.
    return name.replace(".", "__")


class InnerLR(nn.Module):
    """``as_dict()`` -> {fast-weight name: α tensor}, ready for ``adapt(lr=...)``.

    ``fast`` gives the names, shapes, dtype and device (values are not read). State-dict keys are
    ``raw.<name with "." replaced by "__">``.
    """

    def __init__(self, fast: Mapping[str, Tensor], init: float, mode: str = "per_parameter",
                 parameterization: str = "log"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        if parameterization == "log" and init <= 0:
            raise ValueError(f"init must be positive for the log parameterization, got {init}")
        self.names = list(fast)
        keys = [_key(n) for n in self.names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"fast-weight names collide once '.' becomes '__': {self.names}")
        self.mode = mode
        self.parameterization = parameterization
        value = math.log(init) if parameterization == "log" else init
        self.raw = nn.ParameterDict({
            key: nn.Parameter(torch.full(t.shape if mode == "per_parameter" else (), value, dtype=t.dtype,
                                         device=t.device))
            for key, t in zip(keys, fast.values())
        })

    def lr(self, name: str) -> Tensor:
        raw = self.raw[_key(name)]
        return raw.exp() if self.parameterization == "log" else raw

    def as_dict(self) -> dict[str, Tensor]:
        # Recomputed on every call (cheap, elementwise) so each episode's graph reaches the raw parameters.
        return {name: self.lr(name) for name in self.names}

    def extra_repr(self) -> str:
        return f"{len(self.names)} tensors, mode={self.mode}, parameterization={self.parameterization}"

    # ------------------------------------------------------------------------------------------ file format
    def file_info(self) -> dict:
        """What the checkpoint metadata records beside the tensors of ``state_dict()``."""
        return {"mode": self.mode, "parameterization": self.parameterization, "names": list(self.names)}

    @staticmethod
    def rates_from_file(tensors: Mapping[str, Tensor], info: Mapping) -> dict[str, Tensor]:
        """{fast-weight name: α} from a saved ``state_dict()`` and its ``file_info()``."""
        rates = {}
        for name in info["names"]:
            raw = tensors[f"raw.{_key(name)}"]
            rates[name] = raw.exp() if info["parameterization"] == "log" else raw
        return rates
