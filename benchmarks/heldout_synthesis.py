"""Held-out sentences of training speakers: synthesized mel next to the recording's, plus a loss summary.

    python benchmarks/heldout_synthesis.py --checkpoint runs/demo/train/checkpoint --features runs/demo/features

Takes the validation utterances the training run held out (sentences the model never trained on, spoken by
speakers it knows), synthesizes each from its text alone (predicted durations, pitch and energy), and writes
benchmarks/results/heldout-<corpus>-<date>.png (recording above, synthesis below, for a few utterances) and a
JSON with the teacher-forced validation mel L1 and the length ratio of synthesized to recorded speech.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from metatts.api import load
from metatts.config import config_from_dict
from metatts.evaluation.plots import plot_mels
from metatts.runtime.env import machine_info
from metatts.train.common import RunData
from metatts.train.supervised import validate

ROOT = Path(__file__).resolve().parents[1]


def validation_curve(run: Path) -> list[dict]:
    """The run's validation mel L1 per logged step, from log.jsonl (or TensorBoard when the log has none)."""
    log = run / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    curve = [{"step": r["step"], "mel": r["mel"]} for r in records if r.get("kind") == "val"]
    if not curve and (run / "tb").is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tb"))
        events.Reload()
        if "val/mel" in events.Tags().get("scalars", []):
            curve = [{"step": e.step, "mel": e.value} for e in events.Scalars("val/mel")]
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--features", required=True, help="the feature store the checkpoint was trained on")
    parser.add_argument("--count", type=int, default=3, help="utterances in the figure")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tts = load(args.checkpoint, device="cpu", vocoder="griffinlim")
    config = config_from_dict(tts.meta.config, [f"data.features={args.features}"])
    data = RunData.load(config)
    val = validate(tts.model, data, torch.device("cpu"), 16)
    mels, titles, ratios = [], [], []
    for entry in data.val:
        target = data.store.load(entry.id).mel
        _, pieces = tts.mels(entry.text, entry.speaker)  # one mel per sentence of the transcript
        synthesized = torch.cat(pieces, dim=-1)
        ratios.append(synthesized.shape[-1] / target.shape[-1])
        if len(mels) < 2 * args.count:
            mels += [target, synthesized]
            titles += [f"{entry.speaker} recorded: {entry.text[:70]}", f"{entry.speaker} synthesized from text"]
    corpus = Path(data.store.entries[0].corpus).name
    date = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    figure = plot_mels(mels, titles, args.out / f"heldout-{corpus}-{date}.png",
                       hop_seconds=tts.config.audio.hop_length / tts.sample_rate,
                       suptitle=f"held-out sentences of training speakers, step {tts.meta.step}")
    result = {"date": date, "corpus": corpus, "checkpoint": str(args.checkpoint), "step": tts.meta.step,
              "heldout_utterances": len(data.val), "val_teacher_forced": val,
              "validation_curve": validation_curve(Path(args.checkpoint).parent),
              "length_ratio_mean": sum(ratios) / len(ratios), "figure": figure.name, "machine": machine_info()}
    path = args.out / f"heldout-{corpus}-{date}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("val_teacher_forced", "length_ratio_mean")}, indent=1))
    print(f"wrote {figure} and {path}")


if __name__ == "__main__":
    main()
