"""The demo's report folder: README.md (numbers, commands, stage times), PNG plots, links to the wavs."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

from metatts.runtime.env import machine_info


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_adaptation(mel: dict[str, dict], path: Path, title: str, ylabel: str = "query mel L1", *,
                    shots: int) -> Path:
    """Mean metric after k inner steps, one line per method (x on a symlog axis: the grid starts at 0)."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    for method, row in mel.items():
        steps = sorted(int(k) for k in row)
        ax.plot(steps, [row[k] if k in row else row[str(k)] for k in steps], marker="o", label=method)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(f"adaptation steps ({shots} clips)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_training(train: dict, meta: dict, path: Path) -> Path:
    fig = _figure(10, 3.6)
    ax = fig.add_subplot(1, 2, 1)
    val = train.get("val_mel", [])
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], marker="o")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation mel L1")
    ax.set_title("3: multi-speaker baseline", fontsize=10)
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    for record in meta.get("meta_val", []):
        ax.plot(record["steps"], record["mel"], marker="o", label=f"meta-step {record['step']}")
    ax.set_xlabel("inner steps on the support")
    ax.set_ylabel("meta-val query mel L1")
    ax.set_title("4: meta-training (meta-val speakers)", fontsize=10)
    ax.grid(alpha=0.3)
    if meta.get("meta_val"):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_support(adapt: dict, path: Path) -> Path:
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"meta": "tab:blue", "baseline": "tab:orange"}
    for speaker, row in adapt["speakers"].items():
        for method in ("meta", "baseline"):
            losses = row[method]["support_loss"]
            ax.plot(range(len(losses)), losses, color=colors[method], alpha=0.7,
                    label=method if speaker == next(iter(adapt["speakers"])) else None)
    ax.set_xlabel("adaptation step")
    ax.set_ylabel("support loss (FastSpeech 2 total)")
    ax.set_title(f"5: `metatts adapt` on each held-out speaker's {_clip_count(adapt)} clips", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def _clip_count(adapt: dict) -> int | str:
    """Clips each held-out speaker was adapted from (the suite's shots), as the adapt stage recorded them."""
    counts = {len(row["clips"]) for row in adapt.get("speakers", {}).values()}
    return counts.pop() if len(counts) == 1 else "/".join(str(c) for c in sorted(counts)) or "?"


def _number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _commands(demo) -> list[str]:
    out, b, cfg = demo.out, demo.budget, demo.config_path
    sets = "".join(f" --set {shlex.quote(o)}" for o in demo.overrides)
    lines = [f"metatts make-demo-corpus {out}/demo-corpus --speakers {b.corpus_speakers} "
             f"--sentences {b.corpus_sentences}",
             f"metatts prepare --config {cfg} --corpus {out}/demo-corpus --out {out}/features{sets}",
             f"metatts train --config {cfg} --features {out}/features --out {out}/train{sets}",
             f"metatts meta-train --config {cfg} --features {out}/features --init-from {out}/train/checkpoint "
             f"--out {out}/meta{sets}"]
    adapt = demo.state.stage("adapt").get("speakers", {})
    if adapt:
        speaker, row = next(iter(adapt.items()))
        clips = " ".join(shlex.quote(c) for c in row["clips"])
        lines.append(f"metatts adapt --checkpoint {out}/meta/checkpoint --clips {clips} --transcripts "
                     f"{out}/voices/{speaker}.tsv --steps {b.adapt_steps} "
                     f"--out {out}/voices/meta/{speaker}.safetensors")
        lines.append(f"metatts synthesize --checkpoint {out}/meta/checkpoint --voice {out}/voices/meta/"
                     f"{speaker}.safetensors --text \"A new voice was learned from five short recordings.\" "
                     f"--out {out}/wavs")
    grid = ",".join(str(k) for k in b.eval_steps)
    lines.append(f"metatts tasks {demo.suite_path} --features {out}/features --checkpoint {out}/train/checkpoint "
                 f"--checkpoint {out}/meta/checkpoint --steps {grid}")
    return lines


def write_report(demo, folder: Path) -> Path:
    """Write ``folder``/README.md and its plots from the demo's recorded stage results; return the README path."""
    folder.mkdir(parents=True, exist_ok=True)
    stages = demo.state.data["stages"]
    corpus, prepare, train = stages["corpus"], stages["prepare"], stages["train"]
    meta, adapt, synth, evaluation = stages["meta-train"], stages["adapt"], stages["synthesize"], stages["evaluate"]
    grid = [int(k) for k in evaluation["steps"]]
    mel = {m: {int(k): v for k, v in row.items()} for m, row in evaluation["mel_l1"].items()}

    plots = {"adaptation": plot_adaptation(mel, folder / "adaptation.png",
                                           f"held-out speakers, {evaluation['shots']} clips each: query mel L1",
                                           shots=evaluation["shots"]),
             "training": plot_training(train, meta, folder / "training.png"),
             "support": plot_support(adapt, folder / "support.png")}
    harness = dict(evaluation.get("harness") or {})
    tables = harness.get("results") or {}
    if tables.get("gap_closed"):
        from metatts.evaluation.report import plot_curves

        plots["gap_closed"] = plot_curves({**tables, "episodes": [None] * harness["episodes"]}, "gap_closed",
                                          folder / "gap_closed.png")
    first = next(iter(synth["speakers"]))
    mel_files = [folder / "audio" / first / f"{m}-1.mel.pt" for m in ("meta", "baseline")]
    if all(p.is_file() for p in mel_files):
        import torch

        from metatts.evaluation.plots import plot_mels

        mels = [torch.load(p, weights_only=True) for p in mel_files]
        hop = demo.config.audio.hop_length / demo.config.audio.sample_rate
        plots["mels"] = plot_mels(mels, [f"meta, adapted to {first}", f"baseline, adapted to {first}"],
                                  folder / "mels.png", hop_seconds=hop, suptitle=synth["sentences"][0])

    runs = demo.state.data.get("runs", [])
    machine = machine_info()
    lines = ["# metatts demo report", "",
             f"Budget `{demo.budget.name}`, config `{demo.config_path}`"
             + (f" with {', '.join(f'`{o}`' for o in demo.user_overrides)}" if demo.user_overrides else "")
             + f"; written {runs[-1]['started'] if runs else ''} on {machine['cpu']} ({machine['cores']} cores, "
             f"torch {machine['torch']}, torch threads: {demo.config.train.threads or machine['torch_threads']}).", "",
             "Reproduce: `" + " ".join(["metatts demo", "--out", str(demo.out), "--budget", demo.budget.name,
                                         "--config", str(demo.config_path),
                                         *[f"--set {shlex.quote(o)}" for o in demo.user_overrides],
                                         *([f"--threads {demo.threads}"] if demo.threads else []),
                                         *(["--harness"] if demo.harness else [])]) + "`", ""]

    # --- the comparison
    lines += ["## Meta-learned vs multi-speaker baseline: adapting to new voices", "",
              f"Task suite `{evaluation['suite']}`: {evaluation.get('episodes', '?')} episodes from the held-out "
              f"(test split) speakers, each adapting from {evaluation['shots']} clips and scored on "
              f"{evaluation['queries']} other utterances of the speaker. Both models adapt the same per-speaker "
              f"tensors with plain SGD from their new-speaker slot: the meta model at its learned per-parameter rates, "
              f"the baseline at `meta.inner_lr` = {demo.config.meta.inner_lr:g}. Query mel L1 is teacher-forced with "
              f"the "
              f"aligner's durations (lower is better).", ""]
    rows = []
    for method in mel:
        rows.append([method] + [_number(mel[method].get(k)) for k in grid])
    if "meta" in mel and "baseline" in mel:
        rows.append(["meta / baseline"] + [_number(mel["meta"][k] / mel["baseline"][k], 3) for k in grid])
    lines += _table(["query mel L1 after k steps"] + [f"k={k}" for k in grid], rows) + [""]
    if "meta" in mel and "baseline" in mel and len(grid) > 1:
        drop = {m: mel[m][grid[0]] - mel[m][grid[-1]] for m in ("meta", "baseline")}
        needs = []
        for k in grid[1:]:  # the fewest baseline steps (on the grid) reaching the meta model's loss after k steps
            matched = [j for j in grid if mel["baseline"][j] <= mel["meta"][k]]
            needs.append(f"meta k={k} ({_number(mel['meta'][k], 3)}): baseline "
                         + (f"k={matched[0]}" if matched else f"not within k={grid[-1]}"))
        lines += [f"Drop from k={grid[0]} to k={grid[-1]}: meta {_number(drop['meta'])}, baseline "
                  f"{_number(drop['baseline'])}. Steps the baseline needs to match the meta model: "
                  + "; ".join(needs) + ".", ""]
    if tables.get("gap_closed"):
        from metatts.evaluation.report import TABLES, metric_table

        vocoder = (tables.get("vocoder") or {}).get("name", "?")
        lines += [f"How the adapted voices sound to a speaker encoder, a recognizer and a MOS predictor, from "
                  f"`metatts.evaluation.harness` on {harness['episodes']} episodes ({vocoder} audio; full results, "
                  f"listening page and intervals in `../eval/`). Cells: mean [95 % bootstrap interval over speakers]; "
                  f"the rows in italics are real recordings: the speaker's own and a stranger's against the same "
                  f"support clips, and the real query sentences read by the same recognizer. The baseline's rate was "
                  f"chosen on meta-validation speakers.", ""]
        for metric, title, pattern in TABLES:
            if metric in tables:
                lines += [f"**{title}**", "", *metric_table(tables, metric, pattern, compute=False), ""]
        lines += ["![gap closed](gap_closed.png)", ""]
    else:
        lines += ["(Speaker similarity and EER come from `metatts evaluate` (`metatts demo --harness` runs it "
                  "here): it vocodes and embeds every query sentence at every step count, which does not fit the "
                  "demo's 20-minute budget on 2 CPU cores. The comparison above is the query mel L1 of "
                  "`metatts tasks`.)", ""]
    lines += ["![adaptation](adaptation.png)", ""]

    # --- voices and audio
    lines += [f"## New voices from {_clip_count(adapt)} clips", "",
              f"`metatts adapt` on {len(adapt['speakers'])} held-out speakers ({_clip_count(adapt)} clips each, the "
              f"first episode's "
              f"support of the suite; {adapt['steps']} steps), with both models. Voice packs hold only the per-speaker "
              f"tensors:", ""]
    rows = []
    for speaker, row in adapt["speakers"].items():
        for method in ("meta", "baseline"):
            r = row[method]
            rows.append([speaker, method, f"{row['clip_seconds']:.1f} s", _number(r["support_loss"][0], 3) + " → "
                         + _number(r["support_loss"][-1], 3), f"{r['adapt_seconds']:.2f} s",
                         f"{r['pack_bytes']:,} B ({r['tensor_bytes']:,} B tensors)", f"`../{r['pack']}`"])
    lines += _table(["speaker", "model", "clips", "support loss", "adapt time", "voice pack", "file"], rows) + [""]
    lines += ["![support loss](support.png)", "",
              f"Synthesized with {synth['vocoder']} (real-time factor {synth['real_time_factor']:.2f} for acoustic "
              f"model + vocoder on this machine), sentences no corpus speaker said:", ""]
    rows = []
    for speaker, row in synth["speakers"].items():
        for i, item in enumerate(row["meta"]):
            base = row["baseline"][i]
            rows.append([speaker, item["text"], f"[meta]({item['wav']})", f"[baseline]({base['wav']})",
                         f"[recorded]({row['recorded']['wav']}) ({row['recorded']['text'][:40]}…)"])
    lines += _table(["speaker", "sentence", "meta", "baseline", "a real clip of the speaker"], rows) + [""]
    if "mels" in plots:
        lines += ["![mels](mels.png)", ""]

    # --- training
    skipped = f" ({meta['skipped_steps']} meta-steps skipped)" if meta.get("skipped_steps") else ""
    lines += ["## Training", "",
              f"Corpus: {corpus['summary']}. Features: {prepare['summary']}.", "",
              f"Baseline (`metatts train`): {train['summary']}. Meta-training (`metatts meta-train --init-from`): "
              f"{meta['summary']}{skipped}.", "",
              "![training](training.png)", ""]

    # --- time
    lines += ["## Wall time per stage", ""]
    rows = []
    total = 0.0
    for name in ("corpus", "prepare", "train", "meta-train", "adapt", "synthesize", "evaluate"):
        record = stages[name]
        total += record["seconds"]
        load = record.get("load_average") or [None, None]
        rows.append([name, f"{record['seconds']:.0f} s", record.get("finished", ""),
                     f"{load[0]} → {load[1]}", record.get("summary", "")])
    rows.append(["total (stages 1-7)", f"{total:.0f} s ({total / 60:.1f} min)", "", "", ""])
    lines += _table(["stage", "wall time", "finished (UTC)", "load average (1 min)", "result"], rows)
    lines += ["", "Other work on a shared machine slows every stage; the load average says how much. A re-run reuses "
              "every finished stage (see `../demo-state.json`).", ""]

    lines += ["## Commands", "", "What each stage ran, as commands:", "", "```bash", *_commands(demo), "```", ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    from metatts.demo import HARNESS_METRICS  # here: metatts.demo imports this module

    (folder / "numbers.json").write_text(json.dumps({
        "budget": demo.budget.name, "query_mel_l1": {m: {str(k): v for k, v in row.items()} for m, row in mel.items()},
        **{metric: tables.get(metric) for metric in HARNESS_METRICS},
        "references": tables.get("references"),
        "stage_seconds": {n: stages[n]["seconds"] for n in stages if "seconds" in stages[n]},
        "voice_pack_bytes": {s: {m: r[m]["pack_bytes"] for m in ("meta", "baseline")}
                             for s, r in adapt["speakers"].items()},
        "vocoder": synth["vocoder"]}, indent=1))
    eval_md = demo.out / "eval" / "results.md"
    if eval_md.is_file():
        shutil.copyfile(eval_md, folder / "evaluation.md")
    return path
