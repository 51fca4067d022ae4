"""Throughput and memory of metatts's training steps on one CUDA GPU, at every precision, with FLOP/s against the
GPU's matmul roof; the largest episode a second-order step fits; and a short real `meta-train` on a synthetic store.

    python benchmarks/gpu.py [--presets tiny paper] [--precisions fp32 bf16 fp16] [--budget-s 240]

Without CUDA it prints one line saying it skipped and exits 0 (CI runs that). Everything the numbers come from is
the code `metatts train` / `metatts meta-train` run: ``metatts.runtime.precision`` (autocast, GradScaler, the inner
loss scale), ``metatts.meta.step.meta_step`` (the meta-step `metatts meta-train` takes: aligner durations for the
support without a graph, the query aligner with one, k inner steps, the query loss plus forward-sum, backward per
task, then unscale, clip, scaler step), the model and loss.

Per preset (tiny, paper) and precision (fp32, bf16, fp16):
  * ``plain``: one ``metatts train`` step on B x (N + Q) utterances as one multi-speaker batch;
  * ``first_order`` / ``second_order``: one meta-step of B tasks of N support + Q query utterances, k inner steps,
    learned per-element inner rates;
  * ``plain_compiled``: the plain step with encoder and decoder under ``torch.compile`` (inductor), its first step
    (compilation) and ratio to eager -- the measurement behind not compiling by default;
  each with ``ms`` (mean over ``--repeats`` steps after ``--warmup``), ``steps_per_s``, ``peak_mb``
  (``torch.cuda.max_memory_allocated`` during the timed steps; model, Adam state and data included, reported as
  ``resident_mb``) and FLOP/s (``metatts.runtime.flops``: matmul-class FLOPs of one step / its time) beside the
  matmul roof measured at that dtype.
Memory and the meta-batch: a meta-step back-propagates each task as soon as its loss exists (as meta-train does), so
at most one task's graph is alive and the peak does not grow with B -- measured here as the second-order peak at
B = 1 against B = ``--tasks``. What bounds memory is the episode: ``largest_support`` doubles the support set N of
a one-task second-order step until the GPU runs out of memory (or ``--max-shots``), per preset at ``auto``
precision.
``meta_train``: ``metatts.meta.outer_loop.meta_train`` (the CLI's function) for ``--meta-steps`` steps at
``auto`` precision on a feature store of synthetic features (random log-mels and pitch/energy tracks of
demo-corpus shape written in the store's own format -- speed only; nothing is learned from them), after
``metatts.train.supervised.train`` for ``--train-steps``.
Writes benchmarks/results/gpu-<date>.json with the device name and ``machine`` (``metatts.runtime.env``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from meta_step import COMPILED_BLOCKS, GROUPS, N_SYMBOLS, TRAIN_SPEAKERS, _concat, synthetic_batch  # noqa: E402

from metatts.config import config_from_dict  # noqa: E402
from metatts.meta.inner_lr import InnerLR  # noqa: E402
from metatts.meta.step import MetaStepSettings, Task  # noqa: E402
from metatts.meta.step import meta_step as run_meta_step  # noqa: E402
from metatts.model.acoustic import select_parameters  # noqa: E402
from metatts.model.batch import NEW_SPEAKER, Batch  # noqa: E402
from metatts.model.losses import FastSpeech2Loss  # noqa: E402
from metatts.runtime.env import machine_info  # noqa: E402
from metatts.runtime.flops import count_flops, matmul_roof, throughput  # noqa: E402
from metatts.runtime.precision import autocast, grad_scaler, resolve_precision  # noqa: E402
from metatts.train.common import build_model  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------ device
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mb(value: int) -> float:
    return round(value / 2**20, 1)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class Setup:
    model: torch.nn.Module
    inner_lr: InnerLR
    params: list
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str
    device: torch.device
    episodes: list[tuple[Batch, Batch]]
    plain: Batch
    loss: FastSpeech2Loss


def set_up(preset: str, precision: str, device: torch.device, tasks: int, shots: int, queries: int) -> Setup:
    """The model of a preset (train mode: dropout on, as in training) and synthetic episodes of demo shape."""
    config = config_from_dict({}, [f"model.preset={preset}"])
    torch.manual_seed(0)
    model = build_model(config, N_SYMBOLS, TRAIN_SPEAKERS).to(device).train()
    g = torch.Generator().manual_seed(1)
    new = lambda n: torch.full((n,), NEW_SPEAKER, dtype=torch.long)  # noqa: E731
    pairs = [(synthetic_batch(g, shots, config.audio.n_mels, new(shots)),
              synthetic_batch(g, queries, config.audio.n_mels, new(queries))) for _ in range(tasks)]
    rows = torch.arange(tasks * (shots + queries)) % TRAIN_SPEAKERS
    plain = _concat([b for pair in pairs for b in pair], rows).to(device)
    inner_lr = InnerLR(select_parameters(model, GROUPS), init=0.1).to(device)
    params = list(model.parameters()) + list(inner_lr.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    return Setup(model, inner_lr, params, optimizer, grad_scaler(device, precision), precision, device,
                 [(s.to(device), q.to(device)) for s, q in pairs], plain, FastSpeech2Loss())


def _finish(s: Setup) -> None:
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_(s.params, 1.0)
    s.scaler.step(s.optimizer)
    s.scaler.update()


def plain_step(s: Setup) -> None:
    """``metatts train``'s step (``train.supervised``): autocast forward, scaled backward, unscale, clip, step."""
    s.optimizer.zero_grad(set_to_none=True)
    with autocast(s.device, s.precision):
        terms = s.loss(s.model(s.plain), s.plain)
    s.scaler.scale(terms.total).backward()
    _finish(s)


def meta_step(s: Setup, *, first_order: bool, inner_steps: int) -> None:
    """One meta-step: ``metatts.meta.step.meta_step``, the function ``metatts meta-train`` calls."""
    tasks = [Task(support=support, query=query, seed=index) for index, (support, query) in enumerate(s.episodes)]
    settings = MetaStepSettings(groups=list(GROUPS), inner_steps=inner_steps, first_order=first_order,
                                meta_batch=len(tasks), grad_clip=1.0, precision=s.precision)
    run_meta_step(s.model, tasks, s.optimizer, settings, inner_lr=s.inner_lr, loss=s.loss, scaler=s.scaler,
                  params=s.params)


def timed(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        step()
    _sync(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    out = {"ms": round(seconds * 1000, 2), "steps_per_s": round(1 / seconds, 3), "seconds": seconds}
    if device.type == "cuda":
        out.update(peak_mb=_mb(torch.cuda.max_memory_allocated(device)), resident_mb=_mb(resident))
    return out


def _peak_of_one_step(step: Callable[[], None], device: torch.device) -> float | None:
    """Run ``step`` once; its peak allocated memory (None off CUDA)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    return _mb(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def compiled_plain(s: Setup, args: argparse.Namespace, roof, eager: dict) -> dict:
    """The plain step with the model's encoder and decoder compiled in place by ``torch.compile``
    (``--compile-backend``, inductor by default), after the eager steps (it changes ``s.model``): time, compile time
    (the first step's), and the ratio to eager. FLOPs are the eager step's (the counter does not see inside compiled
    code). A compiler error is recorded, not raised: this row measures torch.compile, which metatts does not need."""
    try:
        for name in COMPILED_BLOCKS:  # what meta_step.py's compiled variants compile
            getattr(s.model, name).compile(backend=args.compile_backend)
        start = time.perf_counter()
        plain_step(s)
        _sync(s.device)
        first = time.perf_counter() - start
        result = timed(lambda: plain_step(s), s.device, args.warmup, args.repeats)
    except Exception as error:  # noqa: BLE001 - any compiler failure is the measurement
        if isinstance(error, RuntimeError) and _is_oom(error):
            _free(s.device)
            return {"out_of_memory": True}
        return {"error": f"{type(error).__name__}: {error}"[:500]}
    seconds = result.pop("seconds")
    result["first_step_s"] = round(first, 2)
    if "flops_per_step" in eager:
        result.update(throughput(eager["flops_per_step"], seconds, roof))
        result.pop("roof")
    if "ms" in eager:
        result["over_eager"] = round(result["ms"] / eager["ms"], 3)
    return result


# ------------------------------------------------------------------------------------------------ stages
class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def grid(args: argparse.Namespace, device: torch.device, budget: Budget) -> dict:
    roofs = {}
    for precision in args.precisions:
        roofs[precision] = matmul_roof(device, DTYPES[precision], size=args.roof_size, seconds=args.roof_seconds)
    out: dict = {"roofs": {p: dataclasses.asdict(r) for p, r in roofs.items()}}
    for preset in args.presets:
        for precision in args.precisions:
            key = f"{preset}/{precision}"
            if budget.left() < 0:
                out[key] = {"skipped": "time budget spent"}
                continue
            s = set_up(preset, precision, device, args.tasks, args.shots, args.queries)
            steps = {"plain": lambda: plain_step(s),
                     "first_order": lambda: meta_step(s, first_order=True, inner_steps=args.inner_steps),
                     "second_order": lambda: meta_step(s, first_order=False, inner_steps=args.inner_steps)}
            entry: dict = {}
            for name, step in steps.items():
                try:
                    result = timed(step, device, args.warmup, args.repeats)
                    result.update(throughput(count_flops(step), result.pop("seconds"), roofs[precision]))
                    result.pop("roof")
                except RuntimeError as error:
                    if not _is_oom(error):
                        raise
                    result = {"out_of_memory": True}
                    _free(device)
                entry[name] = result
                print(f"{key:12s} {name:13s} {json.dumps(result)}", flush=True)
            if args.compile_backend != "off":
                entry["plain_compiled"] = compiled_plain(s, args, roofs[precision], entry["plain"])
                print(f"{key:12s} {'plain_compiled':13s} {json.dumps(entry['plain_compiled'])}", flush=True)
            entry["loss_scale_after"] = s.scaler.get_scale() if s.scaler.is_enabled() else None
            out[key] = entry
            s = steps = None
            _free(device)
    return out


def memory(args: argparse.Namespace, device: torch.device, budget: Budget) -> dict:
    """Second-order peak at B = 1 vs B = tasks (flat: tasks back-propagate one by one) and the largest support."""
    out: dict = {}
    for preset in args.presets:
        precision = resolve_precision("auto", device)
        entry: dict = {"precision": precision}
        step = lambda s: meta_step(s, first_order=False, inner_steps=args.inner_steps)  # noqa: E731
        for tasks in sorted({1, args.tasks}):
            s = set_up(preset, precision, device, tasks, args.shots, args.queries)
            step(s)  # warm-up: Adam state and allocator pools exist before the measured step
            entry[f"peak_mb_tasks_{tasks}"] = _peak_of_one_step(lambda: step(s), device)
            s = None
            _free(device)
        shots, fits = args.shots, None
        while shots <= args.max_shots and budget.left() > 0:
            try:
                s = set_up(preset, precision, device, 1, shots, args.queries)
                start = time.perf_counter()
                peak = _peak_of_one_step(lambda: step(s), device)
                fits = {"shots": shots, "peak_mb": peak, "step_s": round(time.perf_counter() - start, 2)}
                print(f"{preset:6s} second order, 1 task of {shots} support clips: {fits}", flush=True)
            except RuntimeError as error:
                if not _is_oom(error):
                    raise
                entry["first_out_of_memory_shots"] = shots
                break
            finally:
                s = None
                _free(device)
            shots *= 2
        entry["largest_support"] = fits
        entry["stopped"] = ("out of memory" if "first_out_of_memory_shots" in entry else
                            f"--max-shots {args.max_shots}" if shots > args.max_shots else "time budget spent")
        out[preset] = entry
    return out


def write_synthetic_store(root: Path, speakers: int, utterances: int, seed: int = 0) -> Path:
    """A feature store in the format ``metatts prepare`` writes (features, manifest, stats, symbols, splits), of
    synthetic features: random log-mels and pitch/energy tracks, ~50 phonemes and ~5 frames per phoneme."""
    from metatts.config import save_config
    from metatts.corpus.splits import load_or_make
    from metatts.features.store import (FileSummary, ManifestEntry, Moments, UtteranceFeatures, feature_path,
                                        write_atomic, write_features)
    from metatts.text.symbols import SymbolTable

    rng = np.random.default_rng(seed)
    symbols = SymbolTable()
    phones = [s for s in symbols.symbols[2:] if s.isalpha()]
    entries, f0_all, energy_all = [], Moments(), Moments()
    for k in range(speakers):
        speaker = f"s{k:02d}"
        level = 100.0 + 150.0 * rng.random()  # each speaker's own pitch level
        for i in range(utterances):
            n = int(rng.integers(35, 65))
            frames = n * 5 + int(rng.integers(-20, 20))
            pitch = (level * np.exp(0.1 * rng.standard_normal(frames))).astype(np.float32)
            voiced = rng.random(frames) > 0.2
            pitch[~voiced] = 0.0
            energy = np.abs(rng.normal(5.0, 2.0, frames)).astype(np.float32)
            mel = (rng.standard_normal((80, frames)) * 2 - 5).astype(np.float32)
            f0 = Moments.of(np.log(pitch[voiced]))
            summary = FileSummary(key=f"synthetic-{speaker}-{i}", frames=frames, seconds=frames * 256 / 22050,
                                  log_f0=f0, energy=Moments.of(energy), trim_start_seconds=0.0)
            utt = f"{speaker}_{i:03d}"
            path = feature_path(root, speaker, utt)
            write_features(path, UtteranceFeatures(torch.from_numpy(mel), torch.from_numpy(pitch),
                                                   torch.from_numpy(voiced), torch.from_numpy(energy)), summary)
            entries.append(ManifestEntry(id=utt, speaker=speaker, text="synthetic",
                                         phonemes=[phones[j] for j in rng.integers(0, len(phones), n)],
                                         frames=frames, seconds=summary.seconds, path=str(path.relative_to(root)),
                                         audio_path="", corpus="synthetic"))
            f0_all, energy_all = f0_all + f0, energy_all + summary.energy
    stats = {"log_f0_mean": f0_all.mean, "log_f0_std": f0_all.std, "energy_mean": energy_all.mean,
             "energy_std": energy_all.std, "utterances": len(entries)}
    write_atomic(root / "stats.json", json.dumps({"global": stats, "speakers": {
        e.speaker: stats for e in entries}}))
    write_atomic(root / "symbols.json", symbols.to_json())
    counts = {f"s{k:02d}": utterances for k in range(speakers)}
    load_or_make(root / "splits.json", counts, val_speakers=2, test_speakers=0, seed=0, min_utterances=utterances)
    config = config_from_dict({}, [f"data.features={root}", "data.val_speakers=2", "data.test_speakers=0",
                                   f"data.min_utterances_per_speaker={utterances}"])
    save_config(config, root / "config.yaml")
    write_atomic(root / "manifest.jsonl", "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in entries))
    return root


def short_runs(args: argparse.Namespace, device: torch.device, work: Path) -> dict:
    """`metatts train` then `metatts meta-train` (their functions) on a synthetic store, at auto precision."""
    from metatts.meta.outer_loop import meta_train
    from metatts.train.supervised import train

    store = write_synthetic_store(work / "store", speakers=args.store_speakers, utterances=12)
    overrides = [f"data.features={store}", "data.val_speakers=2", "data.test_speakers=0",
                 "data.min_utterances_per_speaker=12", f"model.preset={args.run_preset}", "train.precision=auto",
                 f"train.device={device.type}", f"train.steps={args.train_steps}",
                 f"train.batch_size={args.train_batch}",
                 "train.log_every=10", f"train.val_every={max(args.train_steps, 1)}",
                 f"train.checkpoint_every={max(args.train_steps, 1)}", f"meta.steps={args.meta_steps}",
                 f"meta.meta_batch={args.tasks}", f"meta.inner_steps={args.inner_steps}", "meta.val_tasks=1",
                 f"meta.shots={args.shots}", f"meta.queries={args.queries}"]
    quiet = dict(progress=False, log=lambda *_: None)
    start = time.perf_counter()
    trained = train(config_from_dict({}, overrides), work / "train", **quiet)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    meta = meta_train(config_from_dict({}, overrides), work / "meta", init_from=work / "train/checkpoint", **quiet)
    meta_s = time.perf_counter() - start
    return {"preset": args.run_preset, "precision": resolve_precision("auto", device),
            "store": {"speakers": args.store_speakers, "utterances_per_speaker": 12, "features": "synthetic"},
            "train": {"steps": trained.step, "seconds": round(train_s, 2), "skipped": trained.skipped_steps,
                      "steps_per_s": round(trained.step / train_s, 3)},
            "meta_train": {"steps": meta.step, "seconds": round(meta_s, 2), "skipped": meta.skipped_steps,
                           "steps_per_s": round(meta.step / meta_s, 3),
                           "last": meta.train[-1] if meta.train else None},
            "note": "wall time including set-up, validation and checkpoints, as a user sees it"}


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(DTYPES))
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch (B)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-shots", type=int, default=512, help="largest support set the memory search tries")
    parser.add_argument("--roof-size", type=int, default=8192)
    parser.add_argument("--roof-seconds", type=float, default=1.0)
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the plain_compiled row (off: no such row)")
    parser.add_argument("--run-preset", default="tiny", help="model preset of the short train / meta-train runs")
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--meta-steps", type=int, default=10)
    parser.add_argument("--store-speakers", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="stages that would start after this many seconds are skipped and say so; one stage "
                             "already running finishes, so the whole run stays under 5 minutes on one GPU")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of the code path
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: skipped, no CUDA device (torch.cuda.is_available() is False)")
        return 0
    device = torch.device(args.device)
    budget = Budget(args.budget_s)
    started = time.perf_counter()
    result: dict = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "machine": machine_info(),
        "cuda": {"version": torch.version.cuda, "capability": list(torch.cuda.get_device_capability(device)),
                 "memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
                 "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn": torch.backends.cudnn.version()} if device.type == "cuda" else None,
        "setup": {"tasks": args.tasks, "shots": args.shots, "queries": args.queries, "inner_steps": args.inner_steps,
                  "warmup": args.warmup, "repeats": args.repeats, "episode": "synthetic, demo shape",
                  "auto_precision": resolve_precision("auto", device)},
    }
    result["steps"] = grid(args, device, budget)
    result["memory"] = memory(args, device, budget) if budget.left() > 0 else {"skipped": "time budget spent"}
    if budget.left() > 0:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            result["runs"] = short_runs(args, device, Path(work))
    else:
        result["runs"] = {"skipped": "time budget spent"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
