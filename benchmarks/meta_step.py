"""Time and peak memory of one meta-step on this CPU, tiny and paper models: a plain supervised step, our first-
and second-order meta-steps, and the same second-order meta-step written with `higher` 0.2.1 and with `torchopt`.

    python benchmarks/meta_step.py [--presets tiny paper] [--tasks 2] [--shots 5] [--queries 5] [--inner-steps 5]

One meta-step = B tasks, each: aligner durations for the support (no graph) and the query (with graph, its
forward-sum loss is in the objective), k inner SGD steps on the speaker slot (learned per-element rates α), the
query loss at φ_k, backward into θ, φ0 and α; then gradient clipping and an Adam step -- every variant is a call of
``metatts.meta.step.meta_step``, the function `metatts meta-train` runs. The peers replace only the inner loop
(its ``task_fn``): `higher.innerloop_ctx` with a
differentiable SGD whose per-element rates are overridden by α, and torchopt's functional ``sgd`` transform with α
as its rate (one transform per fast tensor) over ``functional_call``. All three run the support forward in eval
mode (no dropout) and the query in train mode, as ``meta-train`` does, so they compute the same thing. The plain step is ``metatts train``'s step on
the same B x (N + Q) utterances as one multi-speaker batch (aligner included). Before timing, the gradients of the
three second-order implementations are compared (eval mode, same episode): ``agreement`` is the largest relative
difference to ours.

Episodes are synthetic with the demo corpus's shape (phonemes ~50, ~5 frames per phoneme, ~250 frames); the
model, data and dropout seeds are fixed, so every variant computes on the same tensors.

Memory: each variant runs once in a fresh subprocess (no allocator reuse across variants). After set-up (model,
batches, Adam state) the peak-RSS mark is reset (``/proc/self/clear_refs`` = 5) and ``peak_mb`` is VmHWM after the
meta-step minus RSS before it: the step's own high-water growth (activations, the kept inner graphs, gradients).
Where clear_refs is unavailable ``ru_maxrss`` is used instead (then set-up peaks may hide part of the growth).
Time: one more process runs all variants round-robin on one model (a first warm-up round, then ``--repeats``
rounds, the order rotating each round). ``*_ms`` is the median *CPU* time of the process (``time.process_time``, one torch thread): on a shared
machine wall time swings with other processes' load (recorded too, as ``wall_ms``), CPU time much less.
Ratios (``second_order_over_torchopt``, ``…_higher``, ``second_over_first_order``): the ratio within each timed
round, median over rounds. ``--variants`` limits what runs (the paper preset's higher step takes minutes).
Memory against the inner step count (``memory_by_inner_steps``): the same fresh-process measurement for first and
second order at each k of ``--memory-sweep`` (tiny model by default).
Throughput (``throughput``): one more step per variant under torch's FlopCounterMode (matmul-class FLOPs) and the
best fp32 1024² matmul rate on the same threads; achieved FLOP/s = FLOPs / the median CPU time.
``--add-throughput FILE`` adds it to an earlier result file from that file's own timings.
Compiled (``plain_compiled``, ``first_order_compiled``): the same steps on a copy whose encoder and decoder run
through ``torch.compile`` (inductor, compiled in place); ``*_compiled_over_eager`` is the in-round ratio to the eager
variant and ``first_step_wall_ms`` the first step, compilation included. Second order is not compiled (inductor
cannot trace a double backward). They are not in the default run: ``--variants plain plain_compiled ...``.
Writes benchmarks/results/meta-step-<date>.json with `machine` (``metatts.runtime.env.machine_info``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.func import functional_call

from metatts.checkpoints import build_model
from metatts.config import config_from_dict
from metatts.meta.inner_lr import InnerLR
from metatts.meta.step import MetaStepSettings, Task, TaskLoss, _mode, meta_step, task_loss
from metatts.model.acoustic import select_parameters
from metatts.model.batch import NEW_SPEAKER, Batch
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.env import machine_info
from metatts.runtime.flops import Roof, count_flops, matmul_roof, throughput

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "first_order", "second_order", "higher", "torchopt", "plain_compiled", "first_order_compiled")
COMPILED_BLOCKS = ("encoder", "decoder")  # the FFT stacks: most of the FLOPs, no data-dependent shapes inside
PEERS = ("torchopt", "higher")  # other libraries' inner loops in our meta-step
GROUPS = ["speaker_embedding", "speaker_norms"]
N_SYMBOLS = 80
TRAIN_SPEAKERS = 31  # the demo corpus's meta-train speakers (rows of the speaker table)


# ------------------------------------------------------------------------------------------------ set-up
def synthetic_batch(g: torch.Generator, size: int, n_mels: int, speakers: Tensor) -> Batch:
    lengths = torch.randint(35, 65, (size,), generator=g)
    frames = [int(n) * 5 + int(torch.randint(-20, 20, (), generator=g)) for n in lengths]
    L, T = int(lengths.max()), max(frames)
    phonemes = torch.zeros(size, L, dtype=torch.long)
    mels = torch.full((size, n_mels, T), -11.5)
    pitch, energy = torch.zeros(size, T), torch.zeros(size, T)
    for i, (n, t) in enumerate(zip(lengths.tolist(), frames)):
        phonemes[i, :n] = torch.randint(2, N_SYMBOLS, (n,), generator=g)
        mels[i, :, :t] = torch.randn(n_mels, t, generator=g) * 2 - 5
        pitch[i, :t] = torch.randn(t, generator=g)
        energy[i, :t] = torch.randn(t, generator=g)
    return Batch(phonemes=phonemes, phoneme_lengths=lengths, mels=mels, mel_lengths=torch.tensor(frames),
                 pitch=pitch, energy=energy, speakers=speakers)


def set_up(preset: str, tasks: int, shots: int, queries: int):
    config = config_from_dict({}, [f"model.preset={preset}"])
    torch.manual_seed(0)
    model = build_model(config, N_SYMBOLS, TRAIN_SPEAKERS).train()
    g = torch.Generator().manual_seed(1)
    new = lambda n: torch.full((n,), NEW_SPEAKER, dtype=torch.long)  # noqa: E731
    episodes = [(synthetic_batch(g, shots, config.audio.n_mels, new(shots)),
                 synthetic_batch(g, queries, config.audio.n_mels, new(queries))) for _ in range(tasks)]
    # The plain step's batch: the same utterances, each on a table row.
    rows = torch.arange(tasks * (shots + queries)) % TRAIN_SPEAKERS
    plain = _concat([b for pair in episodes for b in pair], rows)
    inner_lr = InnerLR(select_parameters(model, GROUPS), init=0.1)
    params = list(model.parameters()) + list(inner_lr.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    # Adam's moments exist before the measured step (they are the same for every variant, not the step's cost).
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, inner_lr, params, optimizer, episodes, plain


def _concat(batches: list[Batch], speakers: Tensor) -> Batch:
    L = max(b.phonemes.shape[1] for b in batches)
    T = max(b.mels.shape[-1] for b in batches)
    pad = lambda t, n, v=0.0: torch.nn.functional.pad(t, (0, n - t.shape[-1]), value=v)  # noqa: E731
    return Batch(phonemes=torch.cat([pad(b.phonemes, L) for b in batches]),
                 phoneme_lengths=torch.cat([b.phoneme_lengths for b in batches]),
                 mels=torch.cat([pad(b.mels, T, -11.5) for b in batches]),
                 mel_lengths=torch.cat([b.mel_lengths for b in batches]),
                 pitch=torch.cat([pad(b.pitch, T) for b in batches]),
                 energy=torch.cat([pad(b.energy, T) for b in batches]), speakers=speakers)


# ------------------------------------------------------------------------------------------------ inner loops
def ours(first_order: bool):
    def inner(model, support, query, lr, steps):
        return task_loss(model, support, query, lr, GROUPS, steps=steps, first_order=first_order)
    return inner


def with_higher(model, support, query, lr, steps) -> TaskLoss:
    import higher

    loss = FastSpeech2Loss()
    fast = select_parameters(model, GROUPS)
    # One parameter group per fast tensor, so each gets its own per-element rate α through the override.
    sgd = torch.optim.SGD([{"params": [p]} for p in fast.values()], lr=0.1)
    with higher.innerloop_ctx(model, sgd, copy_initial_weights=False,
                              override={"lr": [lr[n] for n in fast]}) as (fmodel, diffopt):
        for _ in range(steps):
            with _mode(fmodel, False):  # the support in eval mode, as ours (and test time) adapts
                support_loss = loss(fmodel(support), support).total
            diffopt.step(support_loss)
        return TaskLoss(query=loss(fmodel(query), query), support=[])


def with_torchopt(model, support, query, lr, steps) -> TaskLoss:
    import torchopt

    loss = FastSpeech2Loss()
    fast = select_parameters(model, GROUPS)
    names = list(fast)
    # torchopt checks a constant rate is a non-negative scalar; a per-element α goes in as a (constant) schedule,
    # and stays on the tape.
    transforms = {n: torchopt.sgd(lr=lambda count, a=lr[n]: a) for n in names}
    states = {n: transforms[n].init((fast[n],)) for n in names}
    phi = dict(fast)
    for _ in range(steps):
        with _mode(model, False):  # the support in eval mode, as ours (and test time) adapts
            support_loss = loss(functional_call(model, phi, (support,)), support).total
        grads = torch.autograd.grad(support_loss, [phi[n] for n in names], create_graph=True)
        for n, g in zip(names, grads):
            updates, states[n] = transforms[n].update((g,), states[n], inplace=False)
            (phi[n],) = torchopt.apply_updates((phi[n],), updates, inplace=False)
    return TaskLoss(query=loss(functional_call(model, phi, (query,)), query), support=[])


INNER = {"first_order": ours(True), "second_order": ours(False), "higher": with_higher, "torchopt": with_torchopt}


# ------------------------------------------------------------------------------------------------ one step
_COMPILED: dict[int, tuple] = {}


def compiled_copy(model, inner_lr):
    """A copy of ``model`` (and of its rates and Adam) whose encoder and decoder run through ``torch.compile``
    (inductor, compiled in place so parameter names do not change): the ``*_compiled`` variants. Built once per
    model; the first step of a compiled variant includes the compilation (``first_step_wall_ms``)."""
    if id(model) not in _COMPILED:
        twin, rates = copy.deepcopy(model), copy.deepcopy(inner_lr)
        for name in COMPILED_BLOCKS:
            getattr(twin, name).compile()
        params = list(twin.parameters()) + list(rates.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        _COMPILED[id(model)] = (twin, rates, params, optimizer)
    return _COMPILED[id(model)]


def one_step(variant: str, model, inner_lr, params, optimizer, episodes, plain, steps: int) -> None:
    if variant.endswith("_compiled"):
        variant = variant.removesuffix("_compiled")
        model, inner_lr, params, optimizer = compiled_copy(model, inner_lr)
    if variant == "plain":
        optimizer.zero_grad(set_to_none=True)
        FastSpeech2Loss()(model(plain), plain).total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return
    # The same dropout masks for every implementation: task i is seeded with i.
    tasks = [Task(support, query, seed=index) for index, (support, query) in enumerate(episodes)]
    settings = MetaStepSettings(groups=GROUPS, inner_steps=steps, grad_clip=1.0)
    stats = meta_step(model, tasks, optimizer, settings, inner_lr=inner_lr, params=params,
                      task_fn=lambda m, s, q, lr: INNER[variant](m, s, q, lr, steps))
    if not stats.applied:
        raise RuntimeError(f"{variant}: the meta-step was skipped ({stats.skipped})")


def agreement(model, inner_lr, params, episodes, steps: int, peers=PEERS) -> dict[str, float]:
    """Largest relative gradient difference of the peers (higher / torchopt) to ours (eval mode, no optimizer
    step)."""
    model.eval()
    grads = {}
    for variant in ("second_order", *peers):
        for p in params:
            p.grad = None
        support, query = episodes[0]
        support = support.with_durations(model.alignment(support).durations)
        query = query.with_durations(model.alignment(query).durations)
        INNER[variant](model, support, query, inner_lr.as_dict(), steps).query.total.backward()
        grads[variant] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    model.train()
    for p in params:
        p.grad = None
    ref = grads["second_order"]
    scale = max(float(g.abs().max()) for g in ref)
    return {v: max(float((a - b).abs().max()) for a, b in zip(grads[v], ref)) / scale for v in peers}


# ------------------------------------------------------------------------------------------------ processes
def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, in MB; ru_maxrss without /proc."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    state = set_up(args.preset, args.tasks, args.shots, args.queries)
    variants = tuple(args.variants)
    if args.child == "agreement":
        print(json.dumps(agreement(*state[:3], state[4], args.inner_steps, [v for v in PEERS if v in variants])))
        return
    if args.child == "flops":
        # One more step per variant under the FLOP counter (matmul-class FLOPs), and the fp32 matmul roof of this
        # process's threads: achieved FLOP/s is these FLOPs over the timed CPU time.
        # A compiled variant does the same FLOPs as its eager twin (the counter does not see inside compiled code).
        counts = {v: count_flops(lambda v=v: one_step(v, *state, args.inner_steps))
                  for v in variants if not v.endswith("_compiled")}
        counts.update({v: counts[v.removesuffix("_compiled")] for v in variants
                       if v.endswith("_compiled") and v.removesuffix("_compiled") in counts})
        roof = matmul_roof("cpu", torch.float32, size=1024, seconds=2.0)
        print(json.dumps({"flops": counts, "roof": roof.__dict__}))
        return
    if args.child == "timing":
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        wall: dict[str, list[float]] = {v: [] for v in variants}
        for round_ in range(args.repeats + 1):
            # The order rotates every round: a variant that follows a memory-hungry one finds pages already mapped.
            for variant in variants[round_ % len(variants):] + variants[:round_ % len(variants)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                one_step(variant, *state, args.inner_steps)
                cpu[variant].append((time.process_time() - start_cpu) * 1000)
                wall[variant].append((time.perf_counter() - start) * 1000)
        print(json.dumps({v: {"ms": statistics.median(cpu[v][1:]), "cpu_ms": cpu[v], "wall_ms": wall[v]}
                          for v in variants}))
        return
    before = _status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak-RSS mark to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss"
    start = time.perf_counter()
    one_step(args.child, *state, args.inner_steps)
    print(json.dumps({"first_ms": (time.perf_counter() - start) * 1000, "peak_mb": _status_mb("VmHWM") - before,
                      "memory_method": method}))


def run_child(preset: str, what: str, args: argparse.Namespace, repeats: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", what, "--preset", preset, "--repeats", str(repeats),
               "--tasks", str(args.tasks), "--shots", str(args.shots), "--queries", str(args.queries),
               "--inner-steps", str(args.inner_steps), "--threads", str(args.threads), "--variants", *args.variants]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{preset}/{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_flops(entry: dict, preset: str, args: argparse.Namespace) -> None:
    """``entry["throughput"]``: per variant, matmul-class FLOPs of one step, achieved FLOP/s at the entry's timed
    CPU time, and the fraction of this machine's fp32 matmul roof on the same threads."""
    variants = entry.get("variants") or [v for v in VARIANTS if f"{v}_ms" in entry]  # files before "variants"
    report = run_child(preset, "flops", argparse.Namespace(**{**vars(args), "variants": variants}))
    roof = Roof(**report["roof"])
    entry["throughput"] = {v: throughput(n, entry[f"{v}_ms"] / 1000, roof) for v, n in report["flops"].items()}
    for v, t in entry["throughput"].items():
        print(f"{preset:6s} {v:13s} {t['flops_per_step'] / 1e9:8.1f} GFLOP/step {t['achieved_flops_per_s'] / 1e9:6.2f} "
              f"GFLOP/s = {t['fraction_of_roof']:.1%} of the {roof.flops_per_s / 1e9:.1f} GFLOP/s roof", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--tasks", type=int, default=2, help="tasks per meta-batch (B)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round (tiny)")
    parser.add_argument("--paper-repeats", type=int, default=1, help="timed rounds after the warm-up round (paper)")
    parser.add_argument("--memory-sweep", type=int, nargs="*", default=[1, 2, 5, 10],
                        help="inner step counts of the memory-vs-k measurement")
    parser.add_argument("--memory-sweep-presets", nargs="*", default=["tiny"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:5]), choices=VARIANTS,
                        help="what to run (default all but the compiled ones; second_order and a peer give the "
                             "ratio, a *_compiled variant and its eager twin theirs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--add-throughput", type=Path, metavar="JSON",
                        help="add the FLOP/s report to the presets of an earlier result file of this script, from "
                             "its own timings, and rewrite it (no new timing)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.add_throughput:
        torch.set_num_threads(args.threads)
        result = json.loads(args.add_throughput.read_text())
        for preset in (p for p in ("tiny", "paper") if p in result):
            add_flops(result[preset], preset, args)
        result.setdefault("setup", {})["throughput"] = (
            "matmul-class FLOPs of one step (torch FlopCounterMode) over its median CPU time, against the best fp32 "
            f"1024^2 matmul rate on {args.threads} thread(s); added {datetime.date.today().isoformat()}, load "
            f"{os.getloadavg()[0]:.2f}")
        args.add_throughput.write_text(json.dumps(result, indent=1) + "\n")
        print(f"rewrote {args.add_throughput}")
        return
    torch.set_num_threads(args.threads)
    result = {"date": datetime.date.today().isoformat(), "machine": machine_info(),
              "setup": {"tasks": args.tasks, "shots": args.shots, "queries": args.queries,
                        "inner_steps": args.inner_steps, "threads": args.threads, "episode": "synthetic, demo shape",
                        "inner_lr": "learned per-element (Meta-SGD), all second-order variants",
                        "memory": "peak RSS growth of the first step in a fresh process (VmHWM reset after set-up)",
                        "time": "median CPU time over rounds of all variants run in turn, after a warm-up round; "
                                "*_over_* ratios: median over rounds of the ratio within each round",
                        "peers": "higher and torchopt replace only the inner loop; support in eval mode in all"},
              "load_average_at_start": os.getloadavg()}
    for preset in args.presets:
        entry: dict = {"peak_mb": {}, "variants": list(args.variants)}
        for variant in args.variants:
            report = run_child(preset, variant, args)
            entry["peak_mb"][variant] = round(report["peak_mb"], 1)
            entry.setdefault("first_step_wall_ms", {})[variant] = round(report["first_ms"])  # compiling included
            entry["memory_method"] = report["memory_method"]
            print(f"{preset:6s} {variant:13s} peak +{report['peak_mb']:8.1f} MB", flush=True)
        timing = run_child(preset, "timing", args, args.repeats if preset == "tiny" else args.paper_repeats)
        for variant in args.variants:
            entry[f"{variant}_ms"] = round(timing[variant]["ms"], 1)
            print(f"{preset:6s} {variant:13s} {timing[variant]['ms']:10.1f} ms", flush=True)
        entry["rounds_cpu_ms"] = {v: [round(t, 1) for t in timing[v]["cpu_ms"]] for v in args.variants}
        entry["rounds_wall_ms"] = {v: [round(t, 1) for t in timing[v]["wall_ms"]] for v in args.variants}
        # The numbers that count: ours over each peer within one round (same process, adjacent in time), median
        # over the timed rounds -- not a ratio of two medians taken at different times.
        def within_rounds(a: str, b: str) -> list[float]:
            return [x / y for x, y in zip(timing[a]["cpu_ms"][1:], timing[b]["cpu_ms"][1:])]

        for peer in (v for v in PEERS if v in args.variants and "second_order" in args.variants):
            rounds = within_rounds("second_order", peer)
            entry[f"second_order_over_{peer}"] = {"median": round(statistics.median(rounds), 3),
                                                  "rounds": [round(r, 3) for r in rounds]}
            print(f"{preset:6s} second_order / {peer}: {statistics.median(rounds):.3f} (rounds {rounds})", flush=True)
        if any(v in args.variants for v in PEERS):
            entry["agreement"] = run_child(preset, "agreement", args)
        if {"first_order", "second_order"} <= set(args.variants):
            rounds = within_rounds("second_order", "first_order")
            entry["second_over_first_order_rounds"] = [round(r, 3) for r in rounds]
            entry["second_over_first_order"] = round(statistics.median(rounds), 2)
        for variant in (v for v in args.variants if v.endswith("_compiled")):
            if (eager := variant.removesuffix("_compiled")) not in args.variants:
                continue
            rounds = within_rounds(variant, eager)
            entry[f"{variant}_over_eager"] = {"median": round(statistics.median(rounds), 3),
                                              "rounds": [round(r, 3) for r in rounds]}
            print(f"{preset:6s} {variant} / eager: {statistics.median(rounds):.3f} (rounds {rounds})", flush=True)
        add_flops(entry, preset, args)
        entry["params"] = sum(p.numel() for p in build_model(config_from_dict({}, [f"model.preset={preset}"]),
                                                              N_SYMBOLS, TRAIN_SPEAKERS).parameters())
        if preset in args.memory_sweep_presets:
            entry["memory_by_inner_steps"] = {}
            for variant in ("first_order", "second_order"):
                sweep = {}
                for k in args.memory_sweep:
                    sweep[k] = round(run_child(preset, variant, argparse.Namespace(**{**vars(args),
                                                                                     "inner_steps": k}))["peak_mb"], 1)
                    print(f"{preset:6s} {variant:13s} k={k:<3d} peak +{sweep[k]:8.1f} MB", flush=True)
                entry["memory_by_inner_steps"][variant] = sweep
        result[preset] = entry
    result["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"meta-step-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
