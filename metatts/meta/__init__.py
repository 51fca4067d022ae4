"""Meta-learning: the functional MAML inner loop, learned inner learning rates, multi-process meta-batches.

``adapt`` is the whole inner loop (parameters in, adapted parameters out); ``InnerLR`` holds Meta-SGD learning
rates the outer optimizer trains; ``metatts.meta.distributed`` splits a meta-batch over ``torchrun`` ranks.
"""

from metatts.meta.inner_loop import InnerResult, adapt, fine_tune, make_loss_fn
from metatts.meta.inner_lr import InnerLR

__all__ = ["InnerLR", "InnerResult", "adapt", "fine_tune", "make_loss_fn"]
