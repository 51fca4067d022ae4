"""One meta-step of MAML / Meta-SGD over the speaker group, as `metatts meta-train` takes it.

    per task (support, query, dropout seed), all utterances on the new-speaker slot:
        support durations from the aligner, no graph (MAS does not run inside the inner loop)
        query through the aligner with a graph (its forward-sum loss keeps the aligner learning)
        φ_k = adapt(L_support(θ, ·), φ_start, k, α)       φ_start = φ_0 (+ Δ(support) with a reference encoder)
        L_task = L_query(θ, φ_k) + w_fs · L_forward_sum(query)
        backward of L_task / B                            B = the whole meta-batch (all ranks)
    gradients summed over ranks; skip the step if any rank saw a non-finite loss or the gradient is non-finite;
    clip; optimizer step

``meta_step`` is the whole step and nothing else: the training loop around it (``outer_loop``: sampling,
schedule, logging, validation, checkpoints) and the benchmark (``benchmarks/meta_step.py``) call this one function,
so what is measured is what trains. ``task_loss`` is its differentiable core, also used alone by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metatts.adapt.start import starting_params
from metatts.align.aligner import forward_sum_loss
from metatts.meta import distributed as mdist
from metatts.meta.inner_loop import adapt, make_loss_fn
from metatts.meta.inner_lr import InnerLR
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss, LossTerms
from metatts.runtime.precision import autocast, inner_loss_scale

QUERY_TERMS = ("mel", "postnet_mel", "duration", "pitch", "energy")  # FastSpeech 2 terms of the task losses


@dataclass
class TaskLoss:
    query: LossTerms  # query losses at the adapted φ_k (with graph)
    support: list[Tensor]  # support loss before each inner step (detached)


def task_loss(model: nn.Module, support: Batch, query: Batch, lr: float | Mapping[str, Tensor],
              groups: Sequence[str], *, steps: int, first_order: bool = False,
              loss: FastSpeech2Loss | None = None, loss_scale: float | None = None) -> TaskLoss:
    """k inner steps on the support from φ_start (the model's own φ_0, plus its reference encoder's prediction from
    the support when it has one: ``adapt.start``), then the query losses at φ_k. Differentiable into every
    parameter of ``model`` and into ``lr`` (second order unless ``first_order``). ``loss_scale``: the inner
    loss scale under fp16 autocast (``metatts.runtime.precision.inner_loss_scale``)."""
    loss = loss or FastSpeech2Loss()
    fast = starting_params(model, groups, support)
    inner = adapt(make_loss_fn(model, None, (support,), lambda out: loss(out, support).total), fast, steps, lr,
                  first_order=first_order, loss_scale=loss_scale)
    return TaskLoss(query=loss(functional_call(model, inner.fast, (query,)), query), support=inner.losses)


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
                   task_fn: TaskLossFn | None = None,
                   loss_scale: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """L_task of one task (with graph) and its terms for logging. Runs under the caller's RNG state.
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
                               first_order=settings.first_order, loss=loss, loss_scale=loss_scale)
        else:
            result = task_fn(model, support, query, lr)
        objective = result.query.total + loss.weights.forward_sum * aligner
    terms = {f"query_{n}": getattr(result.query, n) for n in QUERY_TERMS}
    terms.update(query_total=result.query.total, aligner=aligner, objective=objective)
    terms["support_before"] = result.support[0] if result.support else torch.tensor(math.nan)
    return objective, terms


def meta_step(model: nn.Module, tasks: Sequence[Task], optimizer: torch.optim.Optimizer,
              settings: MetaStepSettings, *, inner_lr: InnerLR | None = None, loss: FastSpeech2Loss | None = None,
              scaler: torch.amp.GradScaler | None = None, params: Sequence[Tensor] | None = None,
              task_fn: TaskLossFn | None = None) -> StepStats:
    """One meta-update of ``model`` (and ``inner_lr``) from ``tasks`` (this rank's share of the meta-batch); see
    the module docstring. A skipped step leaves the parameters and the optimizer untouched (gradients cleared)."""
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
            lr = inner_lr.as_dict() if inner_lr is not None else settings.inner_lr
            objective, terms = task_objective(model, task, settings, lr, loss, task_fn, loss_scale)
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
