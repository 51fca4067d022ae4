"""What meta-training runs learned, side by side: meta-validation curves and the learned inner rates per group.

    python benchmarks/meta_runs.py runs/speechocean762/meta-decoder-rate01 runs/speechocean762/meta-r01 \
        --name speechocean762-decoder-rates

For each `metatts meta-train` run folder: the settings that differ between the runs (from each run's config.yaml),
the meta-validation query mel L1 after 0..K inner steps at every validation (how meta-training settings are chosen:
the meta-val speakers, never the test ones), the meta-steps done and their wall time (from log.jsonl), and the
learned inner rates of the last checkpoint summarized per group and inner step (min / median / max over the group's
elements). Writes benchmarks/results/meta-runs-<name>-<date>.json. A run stopped early is summarized up to its last
checkpoint and log line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metatts.checkpoints import load_inner_lr  # noqa: E402
from metatts.config import load_config  # noqa: E402
from metatts.config.load import config_to_dict  # noqa: E402
from metatts.model.acoustic import group_of  # noqa: E402
from metatts.runtime.env import machine_info  # noqa: E402


def _flat(section: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def rates_summary(checkpoint: Path) -> list[dict] | None:
    rates = load_inner_lr(checkpoint)
    if isinstance(rates, float):
        return None
    per_step = rates if isinstance(rates, list) else [rates]
    summary = []
    for step in per_step:
        by_group: dict[str, list[torch.Tensor]] = {}
        for name, alpha in step.items():
            by_group.setdefault(group_of(name) or name, []).append(alpha.detach().flatten().float())
        joined = {g: torch.cat(v) for g, v in sorted(by_group.items())}
        summary.append({g: {"min": float(v.min()), "median": float(v.median()), "max": float(v.max()),
                            "elements": v.numel()} for g, v in joined.items()})
    return summary


def summarize(run: Path) -> dict:
    config = load_config(run / "config.yaml")
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    meta = [r for r in lines if r.get("kind") == "meta"]
    val = [{"step": r["step"], "inner_steps": r["steps"], "mel": r["mel"]} for r in lines if r.get("kind") == "meta_val"]
    checkpoint = run / "checkpoint"
    saved = json.loads((checkpoint / "meta.json").read_text()) if (checkpoint / "meta.json").is_file() else None
    compute = (saved or {}).get("extra", {}).get("compute", {})
    return {
        "run": str(run),
        "settings": {k: v for k, v in _flat(config_to_dict(config)).items()
                     if k.startswith(("model.", "meta.")) or k == "train.threads"},
        "meta_steps_logged": meta[-1]["step"] if meta else 0,
        "checkpoint_step": saved["step"] if saved else None,
        "checkpoint_seconds": compute.get("seconds"),  # meta-training wall time up to that checkpoint
        "meta_val": val,
        "rates_last_checkpoint": rates_summary(checkpoint) if saved is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="metatts meta-train run folders")
    parser.add_argument("--name", required=True, help="a name for the comparison (in the file name)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks/results")
    args = parser.parse_args()
    runs = [summarize(run) for run in args.runs]
    # The settings that differ between the runs: what the comparison is about.
    keys = set().union(*(r["settings"] for r in runs))
    differ = sorted(k for k in keys if len({json.dumps(r["settings"].get(k)) for r in runs}) > 1)
    result = {"date": datetime.date.today().isoformat(), "differing_settings": differ, "runs": runs,
              "machine": machine_info()}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"meta-runs-{args.name}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    for run in runs:
        curve = " ".join(f"{v['step']}:{v['mel'][-1]:.3f}" for v in run["meta_val"])
        print(f"{run['run']}: {run['meta_steps_logged']} meta-steps, checkpoint at {run['checkpoint_step']} after "
              f"{run['checkpoint_seconds'] or float('nan'):.0f} s; meta-val mel after "
              f"{run['meta_val'][0]['inner_steps'][-1]} inner steps by meta-step {curve}")
    print(f"differing settings: {', '.join(differ)}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
