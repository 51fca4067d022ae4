"""The trade-off table of issue 14 from committed results: per method of one or more `metatts evaluate` runs, the
bytes a voice costs, gap closed at each step count, EER, CER relative to the real recordings, DNSMOS against the
real recordings, and the training compute behind the model. Reads only results.json files (and, for pack bytes of
the meta method, a `metatts bench` adaptation JSON), so the README's table is re-derived, never typed in.

    python benchmarks/tradeoff_table.py benchmarks/results/evaluate-speechocean762-2026-12-06.json \
        --bench benchmarks/results/adaptation-2026-12-06.json --label "embedding + norms + adapters r4"

Prints Markdown. Cells are means [95 % bootstrap interval over speakers]; CER and DNSMOS are also given relative to
the real recordings of the same sentences (CER ×real, DNSMOS −real), the form the issue's targets take.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metatts.evaluation.report import cell  # noqa: E402
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


def rows(results: dict, label: str, bench: dict | None) -> list[str]:
    steps = [str(k) for k in results["steps"]]
    real = (results.get("references") or {}).get("real") or {}
    real_cer, real_dnsmos = mean_of(real.get("cer")), mean_of(real.get("dnsmos"))
    out = []
    for method in results["methods"]:
        gap = [cell(results["gap_closed"][method].get(k), "{:.2f}") for k in steps]
        eer = [_fmt(mean_of(results["eer"][method].get(k)), "{:.3f}") for k in steps]
        cer = [mean_of(results["cer"][method].get(k)) for k in steps]
        dnsmos = [mean_of(results["dnsmos"][method].get(k)) for k in steps]
        cer_text = " / ".join(_fmt(c / real_cer if real_cer else math.nan, "{:.2f}×") for c in cer
                              if math.isfinite(c))
        dnsmos_text = " / ".join(_fmt(d - real_dnsmos, "{:+.2f}") for d in dnsmos if math.isfinite(d))
        compute = results["compute"][method]
        seconds = compute.get("seconds")
        train = f"{compute.get('updates')} upd, {seconds:.0f} s" if seconds is not None else "?"
        tuned = (results.get("baselines_tuned") or {}).get(method)
        setting = f" ({', '.join(f'{k} {v}' for k, v in tuned['chosen'].items())})" if tuned else ""
        out.append(f"| {label}: {method}{setting} | {group_bytes(results, method, bench)} | " + " | ".join(gap)
                   + f" | {' / '.join(eer)} | {cer_text} | {dnsmos_text} | {train} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", nargs="+", help="results.json files of `metatts evaluate`")
    parser.add_argument("--bench", help="adaptation-<date>.json of `metatts bench` (voice pack bytes)")
    parser.add_argument("--label", action="append", help="a row label per evaluation (default: its file name)")
    args = parser.parse_args(argv)
    bench = json.loads(Path(args.bench).read_text()) if args.bench else None
    labels = args.label or [Path(p).stem for p in args.evaluations]
    first = json.loads(Path(args.evaluations[0]).read_text())
    steps = [str(k) for k in first["steps"]]
    listen = "/".join(str(k) for k in first.get("settings", {}).get("listener_steps", first["steps"]))
    print("| method | bytes per voice | " + " | ".join(f"gap closed k={k}" for k in steps)
          + f" | EER k={'/'.join(steps)} | CER ×real k={listen} | DNSMOS −real k={listen} | training |")
    print("|---" * (len(steps) + 6) + "|")
    for path, label in zip(args.evaluations, labels):
        for line in rows(json.loads(Path(path).read_text()), label, bench):
            print(line)
    real = first["references"]
    print(f"\nReferences: similarity same speaker {cell(real['same_speaker']['similarity'], '{:.3f}')}, stranger "
          f"{cell(real['stranger']['similarity'], '{:.3f}')}; real recordings CER "
          f"{cell(real['real']['cer'], '{:.3f}')}, DNSMOS {cell(real['real']['dnsmos'], '{:.2f}')}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
