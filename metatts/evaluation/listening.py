"""The listening page of a finished `metatts evaluate` run: speakers × methods × steps of audio players beside the
speakers' real recordings, each cell with its own numbers, so a reader can hear what the tables say.

    results folder (results.json + samples/<method>/step<k>/<speaker>-<n>.wav + samples/real/<speaker>-<n>.wav)
      └─ render_listening_page ─▶ one self-contained HTML page (inline CSS, no script, relative links)
           written as <folder>/index.html by write_listening_page (opens from disk, no server),
           and served by `metatts serve --evaluation <folder>` at /evaluation/

It reads only results.json and the sample files it lists (``results["samples"]``), so it can be redrawn for any
past run. A cell's numbers are those of the episode its audio comes from (the harness writes samples for the first
episode of each speaker); the table at the top holds the means over all episodes. Metrics are shown when the run
has them: a per-episode value per method and step (``results["per_episode"]``), each a number or a
``{"mean": ...}`` record.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

PAGE = "index.html"
# (key, label, format, better): the metrics a cell can show, in this order, when the run recorded them.
METRICS = (("similarity", "similarity", "{:.3f}", "higher"), ("gap_closed", "gap closed", "{:.2f}", "higher"),
           ("eer", "EER", "{:.3f}", "lower"), ("cer", "CER", "{:.2f}", "lower"),
           ("wer", "WER", "{:.2f}", "lower"),
           ("mcd", "MCD dB", "{:.2f}", "lower"), ("f0_rmse", "F0 RMSE cents", "{:.0f}", "lower"),
           ("dnsmos", "DNSMOS", "{:.2f}", "higher"), ("mel_l1", "mel L1", "{:.3f}", "lower"))

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:110em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .5em;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
audio{width:13em;height:2.2em;display:block}.m{font-size:12px;color:#444;white-space:nowrap}
.note{color:#666;font-size:13px}.real{display:flex;gap:1em;flex-wrap:wrap}.real div{font-size:12px}
"""


def _value(x):
    """A metric value as stored: a number, None, or a record with a mean (newer result files)."""
    if isinstance(x, dict):
        x = x.get("mean")
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _fmt(x, pattern: str) -> str:
    v = _value(x)
    return "–" if v is None else pattern.format(v)


def _relative(path: str, root: Path) -> str | None:
    """A sample path from results.json as a link relative to the results folder (the run may have been written
    with another working directory or moved since): the part from its last ``samples`` folder on."""
    parts = Path(path).parts
    if "samples" not in parts:
        return None
    tail = parts[len(parts) - 1 - parts[::-1].index("samples"):]
    rel = Path(*tail)
    return rel.as_posix() if (root / rel).is_file() else None


def _samples(results: dict, root: Path) -> dict[tuple[str, str, str], list[str]]:
    """(method, step, speaker) -> relative links of its sample files, in order; method "real" has step "0"."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for method, by_step in (results.get("samples") or {}).items():
        for step, paths in by_step.items():
            for path in paths:
                rel = _relative(path, root)
                if rel is None:
                    continue
                speaker = Path(rel).stem.rsplit("-", 1)[0]
                out.setdefault((method, str(step), speaker), []).append(rel)
    return out


def render_listening_page(results_dir: str | Path) -> str:
    """The page's HTML for the run in ``results_dir`` (which holds results.json); links are relative to it."""
    root = Path(results_dir)
    path = root / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give the output folder of a finished `metatts evaluate`")
    results = json.loads(path.read_text())
    steps = [str(k) for k in results["steps"]]
    methods = list(results["methods"])
    flat = set(results.get("flat_methods") or {})
    episodes = results.get("episodes") or []
    per_episode = results.get("per_episode") or {}
    metrics = [m for m in METRICS if m[0] in results or m[0] in per_episode]
    samples = _samples(results, root)
    speakers = list(dict.fromkeys(e["speaker"] for e in episodes))
    first_episode = {}
    for index, episode in enumerate(episodes):
        first_episode.setdefault(episode["speaker"], index)
    suite = results.get("suite") or {}
    esc = html.escape
    vocoder = str((results.get("vocoder") or {}).get("name", "?"))

    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>metatts evaluation: {esc(str(suite.get('name', root.name)))}</title>",
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>Listening page: {esc(str(suite.get('name', root.name)))}</h1>",
           f"<p class=note>{len(episodes)} episodes of {esc(str(suite.get('shots', '?')))} support + "
           f"{esc(str(suite.get('queries', '?')))} query utterances from {len(speakers)} "
           f"{esc(str(suite.get('split', '')))} speakers; vocoder {esc(vocoder)}; "
           f"written {esc(str(results.get('created', '')))}. Each cell plays a synthesized query sentence of the "
           f"speaker's first episode after k adaptation steps, with that episode's numbers; the real recordings of "
           f"the same sentences come first. "
           f"{'Methods without a gradient step (' + ', '.join(sorted(flat)) + ') have one cell. ' if flat else ''}"
           f"</p>"]

    # ---- means over all episodes
    for key, label, pattern, better in metrics:
        if key not in results:
            continue
        out.append(f"<table><tr><th>{esc(label)} ({better} is better), mean over episodes</th>"
                   + "".join(f"<th>k={esc(k)}</th>" for k in steps) + "</tr>")
        for method in methods:
            values = (results[key] or {}).get(method) or {}
            out.append(f"<tr><th>{esc(method)}</th>"
                       + "".join(f"<td class=num>{esc(_fmt(values.get(k), pattern))}</td>" for k in steps) + "</tr>")
        out.append("</table>")

    if not samples:
        out.append("<p><b>This run wrote no audio samples</b> (`metatts evaluate --samples 0`): only the numbers "
                   "above.</p>")

    # ---- one section per speaker
    for speaker in speakers:
        episode_index = first_episode[speaker]
        episode = episodes[episode_index]
        out.append(f"<h2 id='{esc(speaker, quote=True)}'>speaker {esc(speaker)}</h2>")
        real = samples.get(("real", "0", speaker), [])
        if real:
            out.append("<div class=real>")
            for n, rel in enumerate(real):
                utt = episode["query"][n] if n < len(episode.get("query", [])) else f"sample {n}"
                out.append(f"<div>real recording · {esc(str(utt))}<audio controls preload=none "
                           f"src='{esc(rel, quote=True)}'></audio></div>")
            out.append("</div>")
        out.append("<table><tr><th>method</th>" + "".join(f"<th>k={esc(k)}</th>" for k in steps) + "</tr>")
        for method in methods:
            cells = []
            for j, k in enumerate(steps):
                if method in flat and j > 0:
                    cells.append("<td class=note>(no gradient step)</td>" if j == 1 else "<td></td>")
                    continue
                lookup = steps[0] if method in flat else k
                audio = "".join(f"<audio controls preload=none src='{esc(rel, quote=True)}'></audio>"
                                for rel in samples.get((method, lookup, speaker), []))
                numbers = []
                for key, label, pattern, _ in metrics:
                    rows = (per_episode.get(key) or {}).get(method)
                    if rows and episode_index < len(rows) and j < len(rows[episode_index]):
                        numbers.append(f"<div class=m>{esc(label)} {esc(_fmt(rows[episode_index][j], pattern))}"
                                       f"</div>")
                cells.append(f"<td>{audio or '<span class=note>no audio</span>'}{''.join(numbers)}</td>")
            out.append(f"<tr><th>{esc(method)}</th>{''.join(cells)}</tr>")
        out.append("</table>")
    out.append("<p class=note>Made by metatts from results.json; the numbers are explained in results.md.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_listening_page(results_dir: str | Path) -> Path:
    """Write ``results_dir``/index.html: the listening page, opening from disk with no server."""
    path = Path(results_dir) / PAGE
    path.write_text(render_listening_page(results_dir), encoding="utf-8")
    return path
