"""`metatts bench`: the steps ratio on hand-made curves, throughput from a run log, and one real run on the tiny
evaluation of tests/test_evaluate.py (dated JSON with every headline number; bad input exits 2)."""

from __future__ import annotations

import json
import statistics

import pytest

from metatts.cli import main
from metatts.bench import meta_train_throughput, run_bench, steps_ratio

pytestmark = pytest.mark.usefixtures("one_thread")


def _curves(meta: dict, baseline: dict, metric: str = "gap_closed") -> dict:
    """A results.json fragment: interval cells (mean ± 0.05) as `metatts evaluate` writes them."""
    def cells(curve):
        return {str(k): {"mean": v, "ci_low": v - 0.05, "ci_high": v + 0.05} for k, v in curve.items()}

    return {metric: {"meta": cells(meta), "baseline": cells(baseline)}}


BASELINE = {0: 0.60, 1: 0.65, 5: 0.70, 10: 0.72, 100: 0.80}


def test_steps_ratio_reached_at_5_is_20():
    ratio = steps_ratio(_curves({0: 0.6, 1: 0.75, 5: 0.81, 10: 0.85, 100: 0.9}, BASELINE))
    assert ratio["value"] == 20 and ratio["reached_at"] == 5 and ratio["reason"] is None
    assert ratio["baseline_at_reference"] == 0.80 and ratio["metric"] == "gap_closed"
    # The two points compared, with their intervals: meta at 5 steps, the baseline at 100.
    assert ratio["meta_interval"] == pytest.approx([0.76, 0.86]) and ratio["baseline_interval"] == pytest.approx(
        [0.75, 0.85])
    # The same reading on another metric of the file, and bare numbers of files from before intervals.
    similarity = steps_ratio(_curves({0: 0.6, 2: 0.81, 100: 0.9}, BASELINE, "similarity"), metric="similarity")
    assert similarity["value"] == 50
    bare = {"gap_closed": {m: {k: v["mean"] for k, v in row.items()}
                           for m, row in _curves({0: 0.6, 10: 0.81}, BASELINE)["gap_closed"].items()}}
    assert steps_ratio(bare)["value"] == 10


def test_steps_ratio_never_reached_or_no_100_is_null_with_a_reason():
    never = steps_ratio(_curves({0: 0.6, 1: 0.7, 5: 0.75, 10: 0.77, 100: 0.79}, BASELINE))
    assert never["value"] is None and never["reached_at"] is None and "never reaches" in never["reason"]
    no_100 = steps_ratio(_curves({0: 0.6, 5: 0.9}, {0: 0.6, 5: 0.7}))
    assert no_100["value"] is None and "not in the evaluation's step grid" in no_100["reason"]
    at_zero = steps_ratio(_curves({0: 0.85, 100: 0.9}, BASELINE))
    assert at_zero["value"] is None and at_zero["reached_at"] == 0 and "unbounded" in at_zero["reason"]


def test_throughput_is_read_from_the_meta_run_log(tiny_runs):
    info = meta_train_throughput(tiny_runs["meta"])
    records = [json.loads(line) for line in (tiny_runs["meta"].parent / "log.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records if r["kind"] == "meta"]
    assert info["meta_batch"] == 2 and info["logged_steps"] == len(seconds) > 0
    assert info["tasks_per_second"] == pytest.approx(2 / statistics.median(seconds))


@pytest.mark.slow  # ~20 s: adapt_voice timings and synthesis with Griffin-Lim and HiFi-GAN V1
def test_bench_writes_the_dated_json(evaluation, tiny_runs, tmp_path):
    _, out = evaluation
    record, path = run_bench(out / "results.json", tiny_runs["meta"], out=tmp_path, threads=1, runs=1,
                             log=lambda *_: None)
    assert path.parent == tmp_path and path.name.startswith("adaptation-") and path.suffix == ".json"
    on_disk = json.loads(path.read_text())
    # The tiny evaluation's grid has no 100: the ratio is null and says why.
    assert on_disk["steps_ratio_vs_baseline"]["value"] is None
    assert "not in the evaluation's step grid" in on_disk["steps_ratio_vs_baseline"]["reason"]
    timing = on_disk["adapt_seconds_5clips_10steps"]
    assert timing["clips"] == 5 and timing["steps"] == 10 and timing["wall_median"] > 0 and timing["cpu_median"] > 0
    pack = on_disk["voice_pack_bytes"]
    assert pack["file"] > pack["tensors"] > 0
    assert on_disk["synthesis_rtf"]["griffinlim"]["rtf"] > 0
    assert on_disk["meta_train_throughput"]["tasks_per_second"] > 0
    assert on_disk["similarity"] == record["similarity"] and set(on_disk["eer"]) == set(on_disk["compute"])
    assert on_disk["corpus"]["speakers"] == 6 and "load_average_1min" in on_disk["machine"]


def test_bench_cli_bad_input_exits_2(tiny_runs, tmp_path, capsys):
    # Its own --out: the default (benchmarks/results) may already hold today's result, refused before the input.
    out = ["--out", str(tmp_path / "out")]
    assert main(["bench", "--evaluation", str(tmp_path / "missing.json"), "--checkpoint",
                 str(tiny_runs["meta"]), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run `metatts evaluate` first" in err
    bogus = tmp_path / "results.json"
    bogus.write_text(json.dumps({"hello": 1}))
    assert main(["bench", "--evaluation", str(bogus), "--checkpoint", str(tiny_runs["meta"]), *out]) == 2
    assert "is not a `metatts evaluate` results.json" in capsys.readouterr().err
