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
