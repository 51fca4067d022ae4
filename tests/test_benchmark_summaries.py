"""The benchmark scripts that summarize finished runs (benchmarks/meta_runs.py, benchmarks/demo_groups.py) read real
runs: the numbers they commit are the runs' own, per group and per inner step."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from metatts.checkpoints import load_inner_lr
from metatts.config import config_from_dict
from metatts.demo import run_demo
from metatts.features.prepare import prepare
from metatts.meta.outer_loop import meta_train
from metatts.train.supervised import train
from tiny import TEXTS, TINY_MODEL, synthesize_corpus

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
QUIET = dict(progress=False, log=lambda *_: None)

pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def meta_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny meta-train runs of the decoder group with per-step rates, differing only in meta.rates_lr."""
    root = tmp_path_factory.mktemp("metaruns")
    synthesize_corpus(root / "corpus", ("m1", "f2", "m3", "f4"), TEXTS)
    data = ["data.min_utterances_per_speaker=4", "data.val_speakers=1", "data.test_speakers=0", "meta.shots=2",
            "meta.queries=2"]
    prepare(config_from_dict({}, [f"data.corpus={root / 'corpus'}", f"data.features={root / 'store'}",
                                  "data.layout=folder", "data.workers=1", *data]), **QUIET)
    common = [f"data.features={root / 'store'}", *data, *TINY_MODEL, "train.threads=1", "train.batch_size=4",
              "train.val_every=1000", "train.log_every=1"]
    train(config_from_dict({}, [*common, "train.steps=2"]), root / "train", **QUIET)
    meta = [*common, "meta.steps=2", "meta.meta_batch=1", "meta.inner_steps=2", "meta.val_tasks=1",
            "train.val_every=2", "train.checkpoint_every=2", "meta.inner_lr_per_step=true",
            "model.speaker_groups=[speaker_embedding,speaker_norms,decoder]", "meta.inner_lr_by_group.decoder=0.05"]
    runs = root / "slow", root / "fast"
    for run, rates_lr in zip(runs, (0.01, 0.5)):
        meta_train(config_from_dict({}, [*meta, f"meta.rates_lr={rates_lr}"]), run,
                   init_from=root / "train" / "checkpoint", **QUIET)
    return runs


def test_meta_runs_reports_meta_val_and_the_learned_rates_per_group_and_step(meta_runs, tmp_path, monkeypatch):
    script = _script("meta_runs")
    monkeypatch.setattr(sys, "argv", ["meta_runs.py", *map(str, meta_runs), "--name", "t", "--results",
                                      str(tmp_path)])
    script.main()
    (path,) = tmp_path.glob("meta-runs-t-*.json")
    result = json.loads(path.read_text())
    assert result["differing_settings"] == ["meta.rates_lr"]
    for run, summary in zip(meta_runs, result["runs"]):
        logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert [v["mel"] for v in summary["meta_val"]] == [r["mel"] for r in logged if r["kind"] == "meta_val"]
        assert [v["step"] for v in summary["meta_val"]] == [0, 2] and summary["checkpoint_step"] == 2
        assert summary["checkpoint_seconds"] > 0
        rates = load_inner_lr(run / "checkpoint")
        assert len(summary["rates_last_checkpoint"]) == len(rates) == 2  # one summary per inner step
        for step, summary_step in zip(rates, summary["rates_last_checkpoint"]):
            decoder = [v for k, v in step.items() if k.startswith("decoder.")]
            assert set(summary_step) == {"decoder", "speaker_embedding", "speaker_norms"}
            assert summary_step["decoder"]["elements"] == sum(v.numel() for v in decoder)
            assert summary_step["decoder"]["max"] == pytest.approx(max(float(v.max()) for v in decoder))
            assert summary_step["decoder"]["min"] <= summary_step["decoder"]["median"] <= summary_step["decoder"]["max"]
    # The faster outer rate of the rates spreads them further from where they started (0.05 for the decoder).
    slow, fast = (r["rates_last_checkpoint"][0]["decoder"] for r in result["runs"])
    assert fast["max"] / fast["min"] > slow["max"] / slow["min"]


def test_demo_groups_summarizes_a_finished_demo_run_from_its_state(tmp_path):
    script = _script("demo_groups")
    out = tmp_path / "run"
    run_demo(out, budget="smoke", vocoder="griffinlim", threads=1, progress=False, log=lambda *_: None)
    summary = script.summarize(out, [])
    state = json.loads((out / "demo-state.json").read_text())
    assert summary["seconds_total"] == pytest.approx(sum(s["seconds"] for s in state["stages"].values()))
    assert summary["meta_val_last"] == state["stages"]["meta-train"]["meta_val"][-1]
    assert summary["eval_query_mel_l1"] == state["stages"]["evaluate"]["mel_l1"]
    packs = [p.stat().st_size for p in (out / "voices" / "meta").glob("*.safetensors")]
    assert sorted(summary["pack_bytes"]["meta"]) == sorted(packs) and packs
