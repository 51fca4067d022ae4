"""Compute behind each evaluated method: the training its checkpoint records (its initialization's included) and
the adaptation cost per episode. A checkpoint saved before compute was recorded falls back to the span of its
run's TensorBoard events."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from metatts.evaluation.stats import nanmean, spread
from metatts.runtime.checkpoint import read_meta


def _tensorboard_seconds(run: Path) -> float | None:
    """Sum over the run's event files of (last − first event wall time): each file is one process of the run."""
    files = sorted(glob.glob(str(run / "tb" / "events.out.tfevents.*")))
    if not files:
        return None
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total = 0.0
    for path in files:
        times = [event.wall_time for event in EventFileLoader(path).Load()]
        if times:
            total += max(times) - min(times)
    return total


def training_compute(checkpoint: str | Path) -> dict:
    """Updates and wall seconds of the training behind a checkpoint, its initialization's included."""
    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    record = meta.extra.get("compute")
    if record is not None:
        out = {"updates": int(record["updates"]), "seconds": float(record["seconds"]), "kind": meta.kind,
               "source": "checkpoint metadata", "own": {"updates": int(record["updates"]),
                                                        "seconds": float(record["seconds"])}}
        if record.get("seconds_before_resume_unknown"):
            out["note"] = "a resumed part of the run predates compute metadata: seconds are a lower bound"
        source = record.get("init_from")
        if source is not None:
            out["init_from"] = {k: source[k] for k in ("checkpoint", "kind", "step")}
            inner = source.get("compute")
            if inner is not None:
                out["updates"] += int(inner["updates"])
                out["seconds"] += float(inner["seconds"])
                out["init_from"]["compute"] = {"updates": int(inner["updates"]), "seconds": float(inner["seconds"])}
            else:
                out["note"] = (f"initialized from {source['checkpoint']}, whose compute is not recorded: its "
                               f"training is not included")
        return out
    seconds = _tensorboard_seconds(checkpoint.parent)
    return {"updates": int(meta.step), "seconds": seconds, "kind": meta.kind,
            "source": ("span of the run's TensorBoard event wall times (the checkpoint predates compute metadata)"
                       if seconds is not None else "not recorded (no compute metadata, no TensorBoard events)"),
            "note": "whether this run was initialized from another checkpoint is not recorded"}


def adapt_compute(updates: int, what: str, seconds: Sequence[float]) -> dict:
    """Adaptation cost per episode: ``updates`` (to the largest step count) and their mean wall seconds."""
    return {"adapt_updates": updates, "adapt_seconds": nanmean(seconds) if seconds else None,
            "adapt_seconds_spread": spread(list(seconds)), "adapt_measures": what}
