"""Does the multi-speaker base model speak? CER/WER (PocketSphinx) and DNSMOS of held-out sentences of its
training speakers, synthesized free-running through HiFi-GAN, against the real recordings of the same sentences.

    python benchmarks/base_intelligibility.py --features runs/speechocean762/features \\
        --checkpoint scratch=runs/speechocean762/scratch/checkpoint \\
        --checkpoint pretrained=runs/speechocean762/train/checkpoint [--utterances 24] [--threads 1]

The sentences are the validation utterances of the store's meta-train speakers (``data.val_utterances`` per
speaker, held out of training), the first ``--utterances`` of them by speaker; every model reads the same ones in
its own voice for that speaker. The recognizer is weak (real recordings of speechocean762's Mandarin-L1 speakers
read at CER ~0.43), so the ratio synthesized / real is the number that matters: issue 14's target is <= 1.5.
Each model's training compute (updates, seconds, what it was initialized from) is copied from its checkpoint.
Writes benchmarks/results/base-intelligibility-<corpus>-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import numpy as np
import torch

from metatts.api import load
from metatts.evaluation.intelligibility import Recognizer, corpus_error_rates
from metatts.evaluation.naturalness import Dnsmos
from metatts.features.audio import load_audio
from metatts.runtime.checkpoint import read_meta
from metatts.runtime.env import machine_info
from metatts.train.common import RunData

ROOT = Path(__file__).resolve().parents[1]


def _scores(waves: list[np.ndarray], rate: int, texts: list[str], recognizer: Recognizer, dnsmos: Dnsmos) -> dict:
    rates = corpus_error_rates(recognizer.score(waves, rate, texts))
    mos = [dnsmos.score(w, rate) for w in waves]
    return {"cer": rates.cer, "wer": rates.wer,
            "dnsmos": {k: float(np.mean([getattr(m, k) for m in mos])) for k in ("sig", "bak", "ovrl", "p808")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="feature store the checkpoints were trained on")
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--utterances", type=int, default=24)
    parser.add_argument("--vocoder", default="hifigan")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    named = dict(item.split("=", 1) for item in args.checkpoint)

    first = load(next(iter(named.values())), device="cpu", vocoder=args.vocoder)
    config = dataclasses.replace(first.config, data=dataclasses.replace(first.config.data, features=args.features))
    held = sorted(RunData.load(config).val, key=lambda e: (e.speaker, e.id))[:args.utterances]
    texts = [e.text for e in held]
    recognizer, dnsmos = Recognizer(), Dnsmos(threads=args.threads)
    rate = first.sample_rate
    real = _scores([load_audio(e.audio_path, rate) for e in held], rate, texts, recognizer, dnsmos)

    models = {}
    for name, path in named.items():
        tts = load(path, device="cpu", vocoder=args.vocoder)
        started = time.perf_counter()
        waves = [tts.synthesize(e.text, speaker=e.speaker).wave for e in held]
        scores = _scores(waves, tts.sample_rate, texts, recognizer, dnsmos)
        meta = read_meta(path)
        models[name] = {"checkpoint": str(path), "step": meta.step, "compute": meta.extra.get("compute"),
                        **scores, "cer_vs_real": scores["cer"] / real["cer"],
                        "dnsmos_ovrl_below_real": real["dnsmos"]["ovrl"] - scores["dnsmos"]["ovrl"],
                        "seconds": time.perf_counter() - started}
        print(f"{name}: CER {scores['cer']:.3f} ({scores['cer'] / real['cer']:.2f}x real), WER {scores['wer']:.3f}, "
              f"DNSMOS ovrl {scores['dnsmos']['ovrl']:.2f}", flush=True)
    print(f"real: CER {real['cer']:.3f}, WER {real['wer']:.3f}, DNSMOS ovrl {real['dnsmos']['ovrl']:.2f}")

    corpus = Path(config.data.corpus).name or "corpus"
    today = datetime.date.today().isoformat()
    default = ROOT / "benchmarks" / "results" / f"base-intelligibility-{corpus}-{today}.json"
    out = Path(args.out) if args.out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": today, "command": "python benchmarks/base_intelligibility.py " + " ".join(
                  f"--checkpoint {n}={p}" for n, p in named.items()) + f" --features {args.features}",
              "corpus": corpus, "vocoder": args.vocoder, "utterances": [e.id for e in held], "real": real,
              "models": models, "machine": machine_info()}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
