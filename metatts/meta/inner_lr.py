"""Learned inner-loop learning rates (Meta-SGD, Li et al. 2017), trained by the outer optimizer.

One learning-rate tensor per fast weight: the same shape as the weight (``"per_parameter"``, Meta-SGD proper) or a
single scalar (``"per_tensor"``, far fewer meta-parameters; what MAML++ calls per-layer LRs).

Parameterization. By default the module stores log α and hands out α = exp(log α):

* α stays positive. Raw α may cross zero and flip sign, turning the inner step into gradient *ascent* on the
  support loss for those elements. The outer loss, which sees only the meta-trained k steps, may tolerate that;
  test-time adaptation runs many more steps (the step grid goes to 100) and then climbs the support loss.
* Outer updates become relative: ∂L/∂(log α) = α ∂L/∂α, so Adam's ~constant step size changes every α by a
  similar *factor*, whatever its magnitude. Raw α would move a 1e-3 and a 1e-1 rate by the same absolute amount.

Per step (``steps=k``, MAML++'s LSLR, Antoniou et al. 2019): a separate rate for each of the k inner steps, stored as
one tensor per fast weight with a leading step dimension ([k, *shape], or [k] per tensor). ``rates()`` is then a list
of k rate dicts, which ``inner_loop.adapt`` takes as a per-step schedule (steps past k reuse the last rate).

``parameterization="identity"`` keeps raw α (the paper's form; also what the tests compare against ``higher``).

File format (``metatts.checkpoints`` stores it beside the weights): the state dict as safetensors plus
``file_info()`` in the checkpoint metadata; ``rates_from_file`` turns the two back into α tensors without building
the module. Both live here so the format has one owner. ``file_info()`` has a ``"steps"`` entry only for per-step
rates; files written before per-step rates existed have none and load as one rate for every step.
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
    """``rates()`` -> {fast-weight name: α tensor} (or, per step, a list of those), ready for ``adapt(lr=...)``.

    ``fast`` gives the names, shapes, dtype and device (values are not read). ``steps``: None for one rate used at
    every step, k for a rate per inner step. ``init``: the starting α, one for all or per name (every name of
    ``fast``). State-dict keys are ``raw.<name with "." replaced by "__">``.
    """

    def __init__(self, fast: Mapping[str, Tensor], init: float | Mapping[str, float], mode: str = "per_parameter",
                 parameterization: str = "log", steps: int | None = None):
        super().__init__()
        if steps is not None and steps < 1:
            raise ValueError(f"per-step rates need at least one step, got steps={steps}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        self.names = list(fast)
        inits = dict(init) if isinstance(init, Mapping) else dict.fromkeys(self.names, init)
        if set(inits) != set(self.names):
            raise ValueError(f"init names {sorted(inits)} are not the fast weights {sorted(self.names)}")
        if parameterization == "log" and min(inits.values(), default=1.0) <= 0:
            raise ValueError(f"init must be positive for the log parameterization, got {min(inits.values())}")
        keys = [_key(n) for n in self.names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"fast-weight names collide once '.' becomes '__': {self.names}")
        self.mode = mode
        self.parameterization = parameterization
        self.steps = steps
        lead = () if steps is None else (steps,)
        self.raw = nn.ParameterDict({
            key: nn.Parameter(torch.full(lead + (t.shape if mode == "per_parameter" else ()),
                                         math.log(inits[name]) if parameterization == "log" else inits[name],
                                         dtype=t.dtype, device=t.device))
            for key, (name, t) in zip(keys, fast.items())
        })

    def lr(self, name: str) -> Tensor:
        """α of one fast weight (per step: all steps, stacked along the first dimension)."""
        return _alpha(self.raw[_key(name)], self.parameterization)

    def rates(self) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """What ``adapt(lr=...)`` takes: {name: α}, or per step a list of k such dicts."""
        # Recomputed on every call (cheap, elementwise) so each episode's graph reaches the raw parameters.
        return _unstack({name: self.lr(name) for name in self.names}, self.steps)

    def as_dict(self) -> dict[str, Tensor]:
        """{name: α} of rates shared by every step (``rates()`` covers per-step rates too)."""
        if self.steps is not None:
            raise ValueError("per-step inner rates have one dict per step: use rates()")
        return self.rates()

    def mean_rate(self) -> Tensor:
        """The mean over tensors of each tensor's mean α (over its elements and steps): a number for the log."""
        return torch.stack([self.lr(name).mean() for name in self.names]).mean()

    def extra_repr(self) -> str:
        per_step = "" if self.steps is None else f", {self.steps} steps"
        return f"{len(self.names)} tensors, mode={self.mode}, parameterization={self.parameterization}{per_step}"

    # ------------------------------------------------------------------------------------------ file format
    def file_info(self) -> dict:
        """What the checkpoint metadata records beside the tensors of ``state_dict()``."""
        info = {"mode": self.mode, "parameterization": self.parameterization, "names": list(self.names)}
        if self.steps is not None:
            info["steps"] = self.steps
        return info

    @staticmethod
    def rates_from_file(tensors: Mapping[str, Tensor], info: Mapping) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """What ``rates()`` returned, from a saved ``state_dict()`` and its ``file_info()`` (no ``"steps"``: a file
        of rates shared by every step, as all files before per-step rates)."""
        steps = info.get("steps")
        alphas = {}
        for name in info["names"]:
            alpha = _alpha(tensors[f"raw.{_key(name)}"], info["parameterization"])
            if steps is not None and alpha.shape[:1] != (steps,):
                raise ValueError(f"the rate of {name} has shape {tuple(alpha.shape)}, not {steps} steps")
            alphas[name] = alpha
        return _unstack(alphas, steps)


def _alpha(raw: Tensor, parameterization: str) -> Tensor:
    return raw.exp() if parameterization == "log" else raw


def _unstack(alphas: dict[str, Tensor], steps: int | None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
    if steps is None:
        return alphas
    return [{name: alpha[i] for name, alpha in alphas.items()} for i in range(steps)]
