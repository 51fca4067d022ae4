"""`metatts <subcommand>`: thin commands over the library. Errors a user can fix print one clear line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from metatts.config import ConfigError, load_config


class UserError(Exception):
    """An error the user can fix (bad path, bad value): printed without a traceback."""


def _config(args: argparse.Namespace, extra: list[str] | None = None):
    overrides = list(args.set or []) + list(extra or [])
    return load_config(args.config, overrides)


def cmd_make_demo_corpus(args: argparse.Namespace) -> None:
    from metatts.corpus.demo import make_demo_corpus

    from tqdm import tqdm

    with tqdm(total=args.speakers * args.sentences, desc="synthesize", unit="utt") as bar:
        info = make_demo_corpus(args.out, speakers=args.speakers, sentences_per_speaker=args.sentences,
                                seed=args.seed, progress=lambda *_: bar.update())
    print(f"demo corpus: {len(info.speakers)} speakers, {info.utterances} utterances, {info.seconds / 60:.1f} min of "
          f"audio at {info.sample_rate} Hz in {info.root} (LibriTTS layout; fingerprint {info.fingerprint[:12]})")


def cmd_prepare(args: argparse.Namespace) -> None:
    from metatts.features.prepare import prepare

    extra = []
    if args.corpus:
        extra.append(f"data.corpus={args.corpus}")
    if args.out:
        extra.append(f"data.features={args.out}")
    if args.workers:
        extra.append(f"data.workers={args.workers}")
    config = _config(args, extra)
    if not config.data.corpus:
        raise UserError("no corpus given: pass --corpus PATH or set data.corpus in the config")
    prepare(config, progress=not args.quiet)


def _default_run(args: argparse.Namespace, kind: str) -> Path:
    stem = Path(args.config).stem if args.config else "default"
    return Path("runs") / stem / kind


def cmd_train(args: argparse.Namespace) -> None:
    from metatts.train.supervised import train

    extra = [f"data.features={args.features}"] if args.features else []
    config = _config(args, extra)
    if args.resume and args.init_from:
        raise UserError("--resume continues this run; --init-from starts a new one from other weights: pick one")
    run = Path(args.out) if args.out else _default_run(args, "train")
    result = train(config, run, resume=args.resume, init_from=args.init_from, progress=not args.quiet,
                   vocoder=_vocoder_or_none(args.vocoder, config))
    last_val = result.val_losses[-1]["mel"] if result.val_losses else float("nan")
    first_val = result.val_losses[0]["mel"] if result.val_losses else float("nan")
    print(f"trained {result.step} steps in {result.seconds:.0f} s; validation mel L1 {first_val:.3f} -> "
          f"{last_val:.3f}; checkpoint {run / 'checkpoint'}")


def _vocoder_or_none(name: str | None, config):
    if name == "none":
        return None
    from metatts.vocoder import load_vocoder

    return load_vocoder(name, config.audio)


def cmd_synthesize(args: argparse.Namespace) -> None:
    from metatts.api import SynthesisError, load

    if bool(args.text) == bool(args.text_file):
        raise UserError("give exactly one of --text or --text-file")
    if args.text_file:
        path = Path(args.text_file)
        if not path.is_file():
            raise UserError(f"text file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"text file {path} has no text")
    else:
        lines = [args.text]
    tts = load(args.checkpoint, device=args.device, vocoder=args.vocoder)
    params = None
    if args.voice:
        from metatts.adapt.voicepack import load_voice_pack

        params = load_voice_pack(args.voice, args.checkpoint, tts.model).params
    out = Path(args.out)
    written = []
    for index, line in enumerate(lines, start=1):
        try:
            speech = tts.synthesize(line, args.speaker, duration_scale=args.pace, params=params)
        except SynthesisError as error:
            if len(lines) == 1:
                raise UserError(str(error)) from error
            print(f"line {index}: skipped: {error}", file=sys.stderr)
            continue
        written.append(speech.save(out / f"{index:04d}.wav"))
        print(f"{written[-1]}  {speech.seconds:.2f} s  {line[:60]}")
    if not written:
        raise UserError("no line of the text file could be synthesized")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metatts", description=__doc__.split(":")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="YAML recipe (configs/*.yaml); defaults apply when omitted")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one config value, e.g. --set train.lr=3e-4 (repeatable)")
        return p

    p = sub.add_parser("make-demo-corpus", help="synthesize the offline multi-speaker demo corpus with espeak-ng")
    p.add_argument("out", type=Path, help="output folder (LibriTTS layout)")
    p.add_argument("--speakers", type=int, default=40, help="distinct espeak-ng voice variants (default 40)")
    p.add_argument("--sentences", type=int, default=25, help="sentences per speaker (default 25)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same corpus")
    p.set_defaults(func=cmd_make_demo_corpus)

    p = with_config(sub.add_parser("prepare", help="extract features (mel, pitch, energy, phonemes) into a store"))
    p.add_argument("--corpus", help="corpus folder (overrides data.corpus)")
    p.add_argument("--out", help="feature store folder (overrides data.features)")
    p.add_argument("--workers", type=int, help="processes (overrides data.workers)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = with_config(sub.add_parser("train", help="multi-speaker training of the acoustic model (the baseline)"))
    p.add_argument("--features", help="feature store (overrides data.features)")
    p.add_argument("--out", help="run folder (default runs/<config name>/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start from another checkpoint's weights only")
    p.add_argument("--vocoder", default="griffinlim",
                   help="vocoder for TensorBoard audio: griffinlim (default), hifigan, a path, or none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("synthesize", help="text to speech with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (e.g. runs/demo/train/checkpoint)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--speaker", help="a training speaker id (default: the new-speaker voice)")
    who.add_argument("--voice", help="a voice pack made by `metatts adapt`")
    p.add_argument("--text", help="text to speak; long text is split at sentence ends")
    p.add_argument("--text-file", help="UTF-8 file: one wav per non-empty line")
    p.add_argument("--out", required=True, help="output folder for the wavs")
    p.add_argument("--vocoder", default=None, help="hifigan (default; Griffin-Lim if absent), griffinlim, or a path")
    p.add_argument("--pace", type=float, default=1.0, help="duration scale: >1 slower, <1 faster")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_synthesize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, ConfigError) as error:
        print(f"metatts {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:
        # Library errors about user input (missing corpus, no known layout, bad audio everywhere) subclass these.
        if os.environ.get("METATTS_DEBUG"):
            raise
        print(f"metatts {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metatts {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
