"""Meta-learning against the multi-speaker baseline at equal compute, on the fixed episodes of a task suite.

    python benchmarks/meta_vs_baseline.py --config configs/demo.yaml --baseline runs/demo/train \\
        --suite tasks/demo.yaml --meta-steps 100 --runs /tmp/meta-vs-baseline [--set meta.first_order=true]

Starting point: a finished `metatts train` run (the baseline, B0). From it, with one torch thread each:

* meta: `meta-train --init-from B0` for ``--meta-steps`` meta-updates, or until it has spent ``--meta-cpu`` CPU
  seconds; its process CPU time is the budget;
* baseline+: B0's run resumed (same optimizer, same schedule) for as many more plain steps as fit in the same CPU
  time;
* the two advance in alternating chunks of about a minute of CPU each (the one behind goes next), so both run under
  the same machine load; each chunk resumes its run, which reproduces an uninterrupted one;
* validation is off in both (it is not training compute).

Then every model adapts the same speaker group (``model.speaker_groups``) for the same 5 inner steps (the suite's
grid is reported too) on the suite's frozen test episodes: the meta model with its learned inner rates, each
baseline with plain SGD at the rate that is best *on the meta-val speakers* (a sweep on a val-split copy of the
suite, so the test episodes never choose a baseline's rate). The headline is the mean query mel L1 after 5 steps.

Writes benchmarks/results/meta-vs-baseline-<suite>[-<name>]-<date>.json (curves, sweeps, compute, paired differences
per episode and per speaker, machine). ``--resume`` on a finished RUNS folder only re-evaluates.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from metatts.config import load_config
from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.tasks import episodes_digest, frozen_episodes, load_task_suite
from metatts.features.store import FeatureStore
from metatts.evaluation.curves import checkpoint_curve
from metatts.meta.outer_loop import meta_train
from metatts.runtime.checkpoint import read_meta
from metatts.runtime.env import machine_info
from metatts.train.supervised import train

ROOT = Path(__file__).resolve().parents[1]
RATES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
PILOT = 50
CHUNK_CPU = 60.0  # CPU seconds per alternating chunk


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def best_rate(checkpoint: Path, episodes, store, k: int) -> tuple[float, dict]:
    sweep = {}
    for rate in RATES:
        sweep[rate] = checkpoint_curve(checkpoint, episodes, store, [k], inner_lr=rate).at(k)
        print(f"  {checkpoint.parent.name} lr {rate}: val mel L1 after {k} steps {sweep[rate]:.4f}", flush=True)
    finite = {r: v for r, v in sweep.items() if math.isfinite(v)}
    return min(finite, key=finite.get), {str(r): v for r, v in sweep.items()}


def _mean_and_error(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
    return mean, sd / math.sqrt(len(values))


def paired_differences(meta: dict, other: dict, column: int) -> dict:
    """Meta minus another model on the same episodes at one grid column (negative: meta better), per episode and
    per speaker: a speaker's episodes share its voice, so the speaker means are the independent samples."""
    diffs = [m[column] - b[column] for m, b in zip(meta["mel"], other["mel"])]
    mean, error = _mean_and_error(diffs)
    speakers: dict[str, list[float]] = {}
    for speaker, d in zip(meta["speakers"], diffs):
        speakers.setdefault(speaker, []).append(d)
    by_speaker = {s: sum(v) / len(v) for s, v in speakers.items()}
    _, speaker_error = _mean_and_error(list(by_speaker.values()))  # mean of equal-sized groups: `mean`
    return {"mean_difference": mean, "standard_error": error, "meta_better_episodes": sum(d < 0 for d in diffs),
            "episodes": len(diffs), "by_speaker": by_speaker, "speaker_standard_error": speaker_error,
            "meta_better_speakers": sum(d < 0 for d in by_speaker.values()), "speakers": len(by_speaker)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--baseline", type=Path, required=True, help="a finished `metatts train` run folder (B0)")
    parser.add_argument("--suite", type=Path, required=True)
    parser.add_argument("--features", help="feature store (overrides the config's and the suite's)")
    parser.add_argument("--meta-steps", type=int, default=100)
    parser.add_argument("--meta-cpu", type=float, help="meta-train until this many CPU seconds (instead of "
                        "--meta-steps)")
    parser.add_argument("--inner-steps", type=int, default=5, help="the step count compared (the suite grid too)")
    parser.add_argument("--set", action="append", default=[], help="config override for the meta run, KEY=VALUE")
    parser.add_argument("--runs", type=Path, required=True, help="folder for the two new runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", help="added to the result file's name, to keep several comparisons of one day")
    parser.add_argument("--resume", action="store_true", help="reuse the phases RUNS/compute.json records as done")
    args = parser.parse_args()

    torch.set_num_threads(1)
    base_checkpoint = args.baseline / "checkpoint"
    b0 = read_meta(base_checkpoint)
    if b0.kind != "train":
        sys.exit(f"{base_checkpoint} is a {b0.kind} checkpoint; --baseline must be a `metatts train` run")
    common = [f"data.features={args.features}"] if args.features else []
    common += ["train.threads=1", "meta.val_tasks=0", f"meta.inner_steps={args.inner_steps}"]
    meta_config = load_config(args.config, common + [f"meta.steps={args.meta_steps}"] + args.set)

    # The CPU seconds of each phase are kept in RUNS/compute.json, so --resume can top a run up after a stop.
    ledger_path = args.runs / "compute.json"
    ledger = json.loads(ledger_path.read_text()) if args.resume and ledger_path.is_file() else {}

    def record(**values) -> None:
        ledger.update(values)
        args.runs.mkdir(parents=True, exist_ok=True)
        ledger_path.write_text(json.dumps(ledger, indent=1))

    # Meta and baseline+ advance in alternating chunks of ~CHUNK_CPU seconds, whichever has spent less CPU going
    # next, so both run under the same machine load (CPU seconds on a shared machine stretch with load: a budget
    # measured at load 4 is not the same compute as one measured idle). Each chunk resumes its run from its
    # checkpoint; both schedules depend on the step only, so the chunks make the runs an uninterrupted process
    # would. A chunk's CPU includes loading the run (the same few seconds on both sides).
    meta_run, more_run = args.runs / "meta", args.runs / "baseline-more"
    if (meta_run.exists() or more_run.exists()) and not ledger:
        sys.exit(f"{args.runs} holds runs without a compute record: pick an empty --runs folder")
    for key in ("meta_cpu", "meta_wall", "meta_steps", "base_cpu", "base_wall", "base_steps"):
        ledger.setdefault(key, 0)
    if not more_run.exists():
        shutil.copytree(args.baseline, more_run)

    def meta_done() -> bool:
        return ledger["meta_cpu"] >= args.meta_cpu if args.meta_cpu else ledger["meta_steps"] >= args.meta_steps

    def steps_for(spent: float, steps: int, seconds: float, first: int) -> int:
        return first if not steps else max(1, math.ceil(seconds / (spent / steps)))

    while not meta_done() or ledger["base_cpu"] < ledger["meta_cpu"]:
        if not meta_done() and ledger["meta_cpu"] <= ledger["base_cpu"]:
            goal = min(CHUNK_CPU, args.meta_cpu - ledger["meta_cpu"]) if args.meta_cpu else CHUNK_CPU
            chunk = steps_for(ledger["meta_cpu"], ledger["meta_steps"], goal, 10)
            steps = ledger["meta_steps"] + chunk
            if not args.meta_cpu:
                steps = min(steps, args.meta_steps)
            config = load_config(args.config, common + [f"meta.steps={steps}"] + args.set)
            resume = (meta_run / "checkpoint").exists()
            _, cpu, wall = timed(lambda: meta_train(config, meta_run, init_from=None if resume else base_checkpoint,
                                                    resume=resume, progress=False))
            record(meta_cpu=ledger["meta_cpu"] + cpu, meta_wall=ledger["meta_wall"] + wall, meta_steps=steps)
        else:
            goal = ledger["meta_cpu"] - ledger["base_cpu"] if meta_done() else CHUNK_CPU
            steps = ledger["base_steps"] + steps_for(ledger["base_cpu"], ledger["base_steps"], goal, PILOT)
            config = load_config(args.config, common + [f"train.steps={b0.step + steps}", f"train.val_every={10 ** 9}"])
            _, cpu, wall = timed(lambda: train(config, more_run, resume=True, progress=False))
            record(base_cpu=ledger["base_cpu"] + cpu, base_wall=ledger["base_wall"] + wall, base_steps=steps)
        print(f"meta {ledger['meta_steps']} steps {ledger['meta_cpu']:.0f} s CPU | baseline+ {ledger['base_steps']} "
              f"steps {ledger['base_cpu']:.0f} s CPU", flush=True)
    meta_cpu, meta_steps = ledger["meta_cpu"], ledger["meta_steps"]

    suite = load_task_suite(args.suite, features=args.features)
    store = FeatureStore(suite.features)
    splits = SpeakerSplits.load(Path(suite.features) / "splits.json")
    grid = sorted(set(suite.step_grid) | {0, args.inner_steps})
    test = frozen_episodes(suite, store, splits)
    val = frozen_episodes(dataclasses.replace(suite, split="val"), store, splits)
    k = args.inner_steps
    checkpoints = {"meta": meta_run / "checkpoint", "baseline": base_checkpoint,
                   "baseline_more": more_run / "checkpoint"}
    rates, sweeps, curves = {"meta": "learned"}, {}, {}
    for name in ("baseline", "baseline_more"):
        rates[name], sweeps[name] = best_rate(checkpoints[name], val, store, k)
    # The meta-val speakers' score of each model (what to choose meta-training settings by: never the test episodes).
    val_at_k = {"meta": checkpoint_curve(checkpoints["meta"], val, store, [k]).at(k),
                **{name: sweeps[name][str(rates[name])] for name in ("baseline", "baseline_more")}}
    for name, checkpoint in checkpoints.items():
        lr = None if name == "meta" else rates[name]
        curves[name] = checkpoint_curve(checkpoint, test, store, grid, inner_lr=lr).to_dict()
        means = " ".join(f"k={s}:{v:.4f}" for s, v in zip(grid, curves[name]["mean_mel"]))
        print(f"{name}: test query mel L1 {means}", flush=True)
    at_k = {name: curve["mean_mel"][grid.index(k)] for name, curve in curves.items()}
    paired = {name: paired_differences(curves["meta"], curves[name], grid.index(k))
              for name in ("baseline", "baseline_more")}
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(sys.argv),
        "suite": suite.name, "features": suite.features, "episodes": len(test), "digest": episodes_digest(test),
        "val_episodes": len(val), "inner_steps": k, "speaker_groups": list(meta_config.model.speaker_groups),
        "baseline_start_step": b0.step,
        "compute": {
            "meta": {"updates": meta_steps, "cpu_s": round(meta_cpu, 1), "wall_s": round(ledger["meta_wall"], 1),
                     "config": dataclasses.asdict(dataclasses.replace(meta_config.meta, steps=meta_steps))},
            "baseline_more": {"updates": ledger["base_steps"], "cpu_s": round(ledger["base_cpu"], 1),
                              "wall_s": round(ledger["base_wall"], 1)},
        },
        "rates": rates, "val_sweep": sweeps, "val_query_mel_l1_at_k": val_at_k,
        "query_mel_l1_at_k": at_k,
        "paired_meta_minus_baseline": paired,
        "meta_better_than_equal_compute_baseline": at_k["meta"] < at_k["baseline_more"],
        "curves": curves,
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"meta-vs-baseline-{suite.name}{'-' + args.name if args.name else ''}-{report['date']}.json"
    path.write_text(json.dumps(report, indent=1))
    print(json.dumps({k2: report[k2] for k2 in ("compute", "rates", "query_mel_l1_at_k", "paired_meta_minus_baseline")},
                     indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
