"""The trade-off table of issue 14 from committed results: per method of one or more `metatts evaluate` runs, the
bytes a voice costs, gap closed at each step count, EER, CER relative to the real recordings, DNSMOS against the
real recordings, and the training compute behind the model; and the plot of gap closed against steps, one line per
row. Reads only results.json files (and, for pack bytes and adaptation time of the meta method, the `metatts bench`
adaptation JSON of each evaluation), so the README's table is re-derived, never typed in.

    python benchmarks/tradeoff_table.py A.json B.json --bench A-bench.json --bench B-bench.json \
        --label "embedding + norms + adapters r4" --label "embedding + norms + decoder" --plot tradeoff.png

Evaluations may use different step grids: the columns are their union, and a step an evaluation did not measure
reads "·". Prints Markdown. Cells are means [95 % bootstrap interval over speakers]; CER and DNSMOS are given
relative to the real recordings of the same sentences (CER ×real, DNSMOS −real) at each listener step k, the form
the issue's targets take.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metatts.evaluation.report import cell, plot_curves  # noqa: E402
from metatts.evaluation.results import mean_of  # noqa: E402

FLOAT_BYTES = 4


def _fmt(value: float, pattern: str) -> str:
    return "–" if value is None or not math.isfinite(value) else pattern.format(value)


def group_bytes(results: dict, method: str, bench: dict | None) -> str:
    """Bytes a voice of this method costs: the pack file from `metatts bench` for the meta method; for full
    fine-tuning every parameter (float32) when the evaluation recorded the count."""
    if method == "meta" and bench:
        pack = bench.get("voice_pack_bytes") or {}
        return f"{pack.get('file', '?')} B file ({pack.get('tensors', '?')} B tensors)"
    if method == "baseline" and bench:
        pack = bench.get("voice_pack_bytes") or {}
        return f"same groups: {pack.get('tensors', '?')} B tensors"
    if method == "full":
        return "every parameter"
    return ""


def rows(results: dict, label: str, bench: dict | None, steps: list[str]) -> list[str]:
    real = (results.get("references") or {}).get("real") or {}
    real_cer, real_dnsmos = mean_of(real.get("cer")), mean_of(real.get("dnsmos"))
    listen = [str(k) for k in results.get("settings", {}).get("listener_steps", results["steps"])]
    out = []
    for method in results["methods"]:
        measured = results["gap_closed"][method]
        gap = [cell(measured[k], "{:.2f}") if k in measured else "·" for k in steps]
        eer = [_fmt(mean_of(results["eer"][method].get(k)), "{:.3f}") for k in steps if k in measured]

        def relative(metric: str, to: float, pattern: str, minus: bool) -> str:
            values = [(k, mean_of(results[metric][method].get(k))) for k in listen]
            return " / ".join(f"k{k} " + _fmt(v - to if minus else (v / to if to else math.nan), pattern)
                              for k, v in values if math.isfinite(v))

        compute = results["compute"][method]
        seconds = compute.get("seconds")
        train = f"{compute.get('updates')} upd, {seconds:.0f} s" if seconds is not None else "?"
        tuned = (results.get("baselines_tuned") or {}).get(method)
        setting = f" ({', '.join(f'{k} {v}' for k, v in tuned['chosen'].items())})" if tuned else ""
        out.append(f"| {label}: {method}{setting} | {group_bytes(results, method, bench)} | " + " | ".join(gap)
                   + f" | {' / '.join(eer)} | {relative('cer', real_cer, '{:.2f}×', False)} | "
                   + f"{relative('dnsmos', real_dnsmos, '{:+.2f}', True)} | {train} |")
    return out


def merged_curves(evaluations: list[dict], labels: list[str], metric: str = "gap_closed") -> dict:
    """One results-like dict whose "methods" are every evaluation's rows ("label: method"), for ``plot_curves``."""
    steps = sorted({int(k) for e in evaluations for k in e["steps"]})
    merged = {"steps": steps, "methods": [], metric: {}, "references": evaluations[0].get("references"),
              "episodes": evaluations[0]["episodes"], "flat_methods": {}}
    for results, label in zip(evaluations, labels):
        for method in results["methods"]:
            if method in results.get("flat_methods", {}):
                continue
            name = f"{label}: {method}"
            merged["methods"].append(name)
            merged[metric][name] = results[metric][method]
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", nargs="+", help="results.json files of `metatts evaluate`")
    parser.add_argument("--bench", action="append", default=[],
                        help="adaptation-<date>.json of `metatts bench` on an evaluation's meta checkpoint (voice "
                             "pack bytes), one per evaluation in order; '-' for none")
    parser.add_argument("--label", action="append", help="a row label per evaluation (default: its file name)")
    parser.add_argument("--plot", help="write gap closed against steps, one line per row, to this PNG")
    args = parser.parse_args(argv)
    if len(args.bench) > len(args.evaluations):
        parser.error(f"{len(args.bench)} --bench files for {len(args.evaluations)} evaluations")
    benches = [json.loads(Path(b).read_text()) if b and b != "-" else None for b in args.bench]
    benches += [None] * (len(args.evaluations) - len(benches))
    labels = args.label or [Path(p).stem for p in args.evaluations]
    evaluations = [json.loads(Path(p).read_text()) for p in args.evaluations]
    steps = [str(k) for k in sorted({int(k) for e in evaluations for k in e["steps"]})]
    print("| method | bytes per voice | " + " | ".join(f"gap closed k={k}" for k in steps)
          + " | EER (measured k) | CER ×real | DNSMOS −real | training |")
    print("|---" * (len(steps) + 6) + "|")
    for results, label, bench in zip(evaluations, labels, benches):
        for line in rows(results, label, bench, steps):
            print(line)
    real = evaluations[0]["references"]
    print(f"\nReferences: similarity same speaker {cell(real['same_speaker']['similarity'], '{:.3f}')}, stranger "
          f"{cell(real['stranger']['similarity'], '{:.3f}')}; real recordings CER "
          f"{cell(real['real']['cer'], '{:.3f}')}, DNSMOS {cell(real['real']['dnsmos'], '{:.2f}')}.")
    if args.plot:
        plot_curves(merged_curves(evaluations, labels), "gap_closed", args.plot)
        print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
