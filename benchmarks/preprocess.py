"""Preprocessing throughput: seconds of audio prepared per second per core, with the share of each stage.

    python benchmarks/preprocess.py [--corpus ../shared/data/speechocean762-adults] [--limit N]

Runs `prepare` in one process with one torch thread (so wall time is one core's time) into a fresh temporary
store, then once more with two workers for scaling. Writes benchmarks/results/preprocess-<date>.json.
Target (issue 2): at least 50x real time per core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from metatts.config import config_from_dict
from metatts.features.prepare import prepare
from metatts.runtime.env import machine_info

ROOT = Path(__file__).resolve().parents[1]


def run(corpus: Path, workers: int, store: Path) -> dict:
    config = config_from_dict({}, [f"data.corpus={corpus}", f"data.features={store}", f"data.workers={workers}",
                                   "data.val_speakers=0", "data.test_speakers=0"])
    start = time.perf_counter()
    report = prepare(config, progress=False, log=lambda *_: None)
    wall = time.perf_counter() - start
    return {"workers": workers, "utterances": report.usable, "audio_seconds": report.seconds_of_audio,
            "wall_seconds": wall, "x_realtime": report.seconds_of_audio / wall, "stages": report.stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/speechocean762-adults")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        sys.exit(f"{args.corpus} not found (the real speech sets live in ../shared/data)")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        one = run(args.corpus, 1, Path(tmp) / "one")
        two = run(args.corpus, 2, Path(tmp) / "two")
    # Worker stages (load, condition, mel, energy, pitch, hash, write) are summed over utterances; phonemes
    # run once in the main process. Their shares are of their sum.
    stages = one["stages"]
    total = sum(stages.values())
    result = {
        "date": datetime.date.today().isoformat(),
        "corpus": str(args.corpus.name),
        "x_realtime_per_core": one["x_realtime"],
        "x_realtime_2_workers": two["x_realtime"],
        "audio_seconds": one["audio_seconds"],
        "utterances": one["utterances"],
        "wall_seconds_1_core": one["wall_seconds"],
        "stages": stages,
        "stage_share": {k: v / total for k, v in stages.items()},
        "target_x_realtime_per_core": 50,
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"preprocess-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("x_realtime_per_core", "x_realtime_2_workers", "stage_share")},
                     indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
