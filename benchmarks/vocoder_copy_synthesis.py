"""Copy synthesis: real speech → log-mel → vocoder → wave, for the universal HiFi-GAN V1 and Griffin-Lim.

Measures, per clip and on average:
  - speaker similarity (Resemblyzer cosine) between the original and the copy: does the vocoder keep the voice?
    For scale, the same between different speakers' originals is reported too;
  - mel L1 (mean |log-mel of the copy − input log-mel|, nats): how faithfully the copy re-analyses;
  - real-time factor (synthesis seconds / audio seconds) on --threads threads, after a warm-up, on the longest
    clip: the fastest of --repeats runs (other processes on a shared machine only ever slow a run down, so the
    minimum is the best estimate of the vocoder's own cost) and the median; the load average is recorded beside it.

    python benchmarks/vocoder_copy_synthesis.py [--threads 2] [--per-speaker 3] [--speechocean 6] [--repeats 5]

Prints a table and writes benchmarks/results/vocoder-<YYYY-MM-DD>.json with machine info.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from metatts.config.schema import AudioConfig
from metatts.features.audio import load_audio
from metatts.features.mel import MelSpectrogram
from metatts.runtime.env import machine_info
from metatts.vocoder import GriffinLim, MelConvention, load_hifigan

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("METATTS_SHARED_DATA", REPO.parent / "shared" / "data"))


def pick_clips(data: Path, per_speaker: int, speechocean: int) -> list[tuple[str, str, Path]]:
    """(corpus, speaker, path) for the first clips of every vctk-mini speaker and of speechocean762 speakers."""
    clips = []
    vctk = data / "vctk-mini" / "wav48"
    for speaker in sorted(p.name for p in vctk.iterdir()) if vctk.is_dir() else []:
        clips += [("vctk-mini", speaker, p) for p in sorted((vctk / speaker).glob("*.wav"))[:per_speaker]]
    so = data / "speechocean762-adults"
    if (so / "data" / "wav.scp").is_file():
        by_speaker: dict[str, Path] = {}
        for line in (so / "data" / "wav.scp").read_text().splitlines():
            utt, rel = line.split()[:2]
            by_speaker.setdefault(utt[:4], so / rel)  # utterance ids start with the 4-digit speaker id
        for speaker, path in list(by_speaker.items())[:speechocean]:
            clips.append(("speechocean762", speaker, path))
    return clips


def real_time_factor(vocoder, mel: torch.Tensor, seconds: float, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vocoder(mel)
        times.append(time.perf_counter() - start)
    return {"rtf_min": round(min(times) / seconds, 4), "rtf_median": round(float(np.median(times)) / seconds, 4),
            "audio_seconds": round(seconds, 3), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding vctk-mini and speechocean762-adults")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-speaker", type=int, default=3, help="vctk-mini clips per speaker")
    parser.add_argument("--speechocean", type=int, default=6, help="speechocean762 speakers (one clip each)")
    parser.add_argument("--gl-iters", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per vocoder for the real-time factor")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from resemblyzer import VoiceEncoder, preprocess_wav  # optional dependency (the eval extra)

    audio = AudioConfig()
    mel_fn = MelSpectrogram.from_config(audio)
    hifigan = load_hifigan()  # the universal V1 checkpoint
    griffin_lim = GriffinLim(MelConvention.from_audio_config(audio), n_iter=args.gl_iters)
    encoder = VoiceEncoder("cpu", verbose=False)
    vocoders = {"hifigan_v1_universal": hifigan, f"griffinlim_{args.gl_iters}": griffin_lim}

    clips = pick_clips(args.data, args.per_speaker, args.speechocean)
    if not clips:
        raise SystemExit(f"no clips found under {args.data}")
    warm = torch.full((1, audio.n_mels, 40), -5.0)
    for vocoder in vocoders.values():
        vocoder(warm)  # first calls pay for allocation and kernel selection

    rows, originals, longest = [], [], None
    for corpus, speaker, path in clips:
        wave = load_audio(path, audio.sample_rate)
        wave = torch.from_numpy(wave[: len(wave) // audio.hop_length * audio.hop_length])
        mel = mel_fn(wave[None])
        seconds = wave.numel() / audio.sample_rate
        original = encoder.embed_utterance(preprocess_wav(wave.numpy(), audio.sample_rate))
        originals.append((speaker, original))
        row = {"corpus": corpus, "speaker": speaker, "clip": path.name, "seconds": round(seconds, 3)}
        for name, vocoder in vocoders.items():
            copy = vocoder(mel)
            embedding = encoder.embed_utterance(preprocess_wav(copy[0].numpy(), audio.sample_rate))
            row[name] = {
                "similarity": round(float(np.dot(original, embedding)), 4),
                "mel_l1": round(float((mel_fn(copy) - mel).abs().mean()), 4),
            }
        rows.append(row)
        if longest is None or seconds > longest[1]:
            longest = (mel, seconds)
        print(f"{corpus:15s} {speaker:6s} {path.name:20s} {seconds:5.2f}s  "
              + "  ".join(f"{n}: sim {r['similarity']:.3f} L1 {r['mel_l1']:.3f}"
                          for n, r in ((n, row[n]) for n in vocoders)))

    cross = [float(np.dot(a, b)) for i, (sa, a) in enumerate(originals) for sb, b in originals[i + 1:] if sa != sb]
    load_before = os.getloadavg()
    speed = {name: real_time_factor(vocoder, longest[0], longest[1], args.repeats)
             for name, vocoder in vocoders.items()}
    load_after = os.getloadavg()
    summary = {}
    for name in vocoders:
        sims = [r[name]["similarity"] for r in rows]
        summary[name] = {
            "similarity_mean": round(float(np.mean(sims)), 4),
            "similarity_min": round(float(np.min(sims)), 4),
            "mel_l1_mean": round(float(np.mean([r[name]["mel_l1"] for r in rows])), 4),
            **speed[name],
        }
    summary["different_speakers_similarity_mean"] = round(float(np.mean(cross)), 4) if cross else None

    print(f"\nsummary over {len(rows)} clips; real-time factor on {args.threads} threads, {longest[1]:.1f} s clip, "
          f"min/median of {args.repeats} (load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    for name in vocoders:
        s = summary[name]
        print(f"  {name:22s} similarity mean {s['similarity_mean']:.3f} (min {s['similarity_min']:.3f})  "
              f"mel L1 {s['mel_l1_mean']:.3f}  rtf {s['rtf_min']:.3f} / {s['rtf_median']:.3f}")
    print(f"  different speakers' originals: similarity mean {summary['different_speakers_similarity_mean']}")

    result = {
        "benchmark": "vocoder_copy_synthesis",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {**machine_info(), "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)]},
        "settings": {"threads": args.threads, "griffin_lim_iters": args.gl_iters, "per_speaker": args.per_speaker,
                     "speechocean_speakers": args.speechocean, "audio": dataclasses.asdict(audio)},
        "summary": summary,
        "clips": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"vocoder-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
