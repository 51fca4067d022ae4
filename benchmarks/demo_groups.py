"""`metatts demo` with each adapted-group choice, side by side: which one the demo's 20-minute budget can carry.

    python benchmarks/demo_groups.py [--out runs/demo-groups] [--only decoder]

Runs the demo from nothing (default budget, configs/demo.yaml) once per choice in ``CHOICES``, one after another in
this process, each into OUT/<choice>. A choice whose run already finished there is reused, not re-run (the demo's
own stage reuse): its numbers are the ones its state file recorded when it ran. Writes
benchmarks/results/demo-groups-<date>.json: per choice, the wall time of every stage and in all, the load average
at each stage's start and end, the meta-validation query mel L1 after the inner steps (how the choice is made:
never the test speakers), the held-out speakers' query mel L1 per step (meta and baseline), voice-pack bytes and the
10-step adaptation time. Issue 14 asks the demo to run the best configuration that fits its budget.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> overrides of configs/demo.yaml. "decoder" is the config as shipped (the trade-off table's best row);
# "embedding+norms" is the demo before issue 14 (6 KB voices): these overrides give that demo's exact settings.
CHOICES: dict[str, list[str]] = {
    "decoder": [],
    "embedding+norms": ["model.speaker_groups=[speaker_embedding,speaker_norms]", "meta.inner_lr_by_group={}",
                        "meta.inner_lr_per_step=false", "meta.multi_step_loss_steps=0", "meta.first_order_steps=0",
                        "meta.amortized_start=false", "meta.start_loss_weight=0"],
}


def summarize(out: Path, overrides: list[str]) -> dict:
    """The numbers of one finished demo run, from its state file."""
    state = json.loads((out / "demo-state.json").read_text())
    stages = state["stages"]
    meta_val = stages["meta-train"]["meta_val"]
    adapt = stages["adapt"]["speakers"]
    packs = {m: [row[m]["pack_bytes"] for row in adapt.values()] for m in ("meta", "baseline")}
    adapt_seconds = {m: [row[m]["adapt_seconds"] for row in adapt.values()] for m in ("meta", "baseline")}
    return {
        "overrides": overrides,
        "started": state["runs"][0]["started"],  # the first invocation: the run from nothing
        "seconds_total": sum(s["seconds"] for s in stages.values()),
        "stage_seconds": {name: s["seconds"] for name, s in stages.items()},
        "stage_load_average": {name: s["load_average"] for name, s in stages.items()},
        "train_val_mel": stages["train"]["val_mel"],
        "meta_val_first": meta_val[0],
        "meta_val_last": meta_val[-1],
        "eval_steps": stages["evaluate"]["steps"],
        "eval_episodes": stages["evaluate"]["episodes"],
        "eval_query_mel_l1": stages["evaluate"]["mel_l1"],
        "pack_bytes": packs,
        "adapt_seconds_10_steps": adapt_seconds,
        "summary": {name: s.get("summary", "") for name, s in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/demo-groups", help="one demo run folder per choice")
    parser.add_argument("--only", nargs="+", choices=list(CHOICES), default=list(CHOICES))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()

    from metatts.demo import run_demo
    from metatts.runtime.env import machine_info

    runs = {}
    for name in args.only:
        folder = args.out / name.replace("+", "-")
        print(f"== {name}: metatts demo --out {folder} " + " ".join(f"--set '{o}'" for o in CHOICES[name]),
              file=sys.stderr)
        run_demo(folder, overrides=CHOICES[name], progress=False)
        runs[name] = summarize(folder, CHOICES[name])
    result = {"date": datetime.date.today().isoformat(), "budget_seconds": 1200, "config": "configs/demo.yaml",
              "runs": runs, "machine": machine_info(),
              # A reused run's times and loads are those its state file recorded when it ran, not this process's.
              "timings": "stage_seconds and stage_load_average come from each run's demo-state.json, as it ran"}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"demo-groups-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    for name, run in runs.items():
        print(f"{name}: {run['seconds_total']:.0f} s; meta-val mel after {run['meta_val_last']['steps'][-1]} steps "
              f"{run['meta_val_first']['mel'][-1]:.3f} -> {run['meta_val_last']['mel'][-1]:.3f}; packs "
              f"{run['pack_bytes']['meta'][0]} B")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
