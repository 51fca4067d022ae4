"""Outputs of ``metatts evaluate`` from its results dict: a Markdown report, curves (PNG) and TensorBoard summaries.

Everything here reads the dict ``run_evaluation`` writes to results.json, so a report can be redrawn from the JSON
alone (``write_markdown(json.load(...), path)``). Cells are means over episodes with their 95 % bootstrap interval
over speakers; the reference rows (the speaker's own recordings, a stranger's, the real recordings' CER/DNSMOS)
sit under each table so that a number is read against what real speech scores.
"""

from __future__ import annotations

import math
from pathlib import Path

from metatts.evaluation.results import intervals_from_json, mean_of

TABLES = (("gap_closed", "gap closed: 0 = as like the speaker as a stranger, 1 = as their own recordings", "{:.2f}"),
          ("similarity", "speaker similarity to the support clips (cosine, higher is better)", "{:.3f}"),
          ("eer", "speaker-verification EER (lower is better)", "{:.3f}"),
          ("cer", "character error rate, PocketSphinx (lower is better)", "{:.3f}"),
          ("wer", "word error rate, PocketSphinx (lower is better)", "{:.3f}"),
          ("dnsmos", "DNSMOS overall, 1-5 (higher is better)", "{:.2f}"),
          ("mcd", "MCD with DTW, dB (lower is better)", "{:.2f}"),
          ("f0_rmse", "log-F0 RMSE, cents (lower is better)", "{:.0f}"),
          ("mel_l1", "query mel L1, teacher-forced (lower is better)", "{:.4f}"))
COLOURS = {"meta": "tab:red", "baseline": "tab:blue", "full": "tab:green", "none": "tab:gray",
           "dvector": "tab:purple"}
REFERENCE_ROWS = {"similarity": (("same_speaker", "real: same speaker"), ("stranger", "real: a stranger")),
                  "eer": (("same_speaker", "real: same speaker"), ("stranger", "real: a stranger")),
                  "cer": (("real", "real recordings"),), "wer": (("real", "real recordings"),),
                  "dnsmos": (("real", "real recordings"),)}


def cell(value, pattern: str) -> str:
    """``mean [ci_low, ci_high]`` of an interval cell (a bare number or null also reads)."""
    if isinstance(value, dict):
        mean, low, high = (value.get(k) for k in ("mean", "ci_low", "ci_high"))
    else:
        mean, low, high = value, None, None
    if mean is None or not math.isfinite(mean):
        return "–"
    text = pattern.format(mean)
    if low is not None and high is not None:
        text += f" [{pattern.format(low)}, {pattern.format(high)}]"
    return text


def _compute_cell(record: dict) -> str:
    seconds = record.get("seconds")
    train = f"{record['updates']} upd / {seconds:.0f} s" if seconds is not None else f"{record['updates']} upd / ? s"
    adapt = record.get("adapt_seconds")
    adapt_text = f"{record.get('adapt_updates', 0)} steps / {adapt:.2f} s" if adapt is not None else "–"
    return f"{train}; adapt {adapt_text}"


def _setting(method: str, results: dict) -> str:
    tuned = (results.get("baselines_tuned") or {}).get(method)
    if not tuned:
        return ""
    chosen = ", ".join(f"{k} {v}" for k, v in tuned["chosen"].items())
    return f" ({chosen})"


def metric_table(results: dict, metric: str, pattern: str, compute: bool = True) -> list[str]:
    """Markdown lines of one metric: a row per method (its tuned setting in brackets) with ``mean [interval]``
    per step, then the reference rows of that metric (the speaker's own recordings, a stranger's, real speech)."""
    steps = [str(k) for k in results["steps"]]
    references = results.get("references") or {}
    extra = " compute |" if compute else ""
    lines = ["| method | " + " | ".join(f"k={k}" for k in steps) + f" |{extra}",
             "|---" * (len(steps) + 1 + bool(compute)) + "|"]
    for method in results["methods"]:
        row = results[metric].get(method, {})
        cells = [cell(row.get(k), pattern) for k in steps]
        end = f" {_compute_cell(results['compute'][method])} |" if compute else ""
        lines.append(f"| {method}{_setting(method, results)} | " + " | ".join(cells) + f" |{end}")
    for level, label in REFERENCE_ROWS.get(metric, ()):
        value = (references.get(level) or {}).get(metric)
        if value is not None:
            lines.append(f"| *{label}* | {cell(value, pattern)} |" + " |" * (len(steps) - 1 + bool(compute)))
    return lines


def write_markdown(results: dict, path: str | Path) -> Path:
    """One table per metric: methods × step counts (mean [95 % interval]), the reference rows, the compute column,
    then the tuned settings and the paired meta − baseline differences."""
    steps = [str(k) for k in results["steps"]]
    suite = results["suite"]
    lines = [f"# Few-shot adaptation: {suite.get('name', '')}", "",
             f"{len(results['episodes'])} episodes of {suite['shots']} support + {suite['queries']} query "
             f"utterances from {len(suite.get('speakers', []))} {suite['split']} speakers "
             f"(episodes digest {results['episodes_digest']}); vocoder {results['vocoder']['name']}; "
             f"{results['seconds']:.0f} s. Cells: mean over episodes [95 % bootstrap interval over speakers]. "
             f"Flat methods (no gradient step, evaluated once): {', '.join(results['flat_methods']) or 'none'}.", ""]
    for metric, why in (results.get("scorers_skipped") or {}).items():
        lines += [f"- {metric}: {why}"]
    for metric, title, pattern in TABLES:
        if metric in results:
            lines += [f"## {title}", "", *metric_table(results, metric, pattern), ""]
    paired = results.get("paired") or {}
    for metric in ("gap_closed", "cer"):
        for pair, row in (paired.get(metric) or {}).items():
            lines += [f"Paired difference {pair} in {metric} (same episodes, bootstrap over speakers): "
                      + ", ".join(f"k={k}: {cell(row.get(k), '{:+.3f}')}" for k in steps), ""]
    for method, tuned in (results.get("baselines_tuned") or {}).items():
        tried = ", ".join(f"{s} → {'–' if v is None else format(v, '.4f')}"
                          for s, v in zip(tuned["grid"], tuned["scores"]))
        lines += [f"- {method}: chose {tuned['chosen']} by {tuned['metric']} on "
                  f"{len(tuned.get('episodes') or [])} episodes of speakers {', '.join(tuned.get('speakers') or [])}"
                  f" ({tried})"]
    lines += ["", "Compute: training updates and wall seconds behind each method's model (a meta checkpoint "
              "initialized from a `metatts train` one includes it when recorded); adaptation steps and seconds per "
              "episode.", ""]
    for method in results["methods"]:
        record = results["compute"][method]
        note = f" {record['note']}" if record.get("note") else ""
        lines.append(f"- {method}: {record['source']}.{note}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_curves(results: dict, metric: str, path: str | Path) -> Path:
    """``metric`` against the step count (symlog x axis, so 0 shows), one line per method with its 95 % interval
    shaded, and the reference levels as horizontal lines (same speaker, stranger; 0 and 1 for gap closed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = results["steps"]
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    table = intervals_from_json(results, metric)
    for method in results["methods"]:
        # Only the step counts this method was measured at (results merged from several runs may differ).
        points = [(k, table[method][k]) for k in steps if math.isfinite(table.get(method, {}).get(k, (math.nan,))[0])]
        if not points:
            continue
        at, rows = [k for k, _ in points], [r for _, r in points]
        colour = COLOURS.get(method)
        line, = ax.plot(at, [r[0] for r in rows], marker="o", markersize=3, label=method, color=colour,
                        linestyle="--" if method in results.get("flat_methods", {}) else "-")
        if all(math.isfinite(r[1]) and math.isfinite(r[2]) for r in rows):
            ax.fill_between(at, [r[1] for r in rows], [r[2] for r in rows], color=line.get_color(), alpha=0.15,
                            linewidth=0)
    references = results.get("references") or {}
    levels = {"gap_closed": (("same speaker", 1.0), ("stranger", 0.0))}.get(metric) or tuple(
        (label.split(": ")[-1], mean_of((references.get(level) or {}).get(metric)))
        for level, label in REFERENCE_ROWS.get(metric, ()))
    for (label, value), style in zip(levels, (":", "-.")):
        if math.isfinite(value):
            ax.axhline(value, color="black", linestyle=style, linewidth=1, label=f"real: {label}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(steps)
    ax.set_xticklabels([str(k) for k in steps])
    ax.set_xlabel("adaptation steps")
    label = {"similarity": "speaker similarity (cosine)", "eer": "verification EER",
             "gap_closed": "gap closed (0 stranger, 1 same speaker)"}.get(metric, metric)
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs steps\n({len(results['episodes'])} episodes; shaded: 95 % interval over speakers)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_tensorboard(results: dict, log_dir: str | Path, out_dir: str | Path) -> Path:
    """Scalars ``<metric>/<method>`` at global step = adaptation steps, a custom layout putting the methods of a
    metric on one chart, and the first audio sample of each method and step."""
    import soundfile as sf
    import torch
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    writer = SummaryWriter(str(log_dir))
    try:
        writer.add_custom_scalars({"adaptation": {
            metric: ["Multiline", [f"{metric}/{m}" for m in results["methods"]]] for metric, _, _ in TABLES}})
        for metric, _, _ in TABLES:
            for method in results["methods"]:
                for k in results["steps"]:
                    value = mean_of((results.get(metric) or {}).get(method, {}).get(str(k)))
                    if math.isfinite(value):
                        writer.add_scalar(f"{metric}/{method}", value, k)
        for method, by_step in results.get("samples", {}).items():
            for k, paths in by_step.items():
                if paths:
                    wave, rate = sf.read(paths[0], dtype="float32")
                    writer.add_audio(f"samples/{method}", torch.from_numpy(wave)[None], int(k), sample_rate=rate)
    finally:
        writer.close()
    return log_dir
