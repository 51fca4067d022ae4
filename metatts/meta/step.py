"""One meta-step of MAML / Meta-SGD over the speaker group, as `metatts meta-train` takes it.

    per task (support, query, dropout seed), all utterances on the new-speaker slot:
        support durations from the aligner, no graph (MAS does not run inside the inner loop)
        query through the aligner with a graph (its forward-sum loss keeps the aligner learning)
        φ_i = adapt(L_support(θ, ·), φ_start, i, α_i)     eval mode (no dropout, as at test time); α_i per step or
                                                          shared; second order unless first order (``first_order``,
                                                          or before meta-step ``first_order_steps``)
        L_task = Σ_i w_i L_query(θ, φ_i) + w_0 L_query(θ, φ_start) + w_fs · L_forward_sum(query)
                                                          w = (0, …, 0, 1) unless the multi-step loss
                                                          (``multi_step_weights``); query dropout per ``query_dropout``
                                                          φ_start = φ_0 (+ Δ(support) with a reference encoder)
                                                          w_0 = ``meta.start_loss_weight`` (0: off): the zero-shot
                                                          loss, the only one that trains the start for step 0
        backward of L_task / B                            B = the whole meta-batch (all ranks)
    gradients summed over ranks; skip the step if any rank saw a non-finite loss or the gradient is non-finite;
    clip; optimizer step

``meta_step`` is the whole step and nothing else: the training loop around it (``outer_loop``: sampling,
schedule, logging, validation, checkpoints) and the benchmark (``benchmarks/meta_step.py``) call this one function,
so what is measured is what trains. ``task_loss`` is its differentiable core, also used alone by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metatts.adapt.start import starting_params
from metatts.align.aligner import forward_sum_loss
from metatts.meta import distributed as mdist
from metatts.meta.inner_loop import InnerResult, Rates, adapt, make_loss_fn
from metatts.meta.inner_lr import InnerLR
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss, LossTerms
from metatts.runtime.precision import autocast, inner_loss_scale

QUERY_TERMS = ("mel", "postnet_mel", "duration", "pitch", "energy")  # FastSpeech 2 terms of the task losses


@dataclass
class TaskLoss:
    query: LossTerms  # query losses at the adapted φ_k (with graph)
    support: list[Tensor]  # support loss before each inner step (detached)
    # Σ_i w_i L_query(φ_i).total under the multi-step loss, plus w_0 L_query(φ_start).total with a start loss;
    # None: query.total alone
    weighted: Tensor | None = None

    @property
    def total(self) -> Tensor:
        """The query part of the task objective."""
        return self.query.total if self.weighted is None else self.weighted


def multi_step_weights(inner_steps: int, meta_step: int, anneal_steps: int) -> list[float] | None:
    """Weights of the query loss after inner steps 1 … k at (0-based) meta-step ``meta_step`` (MAML++'s multi-step
    loss, Antoniou et al. 2019): uniform at meta-step 0, moving linearly to all weight on step k over
    ``anneal_steps`` meta-steps, and there after. They sum to 1. None when ``anneal_steps`` is 0 (off: the final
    step alone, plain MAML)."""
    if anneal_steps < 0 or meta_step < 0:
        raise ValueError(f"anneal_steps and meta_step must be >= 0, got {anneal_steps} and {meta_step}")
    if anneal_steps == 0:
        return None
    if inner_steps < 1:
        raise ValueError(f"a multi-step loss needs at least one inner step, got {inner_steps}")
    done = min(meta_step / anneal_steps, 1.0)
    weights = [(1.0 - done) / inner_steps] * inner_steps
    weights[-1] += done
    return weights


@contextmanager
def _mode(model: nn.Module, training: bool):
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


def support_adapt(model: nn.Module, support: Batch, lr: Rates, groups: Sequence[str], *, steps: int,
                  first_order: bool = False, loss: FastSpeech2Loss | None = None, loss_scale: float | None = None,
                  keep_path: bool = False) -> InnerResult:
    """Meta-training's inner loop: k steps on the support from φ_start (the model's own φ_0, plus its reference
    encoder's prediction from the support when it has one: ``adapt.start``), differentiable into every
    parameter and into ``lr``. The support forward always runs in eval mode (no dropout), whatever the model's
    mode, because test-time adaptation (``adapt.fast.adapt_voice``, the evaluation, meta-validation) adapts in eval
    mode: the inner loop meta-training learns φ_0 and α for must be the one that runs at test time, and a dropout
    mask in the inner gradient is noise the learned rates would be tuned to expect.
    (``tests/test_meta_train.py::test_meta_training_adapts_without_dropout_as_test_time_does`` and
    ``…::test_all_mamlpp_options_train_and_adapt_and_evaluate_with_per_step_rates`` hold the paths to the same
    fast weights.)"""
    loss = loss or FastSpeech2Loss()
    forward = make_loss_fn(model, None, (support,), lambda out: loss(out, support).total)

    def support_loss(fast: dict[str, Tensor]) -> Tensor:
        with _mode(model, False):
            return forward(fast)

    start = starting_params(model, groups, support)
    result = adapt(support_loss, start, steps, lr, first_order=first_order, loss_scale=loss_scale, keep_path=keep_path)
    result.start = start
    return result


def task_loss(model: nn.Module, support: Batch, query: Batch, lr: Rates, groups: Sequence[str], *, steps: int,
              first_order: bool = False, loss: FastSpeech2Loss | None = None, loss_scale: float | None = None,
              query_weights: Sequence[float] | None = None, query_dropout: bool = True,
              start_weight: float = 0.0) -> TaskLoss:
    """``support_adapt``, then the query losses at φ_k. Differentiable into every parameter of ``model`` and into
    ``lr`` (second order unless ``first_order``). ``loss_scale``: the inner loss scale under fp16 autocast
    (``metatts.runtime.precision.inner_loss_scale``). ``query_weights`` (``multi_step_weights``): the query loss
    after each inner step, weighted; a step of weight 0 costs no query forward, so with None (or all weight on the
    last step) this is exactly one query forward. ``query_dropout``: the query forward in the model's own mode
    (dropout in train mode); False: in eval mode too. ``start_weight``: weight of the query loss at φ_start, before
    any inner step (the zero-shot loss). Without it nothing asks the start itself to fit the query speaker: the
    inner loop's steps are trained to repair whatever start they get, and with an amortized start the step-0
    (zero-shot) voice drifted away from the speaker as meta-training went on."""
    if start_weight < 0:
        raise ValueError(f"start_weight must be >= 0, got {start_weight}")
    loss = loss or FastSpeech2Loss()
    if query_weights is not None and len(query_weights) != steps:
        raise ValueError(f"{len(query_weights)} query weights for {steps} inner steps")
    # Only the steps with weight need their φ_i; all on the last step is plain MAML, without keeping the path.
    weighted = [] if query_weights is None else [i for i, w in enumerate(query_weights) if w]
    multi = bool(weighted) and weighted != [steps - 1]
    inner = support_adapt(model, support, lr, groups, steps=steps, first_order=first_order, loss=loss,
                          loss_scale=loss_scale, keep_path=multi)

    def query_terms(fast: dict[str, Tensor]) -> LossTerms:
        # Dropout on the query is allowed (the default): the query loss is the only loss θ learns from in
        # meta-training, and dropout regularizes it as in supervised training; test time never runs this forward
        # with gradients (synthesis is eval mode like any trained model's), so it cannot make the two disagree.
        with _mode(model, model.training and query_dropout):
            return loss(functional_call(model, fast, (query,)), query)

    final = query_terms(inner.fast)
    if not multi and not start_weight:
        return TaskLoss(query=final, support=inner.losses)
    total = (query_weights[-1] if multi else 1.0) * final.total
    for i in weighted:  # the last step is ``final``, already in
        if i != steps - 1:
            total = total + query_weights[i] * query_terms(inner.path[i]).total
    if start_weight:
        total = total + start_weight * query_terms(inner.start).total
    return TaskLoss(query=final, support=inner.losses, weighted=total)


# (model, support with durations, query with durations, α) -> TaskLoss; the benchmark passes other inner loops.
TaskLossFn = Callable[[nn.Module, Batch, Batch, "float | dict[str, Tensor]"], TaskLoss]


@dataclass
class Task:
    """One task of a meta-batch: a speaker's support and query utterances on the new-speaker slot."""

    support: Batch
    query: Batch
    seed: int | None = None  # the task's dropout seed (None: the global RNG as it is)
    name: str = ""  # for messages (the speaker)


@dataclass
class MetaStepSettings:
    """What a meta-step needs beyond the model and its tasks (``meta.*`` and ``train.grad_clip`` of a config)."""

    groups: list[str]
    inner_steps: int
    inner_lr: float = 0.1  # used when there are no learned rates
    first_order: bool = False
    meta_batch: int | None = None  # B over all ranks (None: this rank's task count, i.e. one process)
    grad_clip: float = 1.0
    precision: str = "fp32"  # resolved ``train.precision`` (``metatts.runtime.precision.resolve_precision``)
    first_order_steps: int = 0  # ``meta.first_order_steps``: first order before this meta-step, second after
    multi_step_loss_steps: int = 0  # ``meta.multi_step_loss_steps``: the multi-step loss's annealing (0: off)
    query_dropout: bool = True  # ``meta.query_dropout``
    start_loss_weight: float = 0.0  # ``meta.start_loss_weight``: the zero-shot query loss at φ_start (0: off)

    def first_order_at(self, step: int) -> bool:
        """Whether (0-based) meta-step ``step`` takes the first-order meta-gradient."""
        return self.first_order or step < self.first_order_steps

    def query_weights_at(self, step: int) -> list[float] | None:
        return multi_step_weights(self.inner_steps, step, self.multi_step_loss_steps)


@dataclass
class StepStats:
    """What one meta-step did. ``sums`` hold this rank's per-task sums (divide by B after summing over ranks)."""

    sums: dict[str, float] = field(default_factory=dict)
    tasks: int = 0
    grad_norm: float = math.nan
    skipped: str = ""  # why the update was skipped; empty when it was applied

    @property
    def applied(self) -> bool:
        return not self.skipped


def _fork(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def task_objective(model: nn.Module, task: Task, settings: MetaStepSettings, lr, loss: FastSpeech2Loss,
                   task_fn: TaskLossFn | None = None, loss_scale: float | None = None,
                   step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
    """L_task of one task (with graph) and its terms for logging, at (0-based) meta-step ``step`` (which picks first
    or second order and the multi-step loss's weights). Runs under the caller's RNG state.
    ``loss_scale``: the inner loss scale under fp16 autocast (``metatts.runtime.precision.inner_loss_scale``)."""
    support = task.support.with_durations(model.alignment(task.support).durations)
    query = task.query
    with autocast(support.mels.device, settings.precision):
        # On the query the aligner runs with a graph: its forward-sum loss trains it, and its (detached) MAS
        # durations drive the query pass.
        alignment = model.aligner(query.phonemes, query.phoneme_lengths, query.mels, query.mel_lengths)
        query = query.with_durations(alignment.durations)
        aligner = forward_sum_loss(alignment, loss.weights.blank_logprob)
        if task_fn is None:
            result = task_loss(model, support, query, lr, settings.groups, steps=settings.inner_steps,
                               first_order=settings.first_order_at(step), loss=loss, loss_scale=loss_scale,
                               query_weights=settings.query_weights_at(step), query_dropout=settings.query_dropout,
                               start_weight=settings.start_loss_weight)
        else:
            result = task_fn(model, support, query, lr)
        objective = result.total + loss.weights.forward_sum * aligner
    # query_* are the losses at φ_k (comparable across the annealing); the objective has the weighted sum.
    terms = {f"query_{n}": getattr(result.query, n) for n in QUERY_TERMS}
    terms.update(query_total=result.query.total, aligner=aligner, objective=objective)
    terms["support_before"] = result.support[0] if result.support else torch.tensor(math.nan)
    return objective, terms


def meta_step(model: nn.Module, tasks: Sequence[Task], optimizer: torch.optim.Optimizer,
              settings: MetaStepSettings, *, inner_lr: InnerLR | None = None, loss: FastSpeech2Loss | None = None,
              scaler: torch.amp.GradScaler | None = None, params: Sequence[Tensor] | None = None,
              task_fn: TaskLossFn | None = None, step: int = 0) -> StepStats:
    """One meta-update of ``model`` (and ``inner_lr``) from ``tasks`` (this rank's share of the meta-batch) at
    (0-based) meta-step ``step``; see the module docstring. A skipped step leaves the parameters and the optimizer
    untouched (gradients cleared)."""
    loss = loss or FastSpeech2Loss()
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    if params is None:
        params = list(model.parameters()) + (list(inner_lr.parameters()) if inner_lr is not None else [])
    device = next(model.parameters()).device
    batch_size = settings.meta_batch or len(tasks)
    optimizer.zero_grad(set_to_none=True)
    stats = StepStats()
    loss_scale = inner_loss_scale(scaler)  # one host read per meta-step
    for task in tasks:
        with _fork(device):
            if task.seed is not None:
                torch.manual_seed(task.seed)
            # α = exp(log α) is rebuilt per task: each task's backward frees its graph.
            lr = inner_lr.rates() if inner_lr is not None else settings.inner_lr
            objective, terms = task_objective(model, task, settings, lr, loss, task_fn, loss_scale, step)
            # fp16: a non-finite loss is (nearly always) the loss scale overflowing the inner backward. It is
            # back-propagated like any fp16 overflow, so the scaler skips the step and backs off.
            if not scaler.is_enabled() and not bool(torch.isfinite(objective)):
                stats.skipped = f"non-finite loss in the task of speaker {task.name or '?'}"
                break
            scaler.scale(objective / batch_size).backward()
        for name, value in terms.items():
            stats.sums[name] = stats.sums.get(name, 0.0) + float(value.detach())
        stats.tasks += 1
    # All ranks must take the same decision: skip if any rank saw a non-finite loss.
    if mdist.all_reduce_mean(1.0 if stats.skipped else 0.0) > 0:
        stats.skipped = stats.skipped or "non-finite loss on another rank"
    else:
        mdist.all_reduce_gradients(params, average=False)
        scaler.unscale_(optimizer)
        stats.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip))
        if not scaler.is_enabled() and not math.isfinite(stats.grad_norm):
            stats.skipped = "non-finite meta-gradient"
    if stats.skipped:
        # A non-finite step would poison Adam's moments: drop its gradients.
        optimizer.zero_grad(set_to_none=True)
        return stats
    scaler.step(optimizer)
    scaler.update()
    return stats
