"""Training step time (tiny and paper configs) and synthesis real-time factor (acoustic model + vocoder).

    python benchmarks/synthesis.py --checkpoint runs/demo/train/checkpoint [--threads 2]

RTF = wall seconds to synthesize ÷ seconds of audio produced, over a fixed set of sentences, for the tiny
checkpoint with Griffin-Lim (32 iterations) and with the universal HiFi-GAN V1. A trained checkpoint is needed so
the duration predictor produces speech-length output. Training steps use batch 16 of synthetic utterances of
about 100 phonemes / 400 frames (the shape of a LibriTTS sentence), median of a few steps after warm-up.
Writes benchmarks/results/synthesis-<date>.json. Targets (issue 3): RTF ≤ 0.1 tiny + Griffin-Lim, ≤ 0.5 with HiFi-GAN.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from metatts.api import TTS, load
from metatts.checkpoints import build_model
from metatts.config import config_from_dict
from metatts.model.batch import Batch
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.env import machine_info

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
]


def synthetic_batch(batch: int, phonemes: int, frames: int, n_symbols: int, n_speakers: int) -> Batch:
    generator = torch.Generator().manual_seed(0)
    return Batch(
        phonemes=torch.randint(1, n_symbols, (batch, phonemes), generator=generator),
        phoneme_lengths=torch.full((batch,), phonemes), mels=torch.randn(batch, 80, frames, generator=generator),
        mel_lengths=torch.full((batch,), frames), pitch=torch.randn(batch, frames, generator=generator),
        energy=torch.randn(batch, frames, generator=generator),
        speakers=torch.randint(0, n_speakers, (batch,), generator=generator))


def train_step_ms(preset: str, steps: int, batch_size: int) -> float:
    config = config_from_dict({"model": {"preset": preset}})
    model = build_model(config, n_symbols=120, n_speakers=100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = FastSpeech2Loss()
    batch = synthetic_batch(batch_size, 100, 400, 120, 100)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        terms = loss_fn(model(batch), batch)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])  # the first step pays one-time allocation costs


def rtf(tts, vocoder_name: str, repeats: int) -> dict:
    # A TTS of the same model with its own vocoder (the vocoder is chosen at construction).
    tts = TTS(tts.model, tts.meta, tts.device, vocoder_name, checkpoint=tts.checkpoint, digest=tts.weights_digest)
    tts.synthesize(SENTENCES[0], None)  # load the vocoder and warm up kernels
    wall = audio = 0.0
    for _ in range(repeats):
        for sentence in SENTENCES:
            start = time.perf_counter()
            speech = tts.synthesize(sentence, None)
            wall += time.perf_counter() - start
            audio += speech.seconds
    return {"rtf": wall / audio, "audio_seconds": audio, "wall_seconds": wall, "vocoder": tts.vocoder.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a trained tiny checkpoint folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paper-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tts = load(args.checkpoint, device="cpu")
    griffin = rtf(tts, "griffinlim", 2)
    hifigan = rtf(tts, "hifigan", 1)
    result = {
        "date": datetime.date.today().isoformat(),
        "checkpoint": str(args.checkpoint),
        "threads": args.threads,
        "rtf_griffinlim_tiny": griffin["rtf"],
        "rtf_hifigan_v1_tiny": hifigan["rtf"],
        "synthesis": {"griffinlim": griffin, "hifigan_v1": hifigan},
        "train_step_ms_tiny": train_step_ms("tiny", 5, 16),
        "train_step_ms_paper": train_step_ms("paper", args.paper_steps, 16),
        "train_step_shape": "batch 16 x 100 phonemes x 400 frames, forward + backward + Adam, median after warm-up",
        "targets": {"rtf_griffinlim_tiny": 0.1, "rtf_hifigan_v1_tiny": 0.5},
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"synthesis-{result['date']}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("rtf", "train_step_ms"))}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
