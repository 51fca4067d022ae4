"""Outputs of ``metatts evaluate`` from its results dict: a Markdown table, curves (PNG) and TensorBoard summaries.

Everything here reads the dict ``run_evaluation`` writes to results.json, so a report can be redrawn from the JSON
alone (``write_markdown(json.load(...), path)``).
"""

from __future__ import annotations

from pathlib import Path

TABLES = (("similarity", "speaker similarity (cosine, higher is better)", "{:.3f}"),
          ("eer", "speaker-verification EER (lower is better)", "{:.3f}"),
          ("mcd", "MCD with DTW, dB (lower is better)", "{:.2f}"),
          ("f0_rmse", "log-F0 RMSE, cents (lower is better)", "{:.0f}"),
          ("mel_l1", "query mel L1, teacher-forced (lower is better)", "{:.4f}"))
COLOURS = {"meta": "tab:red", "baseline": "tab:blue", "full": "tab:green", "none": "tab:gray",
           "dvector": "tab:purple"}


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _compute_cell(record: dict) -> str:
    seconds = record.get("seconds")
    train = f"{record['updates']} upd / {seconds:.0f} s" if seconds is not None else f"{record['updates']} upd / ? s"
    adapt = record.get("adapt_seconds")
    adapt_text = f"{record.get('adapt_updates', 0)} steps / {adapt:.2f} s" if adapt is not None else "–"
    return f"{train}; adapt {adapt_text}"


def write_markdown(results: dict, path: str | Path) -> Path:
    """One table per metric: methods × step counts (mean over episodes, ± std where there is a spread), then
    the compute column (training updates / seconds; adaptation steps / seconds per episode)."""
    steps = [str(k) for k in results["steps"]]
    suite = results["suite"]
    lines = [f"# Few-shot adaptation: {suite.get('name', '')}", "",
             f"{len(results['episodes'])} episodes of {suite['shots']} support + {suite['queries']} query "
             f"utterances from {len(suite.get('speakers', []))} {suite['split']} speakers "
             f"(episodes digest {results['episodes_digest']}); vocoder {results['vocoder']['name']}. "
             f"Flat methods (no gradient step, evaluated once): {', '.join(results['flat_methods']) or 'none'}.", ""]
    for metric, title, pattern in TABLES:
        if metric not in results:
            continue
        lines += [f"## {title}", "", "| method | " + " | ".join(f"k={k}" for k in steps) + " | compute |",
                  "|---" * (len(steps) + 2) + "|"]
        for method in results["methods"]:
            means = results[metric].get(method, {})
            spread = results["spread"][metric].get(method, {})
            cells = []
            for k in steps:
                cell = _fmt(means.get(k), pattern)
                std = spread.get(k, {}).get("std")
                if std is not None and means.get(k) is not None and spread.get(k, {}).get("n", 0) > 1:
                    cell += " ± " + pattern.format(std)
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {_compute_cell(results['compute'][method])} |")
        lines.append("")
    lines += ["Compute: training updates and wall seconds behind each method's model (a meta checkpoint initialized "
              "from a `metatts train` one includes it when recorded); adaptation steps and seconds per episode.", ""]
    for method in results["methods"]:
        record = results["compute"][method]
        note = f" {record['note']}" if record.get("note") else ""
        lines.append(f"- {method}: {record['source']}.{note}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_curves(results: dict, metric: str, path: str | Path) -> Path:
    """``metric`` against the step count (symlog x axis, so 0 shows), one line per method, the spread shaded
    (± std over episodes for per-episode metrics, min–max over rounds for EER)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = results["steps"]
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for method in results["methods"]:
        means = [results[metric][method].get(str(k)) for k in steps]
        if all(m is None for m in means):
            continue
        ys = [float("nan") if m is None else m for m in means]
        colour = COLOURS.get(method)
        ax.plot(steps, ys, marker="o", markersize=3, label=method, color=colour,
                linestyle="--" if method in results.get("flat_methods", {}) else "-")
        spread = [results["spread"][metric][method].get(str(k), {}) for k in steps]
        if metric == "eer":
            lo = [s.get("min") for s in spread]
            hi = [s.get("max") for s in spread]
        else:
            lo = [None if s.get("std") is None or m is None else m - s["std"] for s, m in zip(spread, means)]
            hi = [None if s.get("std") is None or m is None else m + s["std"] for s, m in zip(spread, means)]
        if all(v is not None for v in lo + hi):
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(steps)
    ax.set_xticklabels([str(k) for k in steps])
    ax.set_xlabel("adaptation steps")
    label = {"similarity": "speaker similarity (cosine)", "eer": "verification EER"}.get(metric, metric)
    ax.set_ylabel(label)
    band = "min–max over rounds" if metric == "eer" else "± std over episodes"
    ax.set_title(f"{label} vs steps ({len(results['episodes'])} episodes; shaded: {band})", fontsize=9)
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
                    value = results[metric][method].get(str(k))
                    if value is not None:
                        writer.add_scalar(f"{metric}/{method}", value, k)
        for method, by_step in results.get("samples", {}).items():
            for k, paths in by_step.items():
                if paths:
                    wave, rate = sf.read(paths[0], dtype="float32")
                    writer.add_audio(f"samples/{method}", torch.from_numpy(wave)[None], int(k), sample_rate=rate)
    finally:
        writer.close()
    return log_dir
