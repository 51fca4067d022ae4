"""`metatts meta-train` on a tiny model and a tiny espeak store: the loss falls, NaN steps are skipped and counted,
too many stop the run with the checkpoint intact, resume is exact (also after SIGKILL), first order changes the
meta-gradient, checkpoints load with the API, and two gloo ranks match one process."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from metatts.api import load
from metatts.cli import main
from metatts.config import config_from_dict
from metatts.episodes.sampler import EpisodeSampler
from metatts.features.prepare import prepare
from metatts.features.store import FeatureStore
from metatts.checkpoints import build_model, load_inner_lr
from metatts.episodes.collate import aligned_batch
from metatts.evaluation.curves import adaptation_curve
from metatts.meta import step as meta_step_module
from metatts.meta.outer_loop import MetaTrainingError, NotEnoughSpeakersError, meta_train
from metatts.adapt.adapters import SGDAdapter
from metatts.adapt.fast import support_loss_fn
from metatts.checkpoints import load_for_store
from metatts.evaluation.methods import EvalContext, MetaMethod
from metatts.meta.inner_lr import InnerLR
from metatts.meta.step import MetaStepSettings, multi_step_weights, support_adapt, task_loss
from metatts.model import NEW_SPEAKER, SPEAKER_GROUPS
from metatts.model.acoustic import select_parameters
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.env import seed_everything
from metatts.train.common import RunData
from metatts.train.supervised import train
from test_model import make_batch, make_model
from tiny import TEXTS, TINY_MODEL, synthesize_corpus

VOICES = ("m1", "f2", "m3", "f4")
DATA = ["data.min_utterances_per_speaker=4", "data.val_speakers=1", "data.test_speakers=0", "meta.shots=2",
        "meta.queries=2"]
TINY = [*TINY_MODEL, "meta.warmup_steps=2", "train.threads=1", "train.log_every=1", "train.val_every=1000",
        "train.checkpoint_every=3", "meta.meta_batch=2", "meta.inner_steps=2", "meta.outer_lr=3e-3", "meta.val_tasks=1",
        "train.batch_size=4"]
QUIET = dict(progress=False, log=lambda *_: None)
THETA = "decoder.blocks.0.feed_forward.conv1.weight"  # a shared parameter the speaker norms condition


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """4 espeak voices x 5 sentences; the split holds 3 meta-train speakers and 1 meta-val speaker."""
    root = tmp_path_factory.mktemp("meta")
    synthesize_corpus(root / "corpus", VOICES, TEXTS)
    config = config_from_dict({}, [f"data.corpus={root / 'corpus'}", f"data.features={root / 'store'}",
                                   "data.layout=folder", "data.workers=1", *DATA])
    prepare(config, progress=False, log=lambda *_: None)
    return root / "store"


def _config(store: Path, steps: int, *extra: str):
    return config_from_dict({}, [f"data.features={store}", f"meta.steps={steps}", *DATA, *TINY, *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / "checkpoint/model.safetensors"))
    lr_file = run / "checkpoint/inner_lr.safetensors"
    if lr_file.is_file():
        tensors.update({f"inner_lr.{k}": v for k, v in load_file(str(lr_file)).items()})
    return tensors


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_meta_training_lowers_the_query_loss_after_adaptation(store, tmp_path):
    result = meta_train(_config(store, 30, "train.val_every=30", "meta.outer_lr=1e-2", "meta.warmup_steps=5"),
                        tmp_path / "run", **QUIET)
    assert result.step == 30 and result.skipped_steps == 0
    query = [r["query_mel"] for r in result.train]
    first, last = np.mean(query[:3]), np.mean(query[-3:])
    assert last < 0.7 * first, (first, last)
    # Meta-validation on the held-out speaker's fixed episode: query loss after 0..k inner steps, at 0 and 30.
    assert [v["step"] for v in result.val] == [0, 30]
    assert all(v["steps"] == [0, 1, 2] and len(v["mel"]) == 3 for v in result.val)
    assert result.val[-1]["mel"][-1] < result.val[0]["mel"][-1]
    records = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"meta", "meta_val"}
    # The learned inner rates moved away from their initialization and are stored beside the weights.
    lr = load_inner_lr(tmp_path / "run/checkpoint")
    assert set(lr) == {"speaker.slot_embedding", "speaker.slot_norms"}
    assert not torch.allclose(lr["speaker.slot_norms"], torch.full_like(lr["speaker.slot_norms"], 0.1))


def test_weights_init_and_rates_move_at_their_own_outer_rates(store, tmp_path):
    """Adam moves an element by about its lr per step: after 4 steps with outer_lr 1e-5, init_lr 1e-2 and
    rates_lr 3e-2, the weights barely change, the slot and the log-rates clearly do, each near its own scale."""
    config = _config(store, 4, "meta.outer_lr=1e-5", "meta.init_lr=1e-2", "meta.rates_lr=3e-2",
                     "meta.warmup_steps=1", "meta.val_tasks=0")
    meta_train(config, tmp_path / "run", **QUIET)
    seed_everything(config.train.seed)  # meta_train's own start: seed, data, model
    data = RunData.load(config)
    start = build_model(config, len(data.symbols), len(data.speakers))
    after = load_file(str(tmp_path / "run/checkpoint/model.safetensors"))
    moved = {n: float((after[n] - p.detach()).abs().max()) for n, p in start.named_parameters()}
    assert moved["speaker.slot_norms"] > 1e-2, moved["speaker.slot_norms"]
    assert moved[THETA] < 1e-4, moved[THETA]
    log_rates = load_inner_lr(tmp_path / "run/checkpoint")["speaker.slot_norms"].log()
    step = float((log_rates - np.log(0.1)).abs().max())
    assert 3e-2 < step <= 4 * 3e-2 + 1e-6, step


def test_adapters_as_fast_weights_are_meta_learned_and_adapt_with_learned_rates(store, tmp_path):
    """The adapters group in the inner loop: meta-training moves their starting values (B leaves zero), learns a
    rate for each of their tensors, and the meta checkpoint adapts them through the API into a pack."""
    config = _config(store, 3, "model.adapter_rank=2", "meta.warmup_steps=1", "meta.val_tasks=0",
                     "model.speaker_groups=[speaker_embedding,speaker_norms,adapters]")
    result = meta_train(config, tmp_path / "run", **QUIET)
    assert result.step == 3 and result.skipped_steps == 0
    after = load_file(str(tmp_path / "run/checkpoint/model.safetensors"))
    b = [n for n in after if n.endswith("lora_b")]
    assert b and all(torch.count_nonzero(after[n]) > 0 for n in b)
    lr = load_inner_lr(tmp_path / "run/checkpoint")
    assert {n for n in lr if "_adapter." in n} == {n for n in after if "_adapter.lora_" in n}
    tts = load(tmp_path / "run/checkpoint", device="cpu", vocoder="griffinlim")
    entries = FeatureStore(store).entries[:3]
    voice = tts.adapt([e.audio_path for e in entries], [e.text for e in entries], steps=2)  # the learned rates
    assert {n for n in voice.pack.params if "_adapter." in n} == {n for n in after if "_adapter.lora_" in n}
    assert any(not torch.equal(voice.pack.params[n], after[n]) for n in b)


def test_decoder_weights_as_fast_weights_start_at_their_own_rate_and_move_at_the_weights_outer_rate(store, tmp_path):
    """Meta-TTS's choice, the decoder's weights in the inner loop: their learned rates start at
    ``meta.inner_lr_by_group.decoder`` (the slot's at ``meta.inner_lr``), and the outer loop moves them as the shared
    weights they are (``outer_lr``), not at the slot's ``init_lr``. The checkpoint adapts them into a pack."""
    config = _config(store, 2, "model.speaker_groups=[speaker_embedding,decoder]", "meta.inner_lr=0.2",
                     "meta.inner_lr_by_group.decoder=0.005", "meta.outer_lr=1e-6", "meta.init_lr=1e-2",
                     "meta.rates_lr=1e-3", "meta.warmup_steps=1", "meta.val_tasks=0")
    meta_train(config, tmp_path / "run", **QUIET)
    seed_everything(config.train.seed)
    data = RunData.load(config)
    start = dict(build_model(config, len(data.symbols), len(data.speakers)).named_parameters())
    after = load_file(str(tmp_path / "run/checkpoint/model.safetensors"))
    assert float((after[THETA] - start[THETA].detach()).abs().max()) < 5e-6  # ~2 steps of 1e-6
    assert float((after["speaker.slot_embedding"] - start["speaker.slot_embedding"].detach()).abs().max()) > 5e-3
    lr = load_inner_lr(tmp_path / "run/checkpoint")
    decoder = [n for n in lr if n.startswith("decoder.")]
    assert decoder and THETA in decoder and "speaker.slot_embedding" in lr
    for name, alpha in lr.items():  # two steps at rates_lr 1e-3 move a log-rate by at most ~2e-3
        want = 0.005 if name.startswith("decoder.") else 0.2
        assert float((alpha.log() - np.log(want)).abs().max()) < 5e-3, name
    tts = load(tmp_path / "run/checkpoint", device="cpu", vocoder="griffinlim")
    entries = FeatureStore(store).entries[:3]
    voice = tts.adapt([e.audio_path for e in entries], [e.text for e in entries], steps=2)
    assert THETA in voice.pack.params and not torch.equal(voice.pack.params[THETA], after[THETA])


def test_resume_continues_exactly_like_an_uninterrupted_run(store, tmp_path):
    whole = meta_train(_config(store, 6), tmp_path / "whole", **QUIET)
    meta_train(_config(store, 3), tmp_path / "split", **QUIET)
    resumed = meta_train(_config(store, 6), tmp_path / "split", resume=True, **QUIET)
    assert [r["objective"] for r in resumed.train] == [r["objective"] for r in whole.train[3:]]
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "split"))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_parameters(store, tmp_path):
    steps = 60
    args = [sys.executable, "-m", "metatts.cli", "meta-train", "--quiet", "--out", str(tmp_path / "killed")]
    sets = [f"data.features={store}", f"meta.steps={steps}", *DATA, *TINY, "train.checkpoint_every=2",
            "train.log_every=1000"]
    for item in sets:
        args += ["--set", item]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta_file = tmp_path / "killed/checkpoint/meta.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(meta_file.read_text())["step"] >= 6:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, f"finished before the kill: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(meta_file.read_text())["step"]
    assert 6 <= killed_at < steps
    assert main(["meta-train", "--quiet", "--resume", "--out", str(tmp_path / "killed"),
                 *[a for item in sets for a in ("--set", item)]]) == 0
    meta_train(_config(store, steps, "train.checkpoint_every=2", "train.log_every=1000"), tmp_path / "whole",
               **QUIET)
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "killed"))


class _PoisonAligner:
    """Stand-in for the aligner's forward-sum loss in the outer objective: NaN on the chosen calls (one per task)."""

    real = staticmethod(meta_step_module.forward_sum_loss)

    def __init__(self, bad_calls):
        self.calls, self.bad_calls = 0, bad_calls

    def __call__(self, alignment, blank_logprob):
        self.calls += 1
        value = self.real(alignment, blank_logprob)
        return value * float("nan") if self.bad_calls(self.calls) else value


def test_a_nan_step_is_skipped_counted_and_logged(store, tmp_path, monkeypatch):
    # Meta-step 2's first task (call 3; two tasks per step) is poisoned.
    monkeypatch.setattr(meta_step_module, "forward_sum_loss", _PoisonAligner(lambda call: call == 3))
    messages = []
    result = meta_train(_config(store, 4), tmp_path / "run", progress=False, log=messages.append)
    assert result.step == 4 and result.skipped_steps == 1
    assert [r["step"] for r in result.train] == [1, 3, 4]
    assert any("meta-step 2 skipped: non-finite loss" in m for m in messages)
    skips = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()
             if '"skip"' in line]
    assert [(s["step"], s["consecutive"]) for s in skips] == [(2, 1)]
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "run").values())


def test_consecutive_nan_steps_stop_training_and_keep_the_last_good_checkpoint(store, tmp_path, monkeypatch):
    meta_train(_config(store, 3), tmp_path / "good", **QUIET)
    # Steps 1-3 are good (checkpoint at 3); every loss after that is NaN.
    monkeypatch.setattr(meta_step_module, "forward_sum_loss", _PoisonAligner(lambda call: call > 6))
    with pytest.raises(MetaTrainingError, match="3 consecutive meta-steps.*last good checkpoint"):
        meta_train(_config(store, 20, "meta.max_bad_steps=3"), tmp_path / "run", **QUIET)
    assert json.loads((tmp_path / "run/checkpoint/meta.json").read_text())["step"] == 3
    assert _same(_weights(tmp_path / "run"), _weights(tmp_path / "good"))


def test_too_few_speakers_for_the_meta_batch_is_a_clear_error(store, tmp_path, capsys):
    with pytest.raises(NotEnoughSpeakersError, match="meta_batch = 4 tasks but only 3 meta-train speakers"):
        meta_train(_config(store, 1, "meta.meta_batch=4"), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()
    args = ["meta-train", "--quiet", "--out", str(tmp_path / "run")]
    sets = [f"data.features={store}", *DATA, *TINY, "meta.meta_batch=4"]
    assert main(args + [a for item in sets for a in ("--set", item)]) == 2
    assert "only 3 meta-train speakers" in capsys.readouterr().err


def test_first_order_changes_the_meta_gradient(store):
    config = _config(store, 1)
    data = RunData.load(config)
    torch.manual_seed(0)
    model = build_model(config, len(data.symbols), len(data.speakers)).eval()
    by_speaker = {s: [e.id for e in entries] for s, entries in data.store.speakers().items() if s in data.speakers}
    episode = EpisodeSampler(by_speaker, 2, 2, seed=0).meta_batch(0, 1)[0]
    support, query = (aligned_batch(model, data.collator, ids, torch.device("cpu"))
                      for ids in (episode.support, episode.query))
    groups = config.model.speaker_groups
    grads = {}
    for first_order in (False, True):
        model.zero_grad()
        lr = {n: torch.full_like(p, 0.3, requires_grad=True) for n, p in select_parameters(model, groups).items()}
        task_loss(model, support, query, lr, groups, steps=2, first_order=first_order).query.total.backward()
        grads[first_order] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[first_order].update({f"lr.{n}": a.grad.clone() for n, a in lr.items()})
    second, first = grads[False], grads[True]
    assert second.keys() == first.keys()
    # φ0, α and θ get a meta-gradient either way; the second-order terms change all of them.
    for name in ("speaker.slot_norms", "lr.speaker.slot_norms", THETA):
        assert second[name].abs().sum() > 0 and first[name].abs().sum() > 0
        assert not torch.allclose(second[name], first[name]), name


def test_first_order_flag_reaches_meta_train(store, tmp_path):
    meta_train(_config(store, 2, "train.checkpoint_every=2"), tmp_path / "second", **QUIET)
    meta_train(_config(store, 2, "train.checkpoint_every=2", "meta.first_order=true"), tmp_path / "first", **QUIET)
    assert not torch.allclose(_weights(tmp_path / "second")[THETA], _weights(tmp_path / "first")[THETA])


def test_meta_checkpoint_loads_with_the_api_and_starts_from_a_train_checkpoint(store, tmp_path):
    train(_config(store, 2, "train.steps=2"), tmp_path / "sup", progress=False, log=lambda *_: None)
    assert load_inner_lr(tmp_path / "sup/checkpoint") == pytest.approx(0.1)  # a train checkpoint: meta.inner_lr
    messages = []
    meta_train(_config(store, 3), tmp_path / "meta", init_from=tmp_path / "sup/checkpoint", progress=False,
               log=messages.append)
    assert any("initialized weights from" in m and "train checkpoint" in m for m in messages)
    meta = json.loads((tmp_path / "meta/checkpoint/meta.json").read_text())
    assert meta["kind"] == "meta" and meta["extra"]["inner_lr"]["file"] == "inner_lr.safetensors"
    tts = load(tmp_path / "meta/checkpoint", vocoder="griffinlim")
    sentences, mels = tts.mels("The cat sat.")
    assert len(mels) == 1 and mels[0].shape[0] == 80
    # A train checkpoint cannot be resumed as a meta run.
    with pytest.raises(ValueError, match="--init-from"):
        meta_train(_config(store, 4), tmp_path / "sup", resume=True, **QUIET)
    # `metatts tasks` adapts both on a frozen suite (the held-out speaker here is the meta-val one).
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"# metatts tasks suite.yaml\ncorpus: corpus\nfeatures: {store}\nsplit: val\nshots: 2\n"
                     f"queries: 2\ntasks_per_speaker: 2\nseed: 0\nstep_grid: [0, 2]\n")
    report = tmp_path / "curves.json"
    assert main(["tasks", str(suite), "--checkpoint", str(tmp_path / "sup/checkpoint"), "--checkpoint",
                 str(tmp_path / "meta/checkpoint"), "--json", str(report)]) == 0
    curves = json.loads(report.read_text())["checkpoints"]
    assert [len(c["mel"]) for c in curves.values()] == [2, 2]
    assert all(len(c["mean_mel"]) == 2 and np.isfinite(c["mean_mel"]).all() for c in curves.values())


def test_adaptation_curve_reports_each_grid_step_and_restores_the_model(store):
    config = _config(store, 1)
    data = RunData.load(config)
    torch.manual_seed(0)
    model = build_model(config, len(data.symbols), len(data.speakers)).train()
    by_speaker = {s: [e.id for e in entries] for s, entries in data.store.speakers().items()}
    sampler = EpisodeSampler(by_speaker, 2, 2, seed=3)
    episodes = [sampler.episode(s, 0) for s in sampler.speakers[:2]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    curve = adaptation_curve(model, 0.5, episodes, data.collator, [0, 1, 3], config.model.speaker_groups)
    assert curve.steps == [0, 1, 3] and len(curve.mel) == 2 and all(len(r) == 3 for r in curve.mel)
    assert model.training and all(torch.equal(before[n], p) for n, p in model.named_parameters())
    # Step 0 is the unadapted model's query loss; SGD on the support moves it.
    model.eval()
    support, query = (aligned_batch(model, data.collator, ids, torch.device("cpu"))
                      for ids in (episodes[0].support, episodes[0].query))
    with torch.no_grad():
        direct = FastSpeech2Loss()(model(query), query).mel.item()
    assert curve.mel[0][0] == pytest.approx(direct, rel=1e-6)
    assert curve.mel[0][2] != curve.mel[0][0]
    again = adaptation_curve(model, 0.5, episodes, data.collator, [0, 1, 3], config.model.speaker_groups)
    assert again.mel == curve.mel  # eval mode: deterministic


# --------------------------------------------------------------------------------------------- MAML++ options
def test_multi_step_weights_anneal_from_uniform_to_the_last_step():
    assert multi_step_weights(4, 0, 10) == pytest.approx([0.25] * 4)
    assert multi_step_weights(4, 5, 10) == pytest.approx([0.125, 0.125, 0.125, 0.625])
    assert multi_step_weights(4, 10, 10) == pytest.approx([0, 0, 0, 1])
    assert multi_step_weights(4, 500, 10) == pytest.approx([0, 0, 0, 1])
    assert all(sum(multi_step_weights(3, s, 7)) == pytest.approx(1) for s in range(12))
    assert multi_step_weights(4, 3, 0) is None  # off: the final step alone
    with pytest.raises(ValueError, match="inner step"):
        multi_step_weights(0, 0, 10)


def _double_slot_batch(seed: int):
    batch = make_batch(seed, phoneme_lengths=(4, 3), speakers=(NEW_SPEAKER,) * 2, with_durations=True,
                       dtype=torch.float64)
    return dataclasses.replace(batch, mels=batch.mels.double(), pitch=batch.pitch.double(),
                               energy=batch.energy.double())


def test_multi_step_loss_is_the_weighted_sum_and_its_meta_gradient_matches_finite_differences():
    model = make_model(seed=3, hidden=8, conv_filter=8, predictor_filter=8, speaker_dim=4, pitch_bins=4,
                       energy_bins=4, decoder_layers=1).double().eval()
    support, query = _double_slot_batch(4), _double_slot_batch(5)
    groups, steps = list(SPEAKER_GROUPS), 3
    inner_lr = InnerLR(select_parameters(model, groups), init=0.3, mode="per_tensor", steps=steps).double()
    with torch.no_grad():
        for raw in inner_lr.raw.values():
            raw.add_(0.3 * torch.randn_like(raw))
    weights = multi_step_weights(steps, 1, 4)  # part-way through the annealing: every step weighs

    def objective() -> torch.Tensor:
        return task_loss(model, support, query, inner_lr.rates(), groups, steps=steps, query_weights=weights).total

    after = [task_loss(model, support, query, inner_lr.rates(), groups, steps=i).total.item() for i in (1, 2, 3)]
    total = objective()
    assert total.item() == pytest.approx(sum(w * a for w, a in zip(weights, after)), rel=1e-12)
    assert abs(total.item() - after[-1]) > 1e-4 * abs(after[-1])  # the earlier steps count
    tensors = list(model.parameters()) + list(inner_lr.parameters())
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    g, eps = torch.Generator().manual_seed(0), 1e-6
    for _ in range(3):  # directional derivatives along random directions in all of θ, φ0 and the per-step rates
        direction = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]
        analytic = sum(float((d * gr).sum()) for d, gr in zip(direction, grads) if gr is not None)
        with torch.no_grad():
            for t, d in zip(tensors, direction):
                t.add_(eps * d)
        up = objective().item()
        with torch.no_grad():
            for t, d in zip(tensors, direction):
                t.sub_(2 * eps * d)
        down = objective().item()
        with torch.no_grad():
            for t, d in zip(tensors, direction):
                t.add_(eps * d)
        assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_first_order_steps_switch_to_second_order_at_the_right_meta_step(store, tmp_path, monkeypatch):
    settings = MetaStepSettings(groups=[], inner_steps=2, first_order_steps=3)
    assert [settings.first_order_at(s) for s in range(5)] == [True, True, True, False, False]
    assert MetaStepSettings(groups=[], inner_steps=2, first_order=True).first_order_at(10)
    # What meta-training actually runs: meta-steps 0 and 1 (two tasks each) first order, meta-step 2 second order.
    seen = []
    real = meta_step_module.adapt

    def recording(*args, **kwargs):
        seen.append(kwargs["first_order"])
        return real(*args, **kwargs)

    monkeypatch.setattr(meta_step_module, "adapt", recording)
    meta_train(_config(store, 3, "meta.first_order_steps=2", "meta.val_tasks=0"), tmp_path / "run", **QUIET)
    assert seen == [True, True, True, True, False, False]


def test_query_dropout_false_runs_the_query_forward_in_eval_mode():
    model = make_model(seed=1, dropout=0.3).double()
    support, query = _double_slot_batch(4), _double_slot_batch(5)
    groups = list(SPEAKER_GROUPS)

    def query_loss(training: bool, query_dropout: bool) -> float:
        model.train(training)
        torch.manual_seed(0)
        return task_loss(model, support, query, 0.3, groups, steps=2, query_dropout=query_dropout).total.item()

    evaluated = query_loss(False, True)
    assert query_loss(True, False) == pytest.approx(evaluated, rel=1e-12)
    assert query_loss(True, True) != pytest.approx(evaluated, rel=1e-6)  # meta.query_dropout (default): dropout on
    assert model.training  # the caller's mode is kept


def _episode(store: Path):
    by_speaker = {s: [e.id for e in entries] for s, entries in FeatureStore(store).speakers().items()}
    return EpisodeSampler(by_speaker, 2, 2, seed=0).meta_batch(0, 1)[0]


def test_meta_training_adapts_without_dropout_as_test_time_does(store):
    """The support forward of meta-training's inner loop and test-time SGD give the same fast weights from the same
    support batch and rates, with the model in train mode (as meta_train holds it) and dropout in the model."""
    config = _config(store, 1)
    assert config.model.dropout > 0
    data = RunData.load(config)
    torch.manual_seed(0)
    model = build_model(config, len(data.symbols), len(data.speakers)).train()
    support = aligned_batch(model, data.collator, _episode(store).support, torch.device("cpu"))
    groups = config.model.speaker_groups
    fast0 = {n: p.detach() for n, p in select_parameters(model, groups).items()}
    rates = [{n: torch.full_like(p, 0.5 - 0.2 * i) for n, p in fast0.items()} for i in range(2)]
    meta = support_adapt(model, support, rates, groups, steps=2).fast
    assert model.training  # the mode is the caller's again

    def test_time(training: bool) -> dict[str, torch.Tensor]:
        frozen = {n: p.detach() for n, p in model.named_parameters() if n not in fast0}
        model.train(training)
        adapter = SGDAdapter(support_loss_fn(model, frozen, [support], FastSpeech2Loss()), fast0, rates)
        adapter.advance(2)
        return adapter.params()

    evaluated, dropped = test_time(False), test_time(True)
    for name in fast0:
        torch.testing.assert_close(meta[name].detach(), evaluated[name], rtol=1e-5, atol=1e-7, msg=name)
    # Dropout moves the fast weights far more than that tolerance: an inner loop with it on would fail above.
    assert any(not torch.allclose(dropped[n], evaluated[n], rtol=1e-3, atol=1e-5) for n in fast0)


def test_all_mamlpp_options_train_and_adapt_and_evaluate_with_per_step_rates(store, tmp_path):
    config = _config(store, 3, "meta.multi_step_loss_steps=2", "meta.inner_lr_per_step=true",
                     "meta.first_order_steps=1", "train.val_every=3")
    result = meta_train(config, tmp_path / "run", **QUIET)
    assert result.step == 3 and result.skipped_steps == 0 and [v["step"] for v in result.val] == [0, 3]
    checkpoint = tmp_path / "run/checkpoint"
    assert json.loads((checkpoint / "meta.json").read_text())["extra"]["inner_lr"]["steps"] == 2
    rates = load_inner_lr(checkpoint)
    assert isinstance(rates, list) and len(rates) == 2
    assert not torch.equal(rates[0]["speaker.slot_norms"], rates[1]["speaker.slot_norms"])  # learned apart
    schedule = [rates[0], rates[1], rates[1]]  # three steps: the third reuses the last learned rate
    groups = list(config.model.speaker_groups)

    def meta_training_inner_loop(model, support) -> dict[str, torch.Tensor]:
        model.train()  # as meta_train holds the model
        try:
            return {n: t.detach() for n, t in support_adapt(model, support, schedule, groups, steps=3).fast.items()}
        finally:
            model.eval()

    # `metatts adapt` (the API): the same fast weights as meta-training's inner loop on the same clips.
    tts = load(checkpoint, device="cpu", vocoder="griffinlim")
    entries = FeatureStore(store).entries[:3]
    voice = tts.adapt([e.audio_path for e in entries], [e.text for e in entries], steps=3)
    assert voice.info["lr"].startswith("learned per-step for 2 steps")
    support = voice.clips.batch()
    expected = meta_training_inner_loop(tts.model, support.with_durations(tts.model.alignment(support).durations))
    for name, value in expected.items():
        torch.testing.assert_close(voice.params[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # `metatts evaluate`'s meta method, advancing along a grid in pieces.
    ev = load_for_store(checkpoint, FeatureStore(store))
    context = EvalContext(models={"meta": ev}, groups=groups, device=torch.device("cpu"), real=None, encoder=None,
                          splits=None, shots=2, queries=2, out_dir=tmp_path)
    episode = _episode(store)
    adapter = MetaMethod(context).adapter(episode)
    adapter.advance(1)
    adapter.advance(2)
    expected = meta_training_inner_loop(ev.model, aligned_batch(ev.model, ev.collator, episode.support,
                                                                torch.device("cpu")))
    for name, value in expected.items():
        torch.testing.assert_close(adapter.params()[name], value, rtol=1e-4, atol=1e-6, msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    meta_train(_config(Path(store), 3, "train.checkpoint_every=3"), out, **QUIET)


@pytest.mark.slow
def test_two_gloo_ranks_reach_the_same_parameters_as_one_process(store, tmp_path):
    meta_train(_config(store, 3, "train.checkpoint_every=3"), tmp_path / "one", **QUIET)
    mp.spawn(_rank, args=(2, _free_port(), str(store), str(tmp_path / "two")), nprocs=2, join=True)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    # Bitwise: each task has the same dropout seed on any rank, and a sum of two gradients does not depend on order.
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=0, msg=name)
    records = [json.loads(line) for line in (tmp_path / "two/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "meta"] == [1, 2, 3]  # rank 0 alone logs
