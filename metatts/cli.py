"""`metatts <subcommand>`: thin commands over the library. Errors a user can fix print one clear line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from metatts.config import load_config


class UserError(Exception):
    """An error the user can fix (bad path, bad value): printed without a traceback."""


RUN_FILES = ("checkpoint", "config.yaml", "log.jsonl", "tb")  # what train / meta-train write into a run folder


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file the user named, or a UserError saying why it cannot be read."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _claim_run(args: argparse.Namespace, run: Path, kind: str, checkpoint_kind: str) -> None:
    """The run folder policy of train and meta-train: a new or empty folder, or a run of the same command; one
    holding a checkpoint continues only with --resume and starts again only with --overwrite."""
    from metatts.runtime.checkpoint import CheckpointError, read_meta
    from metatts.runtime.outputs import claim_folder, remove_outputs

    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 owns the folder

    def older_run(path: Path) -> bool:  # a run from before output markers: its checkpoint says which command
        try:
            return read_meta(path / "checkpoint").kind == checkpoint_kind
        except CheckpointError:
            return False

    claim_folder(run, kind, adopt=older_run, write_marker=False)  # checks only: a refusal below changes nothing
    if not args.resume and (run / "checkpoint").exists() and not args.overwrite:
        raise UserError(f"--out {run} holds a {kind} with a checkpoint: --resume continues it, --overwrite starts it "
                        f"again (replacing its checkpoint and logs), or choose another --out")
    folder = claim_folder(run, kind, adopt=older_run)
    if not args.resume:  # the training code reads (and checks) the checkpoint it resumes
        remove_outputs(folder, RUN_FILES)  # a fresh start: nothing of an earlier (or killed) run is mixed in


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
    _claim_run(args, run, "train run", "train")
    result = train(config, run, resume=args.resume, init_from=args.init_from, progress=not args.quiet,
                   vocoder=_vocoder_or_none(args.vocoder, config))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports
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

    from metatts.runtime.outputs import atomic_path, check_new_files

    if (args.text is None) == (args.text_file is None):
        raise UserError("give exactly one of --text or --text-file")
    if args.text is not None and not args.text.strip():
        raise UserError("--text is empty: give the text to speak")
    if args.text_file:
        path = Path(args.text_file)
        lines = [line.strip() for line in _read_text(path, "text file").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"text file {path} has no text")
    else:
        lines = [args.text]
    if args.alpha != 1.0 and not args.voice:
        raise UserError("--alpha blends a voice pack with its initialization: give --voice too")
    # Every output name is checked before any work: the user's files in --out are never replaced unasked.
    targets = check_new_files(args.out, [f"{index:04d}.wav" for index in range(1, len(lines) + 1)],
                              overwrite=args.overwrite)
    tts = load(args.checkpoint, device=args.device, vocoder=args.vocoder)
    params = tts.voice_params(args.voice, args.alpha) if args.voice else None
    written = []
    for line, target in zip(lines, targets):
        try:
            speech = tts.synthesize(line, args.speaker, duration_scale=args.pace, params=params)
        except SynthesisError as error:
            if len(lines) == 1:
                raise UserError(str(error)) from error
            print(f"line {target.stem.lstrip('0')}: skipped: {error}", file=sys.stderr)
            continue
        with atomic_path(target) as tmp:
            speech.save(tmp)
        written.append(target)
        print(f"{target}  {speech.seconds:.2f} s  {line[:60]}")
    if not written:
        raise UserError("no line of the text file could be synthesized")


def cmd_adapt(args: argparse.Namespace) -> None:
    import time

    import torch

    from metatts.api import load

    from metatts.adapt.voicepack import adaptable_groups, is_voice_pack
    from metatts.runtime.outputs import check_new_file

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = check_new_file(args.out, overwrite=args.overwrite, replaceable=is_voice_pack, what="voice pack")
    tts = load(args.checkpoint, device=args.device)
    groups = [g.strip() for item in args.groups or [] for g in item.split(",") if g.strip()] or None
    allowed = adaptable_groups(dataclasses.asdict(tts.config.model))
    if groups and any(g not in allowed for g in groups):
        bad = next(g for g in groups if g not in allowed)
        raise UserError(f"--groups {bad}: a voice pack holds only speaker groups of this checkpoint "
                        f"({', '.join(allowed)})")
    voice = tts.adapt(args.clips, transcripts=args.transcripts, steps=args.steps, lr=args.lr, groups=groups,
                      optimizer=args.optimizer, l2_anchor=args.l2, seed=args.seed, unknown=args.unknown)
    for line in voice.clips.report():
        print(line)
    info = voice.info
    print(f"adapted {', '.join(info['groups'])} with {args.steps} {args.optimizer} steps (lr: {info['lr']}"
          f"{f', L2 to init {args.l2:g}' if args.l2 else ''})")
    print("support loss per step: " + "  ".join(f"{k}:{v:.4f}" for k, v in enumerate(voice.losses)))
    if voice.diverged:
        print(f"metatts adapt: warning: the adaptation diverged ({info['warning']})", file=sys.stderr)
        if not args.force:
            raise UserError(f"no voice pack written to {out}: the adaptation diverged; lower --lr or --steps "
                            f"(or keep it anyway with --force)")
    path = voice.save(out, force=args.force)
    print(f"time: features {info['feature_seconds']:.2f} s, adaptation {info['adapt_seconds']:.2f} s (aligner + "
          f"{args.steps} steps, {torch.get_num_threads()} threads), whole command "
          f"{time.perf_counter() - started:.1f} s")
    print(f"voice pack {path}: {path.stat().st_size} bytes ({voice.bytes} bytes of tensors in {len(voice.params)} "
          f"tensors); use it with `metatts synthesize --checkpoint {args.checkpoint} --voice {path} ...`")


def cmd_meta_train(args: argparse.Namespace) -> None:
    from metatts.meta.outer_loop import MetaTrainingError, meta_train

    extra = [f"data.features={args.features}"] if args.features else []
    config = _config(args, extra)
    if args.resume and args.init_from:
        raise UserError("--resume continues this run; --init-from starts a new one from other weights: pick one")
    run = Path(args.out) if args.out else _default_run(args, "meta")
    _claim_run(args, run, "meta-train run", "meta")
    try:
        result = meta_train(config, run, resume=args.resume, init_from=args.init_from, progress=not args.quiet)
    except MetaTrainingError as error:
        raise UserError(str(error)) from error
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports
    curve = ""
    if result.val:
        first, last = result.val[0], result.val[-1]
        curve = (f"; meta-val query mel L1 after {first['steps'][-1]} inner steps {first['mel'][-1]:.3f} (step "
                 f"{first['step']}) -> {last['mel'][-1]:.3f} (step {last['step']})")
    print(f"meta-trained to step {result.step} in {result.seconds:.0f} s ({result.skipped_steps} skipped){curve}; "
          f"checkpoint {run / 'checkpoint'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from metatts.demo import run_demo

    result = run_demo(args.out, budget=args.budget, config=args.config, overrides=args.set or [], vocoder=args.vocoder,
                      threads=args.threads, harness=args.harness, progress=not args.quiet)
    reused = [n for n, s in result.stages.items() if s["reused"]]
    print(f"demo finished in {result.seconds:.0f} s ({len(result.ran)} stages ran, {len(reused)} reused); "
          f"report {result.report}")


def cmd_tasks(args: argparse.Namespace) -> None:
    import json

    from metatts.corpus.splits import SpeakerSplits
    from metatts.episodes.tasks import episodes_digest, frozen_episodes, load_task_suite
    from metatts.features.store import FeatureStore

    if args.json:  # checked before the work, written after it
        from metatts.runtime.outputs import check_new_file

        json_path = check_new_file(args.json, overwrite=args.overwrite, flag="--json")
    suite = load_task_suite(args.suite, features=args.features)
    store = FeatureStore(suite.features)
    splits = SpeakerSplits.load(Path(suite.features) / "splits.json")
    episodes = frozen_episodes(suite, store, splits, log=lambda m: print(m, file=sys.stderr))
    grid = [int(s) for s in args.steps.split(",")] if args.steps else suite.step_grid
    print(f"suite {suite.name}: {len(episodes)} episodes from {len({e.speaker for e in episodes})} {suite.split} "
          f"speakers ({suite.shots} shots, {suite.queries} queries), digest {episodes_digest(episodes)}")
    if args.list:
        for e in episodes:
            print(f"{e.speaker}\tsupport {' '.join(e.support)}\tquery {' '.join(e.query)}")
    if not args.checkpoint:
        return
    from metatts.evaluation.curves import checkpoint_curve

    report = {"suite": suite.name, "features": suite.features, "digest": episodes_digest(episodes), "steps": grid,
              "inner_lr": args.inner_lr, "checkpoints": {}}
    print("query mel L1 after k inner steps (mean over episodes)")
    print("checkpoint".ljust(40) + "".join(f"{f'k={k}':>9}" for k in grid))
    for checkpoint in args.checkpoint:
        curve = checkpoint_curve(checkpoint, episodes, store, grid, inner_lr=args.inner_lr, device=args.device)
        report["checkpoints"][checkpoint] = curve.to_dict()
        print(str(checkpoint)[-40:].ljust(40) + "".join(f"{v:9.4f}" for v in curve.mean("mel")))
    if args.json:
        from metatts.runtime.outputs import atomic_path

        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


def _is_older_evaluation(path: Path) -> bool:
    """An evaluation folder from before output markers: its results.json is an evaluation's."""
    import json

    try:
        results = json.loads((path / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and {"methods", "steps", "similarity"} <= set(results)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from metatts.evaluation.harness import DEFAULT_GRID, METHODS, adhoc_suite, run_evaluation
    from metatts.evaluation.listening import write_listening_page
    from metatts.runtime.outputs import claim_folder

    methods = [m.strip() for item in args.methods or METHODS for m in item.split(",") if m.strip()]
    steps = [int(s) for item in args.steps for s in str(item).split(",") if s.strip()] if args.steps else None
    if args.task:
        suite = args.task
    elif args.features:
        suite = adhoc_suite(args.features, split=args.split, shots=args.shots, queries=args.queries,
                            tasks_per_speaker=args.tasks_per_speaker or 2, seed=args.seed,
                            steps=steps or DEFAULT_GRID)
    else:
        raise UserError("evaluate needs --task tasks/X.yaml, or --features STORE to build the suite from its "
                        "held-out speakers")
    out = Path(args.out) if args.out else Path("runs") / "evaluate" / (Path(args.task).stem if args.task
                                                                       else suite.name)
    claim_folder(out, "evaluation", adopt=lambda path: _is_older_evaluation(path))
    results = run_evaluation(args.checkpoint, args.baseline, suite, out, methods=methods,
                             steps=steps, vocoder=args.vocoder, device=args.device,
                             samples=args.samples, progress=not args.quiet,
                             features=args.features if args.task else None,
                             baseline_lr=args.baseline_lr, full_lr=args.full_lr, threads=args.threads,
                             speakers=args.speakers or args.max_speakers, groups=args.groups,
                             listener_steps=[int(k) for k in args.listener_steps] if args.listener_steps else None,
                             tasks_per_speaker=args.tasks_per_speaker if args.task else None)
    same = results.references["same_speaker"]["similarity"].mean
    stranger = results.references["stranger"]["similarity"].mean
    print(f"gap closed (mean over episodes; 0 = a stranger's real voice, similarity {stranger:.3f}; 1 = the "
          f"speaker's own recordings, {same:.3f})")
    print("method".ljust(10) + "".join(f"{f'k={k}':>8}" for k in results.steps))
    for method in results.methods:
        values = results.mean("gap_closed", method)
        print(method.ljust(10) + "".join(f"{values[k]:8.3f}" if math.isfinite(values[k]) else f"{'-':>8}"
                                         for k in results.steps))
    write_listening_page(out)
    print(f"wrote {out / 'results.json'}, results.md, gap_closed.png, similarity.png, eer.png, samples/, tb/, "
          f"index.html (listening page) ({results.seconds:.0f} s)")


def cmd_bench(args: argparse.Namespace) -> None:
    from metatts.bench import run_bench

    record, path = run_bench(args.evaluation, args.checkpoint, clips=args.clips, out=args.out, threads=args.threads,
                             runs=args.runs, overwrite=args.overwrite)
    ratio = record["steps_ratio_vs_baseline"]
    timing = record["adapt_seconds_5clips_10steps"]
    print(f"steps ratio vs baseline: {ratio['value'] if ratio['value'] is not None else 'n/a (' + ratio['reason'] + ')'}")
    print(f"adapt 5 clips x 10 steps: {timing['wall_median']:.2f} s wall, {timing['cpu_median']:.2f} s CPU "
          f"({timing['threads']} threads); voice pack {record['voice_pack_bytes']['file']} bytes")
    print(f"wrote {path}")


def cmd_align(args: argparse.Namespace) -> None:
    import torch

    from metatts.align.aligner import plot_alignment
    from metatts.api import load
    from metatts.episodes.collate import Collator, Normalizer
    from metatts.features.store import FeatureStore

    from metatts.runtime.outputs import atomic_path, check_new_files, safe_name

    store = FeatureStore(args.features)
    ids = list(dict.fromkeys(args.utterance or [e.id for e in store.entries[:args.first]]))
    unknown = [i for i in ids if i not in store.by_id]
    if unknown:
        raise UserError(f"not in {args.features}: {', '.join(unknown[:5])} (ids are in its manifest.jsonl)")
    # Ids are data from a manifest, never paths: safe_name keeps every PNG inside --out.
    targets = check_new_files(args.out, [f"{safe_name(i)}.png" for i in ids], overwrite=args.overwrite)
    tts = load(args.checkpoint, device="cpu")
    rows = {s: i for i, s in enumerate(tts.speakers)}
    collator = Collator(store, tts.symbols, rows, Normalizer.from_dict(tts.meta.stats))
    for utt_id, target in zip(ids, targets):
        batch = collator([utt_id])
        with torch.no_grad():
            alignment = tts.model.alignment(batch)
        frames, phonemes = int(batch.mel_lengths[0]), int(batch.phoneme_lengths[0])
        with atomic_path(target) as tmp:
            plot_alignment(alignment.soft[0, :frames, :phonemes], tmp, durations=alignment.durations[0, :phonemes],
                           title=utt_id, phonemes=store.by_id[utt_id].phonemes)
        print(target)


def cmd_serve(args: argparse.Namespace) -> None:
    from metatts.serve import Limits, run_server

    if not args.checkpoint and not args.evaluation:
        raise UserError("give --checkpoint (the voice page) and/or --evaluation E/ (the listening page of an "
                        "evaluation)")
    limits = Limits(max_clips=args.max_clips, max_clip_seconds=args.max_clip_seconds, max_upload_mb=args.max_upload_mb,
                    max_text_chars=args.max_text_chars, max_steps=args.max_steps, max_jobs=args.max_jobs)
    limits.check()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        run_server(args.checkpoint, host=args.host, port=args.port, voices=args.voices, evaluation=args.evaluation,
                   limits=limits, device=args.device, vocoder=args.vocoder)
    except (ImportError, OSError) as error:
        raise UserError(str(error)) from error


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
    p.add_argument("--overwrite", action="store_true",
                   help="start the run in --out again, replacing its checkpoint and logs (default: refuse)")
    p.add_argument("--vocoder", default="griffinlim",
                   help="vocoder for TensorBoard audio: griffinlim (default), hifigan, a path, or none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("align", help="plot the built-in aligner's alignment of prepared utterances (PNG)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--features", required=True, help="feature store holding the utterances")
    p.add_argument("--utterance", action="append", help="utterance id (repeatable); default: the first --first")
    p.add_argument("--first", type=int, default=3, help="how many utterances when none is named (default 3)")
    p.add_argument("--out", required=True, help="folder for <utterance id>.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PNGs that already exist in --out (default: refuse)")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("synthesize", help="text to speech with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (e.g. runs/demo/train/checkpoint)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--speaker", help="a training speaker id (default: the new-speaker voice)")
    who.add_argument("--voice", help="a voice pack made by `metatts adapt`")
    p.add_argument("--text", help="text to speak; long text is split at sentence ends (and overlong sentences at "
                                  "clauses or words)")
    p.add_argument("--text-file", help="UTF-8 file: one wav per non-empty line")
    p.add_argument("--out", required=True, help="output folder for the wavs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace wavs that already exist in --out (default: refuse)")
    p.add_argument("--vocoder", default=None, help="hifigan (default; Griffin-Lim if absent), griffinlim, or a path")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="with --voice: (1-alpha)*initial + alpha*adapted speaker tensors (default 1)")
    p.add_argument("--pace", type=float, default=1.0, help="duration scale: >1 slower, <1 faster")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("adapt", help="adapt a new voice from a few clips into a voice pack (a few KB)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (meta-train or train)")
    p.add_argument("--clips", required=True, nargs="+", metavar="DIR|FILE",
                   help="audio files and/or folders of wav/flac/ogg files")
    p.add_argument("--transcripts", metavar="F",
                   help="TSV file of clip_name<TAB>text lines, or a folder of <stem>.txt files (default: a <clip>.txt, "
                        "or LibriTTS's <clip>.normalized.txt, beside each clip)")
    p.add_argument("--steps", type=int, default=10, help="adaptation steps (default 10)")
    p.add_argument("--lr", type=float, help="learning rate (default: the checkpoint's learned inner rates, else its "
                                            "meta.inner_lr; for adam 1e-2)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: the meta-learned inner loop "
                                                                               "(default); adam: for many steps")
    p.add_argument("--l2", type=float, default=0.0, metavar="LAMBDA",
                   help="pull toward the initialization, LAMBDA * |phi - phi0|^2 (default 0)")
    p.add_argument("--groups", nargs="+", metavar="GROUP",
                   help="parameter groups or name patterns to adapt (default: the config's model.speaker_groups)")
    p.add_argument("--unknown", choices=("skip", "unk"), default="skip",
                   help="clips with phonemes unknown to the checkpoint: skip them (default) or read them as <unk>")
    p.add_argument("--seed", type=int, default=0, help="seed (adaptation runs without dropout, so rarely matters)")
    p.add_argument("--out", required=True, help="voice pack file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing voice pack at --out (other files are never replaced)")
    p.add_argument("--force", action="store_true",
                   help="write the pack even when the adaptation diverged (its support loss grew 5x or more)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.set_defaults(func=cmd_adapt)
    p = with_config(sub.add_parser("meta-train", help="MAML meta-training of the speaker group (also under torchrun)"))
    p.add_argument("--features", help="feature store (overrides data.features)")
    p.add_argument("--out", help="run folder (default runs/<config name>/meta)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start from a checkpoint's weights (e.g. metatts train)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run in --out again, replacing its checkpoint and logs (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_meta_train)

    p = with_config(sub.add_parser("demo", help="the whole pipeline on the offline demo corpus, from nothing to a "
                                                "report (resumable: a re-run reuses finished stages)"))
    p.set_defaults(config=None)
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--budget", choices=("default", "smoke"), default="default",
                   help="default: the config's training budget (about 15 minutes on 2 cores); smoke: seconds")
    p.add_argument("--vocoder", default=None, help="hifigan (default; Griffin-Lim if absent), griffinlim, or a path")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the config's train.threads)")
    p.add_argument("--harness", action="store_true",
                   help="stage 7 also runs `metatts evaluate` (speaker similarity, EER) on the adapted speakers: "
                        "minutes more per step count")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tasks", help="a few-shot task suite: its frozen episodes, and adaptation curves of checkpoints")
    p.add_argument("suite", help="task suite YAML (tasks/*.yaml)")
    p.add_argument("--features", help="feature store (overrides the suite's features)")
    p.add_argument("--list", action="store_true", help="print every episode's support and query ids")
    p.add_argument("--checkpoint", action="append", metavar="CHECKPOINT",
                   help="adapt this checkpoint on every episode and report the query loss per step (repeatable)")
    p.add_argument("--steps", help="comma-separated inner-step counts (default: the suite's step_grid)")
    p.add_argument("--inner-lr", type=float, help="SGD inner rate for all checkpoints (default: each one's own)")
    p.add_argument("--json", help="write the curves (per episode) to this JSON file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --json file (default: refuse)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("evaluate", help="meta vs tuned baselines against real references: gap closed, similarity, "
                                        "EER, CER/WER, DNSMOS, MCD, F0, mel L1 per step, with intervals")
    p.add_argument("--checkpoint", help="the meta-trained checkpoint (needed by the meta method)")
    p.add_argument("--baseline", help="the multi-speaker `metatts train` checkpoint (baseline, full, none, dvector)")
    p.add_argument("--task", help="task suite YAML (tasks/*.yaml); without it the suite is built from --features "
                                  "with --split/--shots/--queries/--tasks-per-speaker/--seed")
    p.add_argument("--features", help="feature store (overrides the suite's features)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="held-out speakers of an on-the-fly "
                                                                            "suite (default test)")
    p.add_argument("--shots", type=int, default=5, help="support clips per episode of an on-the-fly suite (5)")
    p.add_argument("--queries", type=int, default=5, help="query sentences per episode of an on-the-fly suite (5)")
    p.add_argument("--seed", type=int, default=0, help="episode seed of an on-the-fly suite (0)")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="meta baseline full none dvector (default: all)")
    p.add_argument("--groups", nargs="+", metavar="GROUP", help="speaker groups the baseline adapts (default: the "
                                                                "meta checkpoint's)")
    p.add_argument("--steps", nargs="+", metavar="K", help="step counts (default: the suite's step_grid; "
                                                           "0 1 2 5 10 20 50 100 on the fly)")
    p.add_argument("--listener-steps", nargs="+", metavar="K", help="step counts at which CER, WER and DNSMOS are "
                   "scored (default: every step; they cost seconds per sentence on a CPU)")
    p.add_argument("--out", help="output folder (default runs/evaluate/<suite name>)")
    p.add_argument("--vocoder", default="hifigan",
                   help="hifigan (default: what `metatts synthesize` plays), griffinlim, or a path")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--baseline-lr", type=float, help="fix the baseline's SGD rate (default: tuned on meta-val "
                                                     "speakers)")
    p.add_argument("--full-lr", type=float, help="fix full fine-tuning to Adam at this rate (default: optimizer and "
                                                 "rate tuned on meta-val speakers)")
    p.add_argument("--samples", type=int, default=1, help="audio samples per speaker and step (default 1)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--max-speakers", type=int, help="evaluate only the first N speakers of the suite")
    who.add_argument("--speakers", nargs="+", metavar="ID", help="evaluate only these speakers of the suite (e.g. "
                     "half of them in each of two processes sharing --out: the score cache joins them)")
    p.add_argument("--tasks-per-speaker", type=int, help="override the suite's tasks_per_speaker (on the fly: 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="adaptation benchmark: steps ratio, adapt time, pack size, RTF -> dated JSON")
    p.add_argument("--evaluation", required=True, help="results.json written by `metatts evaluate`")
    p.add_argument("--checkpoint", required=True, help="the meta-trained checkpoint")
    p.add_argument("--clips", help="folder of clips with <clip>.txt transcripts (default: 5 utterances of the "
                                   "evaluation's first held-out speaker)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace today's result file if it exists (default: refuse)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for the timings (default 2)")
    p.add_argument("--runs", type=int, default=3, help="timed adaptation runs after a warm-up (default 3)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="a local web page and JSON API: clone a voice from a few clips and hear it; "
                                     "the listening page of an evaluation")
    p.add_argument("--checkpoint", help="checkpoint folder (e.g. runs/demo/meta/checkpoint)")
    p.add_argument("--evaluation", metavar="E", help="also serve the listening page of this `metatts evaluate` folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--voices", default="voices", help="folder of saved voice packs (default ./voices)")
    p.add_argument("--vocoder", default=None, help="hifigan (default; Griffin-Lim if absent), griffinlim, or a path")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-clips", type=int, default=20, help="clips per adaptation (default 20)")
    p.add_argument("--max-clip-seconds", type=float, default=30.0, help="seconds per clip (default 30)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="megabytes per request (default 50)")
    p.add_argument("--max-text-chars", type=int, default=1000, help="characters per synthesis (default 1000)")
    p.add_argument("--max-steps", type=int, default=200, help="adaptation steps per request (default 200)")
    p.add_argument("--max-jobs", type=int, default=2,
                   help="adaptations and syntheses at once, running or waiting; more are refused (default 2)")
    p.set_defaults(func=cmd_serve)
    return parser


def _one_line(error: BaseException) -> str:
    """The error as one line: multi-line library messages (a list of skip reasons) are joined with '; '."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}" + (f" -> {error.filename2}" if error.filename2 else "")
    text = str(error).strip() or type(error).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors about the user's input or machine, reported as one line. Every project error class subclasses
    ValueError (bad input) or is listed here (run-time failures); OSError covers paths that cannot be read or
    written. Anything else is a bug and keeps its traceback."""
    from metatts.meta.outer_loop import MetaTrainingError
    from metatts.train.supervised import TrainingError
    from metatts.vocoder.base import VocoderError

    expected: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, VocoderError, TrainingError,
                                                 MetaTrainingError)
    try:
        import soundfile

        expected += (soundfile.SoundFileError,)  # a wav that cannot be written (a full disk, a read-only mount)
    except (ImportError, AttributeError):
        pass
    return expected


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"metatts {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted below: expected errors are one line, bugs keep a traceback
        if os.environ.get("METATTS_DEBUG") or not isinstance(error, _expected_errors()):
            raise
        print(f"metatts {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, (UserError, ValueError, OSError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
