"""`metatts demo --budget smoke` end to end: every stage leaves its outputs, the report has finite numbers, a re-run
reuses every stage, a changed config or a missing output reruns that stage and the ones after it, and an --out
folder that is not a demo run is refused without touching it."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from metatts.adapt.voicepack import load_voice_pack
from metatts.cli import main
from metatts.demo import STAGES, DemoError, run_demo
from metatts.runtime.checkpoint import read_meta

SMOKE = dict(budget="smoke", vocoder="griffinlim", threads=1, progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("demo") / "run"
    lines: list[str] = []
    result = run_demo(out, log=lines.append, **SMOKE)
    yield out, result, lines
    torch.set_num_threads(before)


def _state(out: Path) -> dict:
    return json.loads((out / "demo-state.json").read_text())


def test_every_stage_runs_and_leaves_its_outputs(demo):
    out, result, lines = demo
    assert result.ran == list(STAGES)
    state = _state(out)
    for name in STAGES:
        record = state["stages"][name]
        assert record["done"] and record["seconds"] > 0, name
        assert record["outputs"] and all((out / p).exists() for p in record["outputs"]), name
    assert (out / "demo-corpus" / "demo_corpus.json").is_file()
    assert len((out / "features" / "manifest.jsonl").read_text().splitlines()) == 60
    assert read_meta(out / "train" / "checkpoint").step == 6
    meta = read_meta(out / "meta" / "checkpoint")
    assert (meta.kind, meta.step) == ("meta", 2)
    # Voice packs of the held-out speakers, one per model, each loading onto the checkpoint it was adapted from.
    speakers = state["stages"]["adapt"]["speakers"]
    test_split = json.loads((out / "features" / "splits.json").read_text())["test"]
    assert len(speakers) == 2 and set(speakers) <= set(test_split)
    for speaker, row in speakers.items():
        assert len(row["clips"]) == 5
        for method, run in (("meta", "meta"), ("baseline", "train")):
            pack = load_voice_pack(out / row[method]["pack"], out / run / "checkpoint")
            assert pack.params and row[method]["pack_bytes"] == (out / row[method]["pack"]).stat().st_size
            assert len(row[method]["support_loss"]) == 3  # phi_0, phi_1, phi_2
    # Wavs of a sentence no corpus speaker said, per speaker and model, plus a real clip to compare with.
    synth = state["stages"]["synthesize"]
    assert synth["vocoder"] == "Griffin-Lim"
    corpus_texts = {json.loads(line)["text"] for line in (out / "features" / "manifest.jsonl").read_text().splitlines()}
    for speaker, row in synth["speakers"].items():
        for key in ("meta", "baseline"):
            assert row[key][0]["text"].lower().rstrip(".") not in {t.lower().rstrip(".") for t in corpus_texts}
            wave, rate = sf.read(out / "report" / row[key][0]["wav"])
            assert rate == 22050 and len(wave) > 0.3 * rate and float(abs(wave).max()) > 0.01
        assert (out / "report" / row["recorded"]["wav"]).is_file()
    curves = json.loads((out / "eval" / "curves.json").read_text())
    assert set(curves["mel_l1"]) == {"meta", "baseline"} and curves["steps"] == [0, 1, 2]
    assert any("[8/8] report: done" in line for line in lines)


def test_report_has_finite_numbers_plots_and_links(demo):
    out, result, _ = demo
    report = result.report.read_text()
    numbers = json.loads((out / "report" / "numbers.json").read_text())
    values = [v for row in numbers["query_mel_l1"].values() for v in row.values()]
    assert len(values) == 6 and all(math.isfinite(v) and v > 0 for v in values)
    # The table rows carry the same numbers, to 4 decimals.
    for method in ("meta", "baseline"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {method} |"))
        cells = [float(c) for c in re.findall(r"\d+\.\d{4}", row)]
        assert cells == pytest.approx([numbers["query_mel_l1"][method][k] for k in ("0", "1", "2")], abs=1e-4)
    assert all(math.isfinite(s) and s > 0 for s in numbers["stage_seconds"].values())
    for png in ("adaptation.png", "training.png", "support.png", "mels.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in report
    links = re.findall(r"\]\(([^)]+\.wav)\)", report)
    assert len(links) == 2 * 3 and all((out / "report" / link).is_file() for link in links)
    assert "metatts demo --out" in report and "metatts meta-train" in report and "## Wall time per stage" in report


def test_second_run_reuses_every_stage(demo):
    out, _, _ = demo
    checkpoint = out / "meta" / "checkpoint" / "model.safetensors"
    mtime = checkpoint.stat().st_mtime_ns
    lines: list[str] = []
    start = time.perf_counter()
    again = run_demo(out, log=lines.append, **SMOKE)
    assert again.ran == []
    assert all(stage["reused"] for stage in again.stages.values())
    assert sum("reused" in line for line in lines) == len(STAGES)
    assert checkpoint.stat().st_mtime_ns == mtime
    assert time.perf_counter() - start < 10


def test_changed_config_reruns_that_stage_and_the_ones_after(demo, tmp_path):
    out, _, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    train_weights = (copy / "train" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    result = run_demo(copy, overrides=["meta.steps=3"], log=lambda *_: None, **SMOKE)
    assert result.ran == ["meta-train", "adapt", "synthesize", "evaluate", "report"]
    assert read_meta(copy / "meta" / "checkpoint").step == 3
    assert (copy / "train" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == train_weights
    assert "meta.steps=3" in result.report.read_text()


def test_a_missing_output_reruns_its_stage(demo, tmp_path):
    out, _, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "eval" / "curves.json").unlink()
    result = run_demo(copy, log=lambda *_: None, **SMOKE)
    assert result.ran == ["evaluate", "report"]
    assert (copy / "eval" / "curves.json").is_file()


def test_a_folder_that_is_not_a_demo_run_is_refused_untouched(tmp_path, capsys):
    precious = tmp_path / "mine" / "thesis.txt"
    precious.parent.mkdir()
    precious.write_text("do not delete")
    with pytest.raises(DemoError, match="not a metatts demo run"):
        run_demo(precious.parent, **SMOKE)
    assert main(["demo", "--out", str(precious.parent), "--budget", "smoke", "--quiet"]) == 2
    assert "not a metatts demo run" in capsys.readouterr().err
    assert main(["demo", "--out", str(precious), "--budget", "smoke", "--quiet"]) == 2
    assert precious.read_text() == "do not delete" and sorted(p.name for p in precious.parent.iterdir()) == \
        ["thesis.txt"]


def test_a_foreign_folder_inside_a_demo_run_is_not_overwritten(demo, tmp_path):
    out, _, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    state = _state(copy)
    state["created"].remove("voices")
    (copy / "demo-state.json").write_text(json.dumps(state))
    with pytest.raises(DemoError, match="was not made by `metatts demo`"):
        run_demo(copy, overrides=["meta.steps=3"], log=lambda *_: None, **SMOKE)
    assert (copy / "voices").is_dir()


def test_a_killed_training_stage_resumes_from_its_checkpoint(demo, tmp_path):
    out, _, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    # What a run of meta.steps=4 killed after its step-2 checkpoint leaves: the stage started, not done.
    from metatts.demo import Demo

    key = Demo(copy, overrides=["meta.steps=4"], **{k: v for k, v in SMOKE.items() if k != "progress"}).keys()
    state = _state(copy)
    state["stages"]["meta-train"].update(key=key["meta-train"], done=False)
    (copy / "demo-state.json").write_text(json.dumps(state))
    lines: list[str] = []
    result = run_demo(copy, overrides=["meta.steps=4"], log=lines.append, **SMOKE)
    assert result.ran == ["meta-train", "adapt", "synthesize", "evaluate", "report"]
    assert any("resuming meta at step 2 of 4" in line for line in lines)
    assert read_meta(copy / "meta" / "checkpoint").step == 4
    records = [json.loads(line) for line in (copy / "meta" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "meta"] == [1, 2, 3, 4]
    # Validated at 0 and 2 by the first run and at 4 by the resumed one (a fresh run would give 0 and 4).
    assert [r["step"] for r in records if r["kind"] == "meta_val"] == [0, 2, 4]
