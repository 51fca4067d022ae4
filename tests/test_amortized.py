"""The amortized start (``meta.amortized_start``): a reference encoder over the support clips predicts where the
inner loop starts. A fresh one predicts φ0 exactly, it learns from meta-gradients (second and first order), it sees
the support and never the query, and a meta checkpoint with it adapts at 0 steps to its prediction (zero-shot), in
``metatts adapt`` and in the evaluation's ``meta`` method, into a voice pack that holds no encoder tensor. A
checkpoint without one adapts from φ0 as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metatts.adapt.start import starting_params
from metatts.api import load
from metatts.checkpoints import build_model, load_for_store
from metatts.config import config_from_dict
from metatts.episodes.collate import aligned_batch
from metatts.episodes.sampler import EpisodeSampler
from metatts.evaluation.methods import EvalContext, MetaMethod
from metatts.features.store import FeatureStore
from metatts.meta import step as meta_step_module
from metatts.meta.outer_loop import meta_train
from metatts.meta.step import MetaStepSettings, Task, meta_step, task_loss, task_objective
from metatts.model.acoustic import SPEAKER_GROUPS, AcousticModel, select_parameters
from metatts.model.batch import NEW_SPEAKER
from metatts.model.losses import FastSpeech2Loss
from metatts.model.reference import ReferenceEncoder
from metatts.train.common import RunData
from metatts.train.supervised import train
from test_model import N_MELS, N_SYMBOLS, make_batch, small_config
from tiny import TEXTS, TINY_MODEL, tiny_checkpoint, tiny_store

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(progress=False, log=lambda *_: None)
SLOT = ("speaker.slot_embedding", "speaker.slot_norms")
AMORTIZED = ["meta.amortized_start=true", "meta.reference_channels=32"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """3 espeak voices x 5 sentences, all meta-train speakers."""
    return tiny_store(tmp_path_factory.mktemp("amortized"), ("m1", "f2", "m3"), TEXTS)


def _config(store: Path, *extra: str):
    return config_from_dict({}, [f"data.features={store}", *TINY_MODEL, "meta.shots=2", "meta.queries=2",
                                 "meta.meta_batch=2", "meta.inner_steps=2", "meta.val_tasks=0", "meta.warmup_steps=1",
                                 "meta.outer_lr=3e-3", "train.threads=1", "train.log_every=1", "train.val_every=1000",
                                 "train.checkpoint_every=1000", "train.batch_size=4", *extra])


def _prediction(encoder: ReferenceEncoder, slot: dict[str, torch.Tensor], mels, mel_lengths) -> dict:
    """φ0 + Δ computed by hand from one padded batch of the clips (the code under test may use length buckets)."""
    with torch.no_grad():
        offsets = encoder.offsets(encoder.embed(mels, mel_lengths).mean(dim=0))
    return {n: slot[n].detach() + offsets[n] for n in SLOT}


def _episode_task(config, model, speaker_index: int = 0, seed: int = 0) -> Task:
    data = RunData.load(config)
    by_speaker = {s: [e.id for e in entries] for s, entries in data.store.speakers().items() if s in data.speakers}
    episode = EpisodeSampler(by_speaker, 2, 2, seed=seed).episode(sorted(by_speaker)[speaker_index], 0)
    support, query = (data.collator(list(ids), new_speaker=True) for ids in (episode.support, episode.query))
    return Task(support=support, query=query, seed=seed, name=episode.speaker)


def _model(config) -> AcousticModel:
    data = RunData.load(config)
    torch.manual_seed(0)
    return build_model(config, len(data.symbols), len(data.speakers))


# ------------------------------------------------------------------------------------------------ the encoder
def test_a_fresh_encoder_predicts_exactly_phi0_and_ignores_padding():
    torch.manual_seed(0)
    model = AcousticModel(small_config(), N_SYMBOLS, N_MELS, reference_channels=16)
    assert model.parameter_groups()["reference_encoder"] == [n for n, _ in model.named_parameters()
                                                             if n.startswith("reference_encoder.")]
    batch = make_batch(speakers=(NEW_SPEAKER,) * 3)
    start = starting_params(model, SPEAKER_GROUPS, batch)
    phi0 = select_parameters(model, SPEAKER_GROUPS)
    assert start.keys() == phi0.keys() == set(SLOT)
    assert all(torch.equal(start[n], phi0[n]) for n in SLOT)  # zero head: exactly φ0, no regression at init
    assert all(start[n].requires_grad for n in SLOT)  # and still on the tape for the outer loss
    # A clip's embedding does not depend on how much padding follows it, so length buckets = one padded batch.
    encoder = model.reference_encoder
    alone = encoder.embed(batch.mels[2:, :, :int(batch.mel_lengths[2])], batch.mel_lengths[2:])
    torch.testing.assert_close(encoder.embed(batch.mels, batch.mel_lengths)[2:], alone)


def test_the_encoder_receives_meta_gradients_second_and_first_order(store):
    config = _config(store, *AMORTIZED)
    grads = {}
    for first_order in (False, True):
        model = _model(config)
        task = _episode_task(config, model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        settings = MetaStepSettings(groups=list(SPEAKER_GROUPS), inner_steps=2, first_order=first_order)
        encoder = dict(model.reference_encoder.named_parameters())
        assert meta_step(model, [task], optimizer, settings).applied
        # The zero head is what the outer loss first moves; the layers behind it follow once it is non-zero.
        assert encoder["head.weight"].grad.abs().sum() > 0 and encoder["head.bias"].grad.abs().sum() > 0
        grads[first_order] = encoder["head.weight"].grad.clone()
        assert meta_step(model, [task], optimizer, settings).applied
        for name, p in encoder.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, (first_order, name)
    # The second-order terms reach the encoder too: the two meta-gradients differ.
    assert not torch.allclose(grads[False], grads[True])


def test_the_encoder_reads_the_support_and_never_the_query(store, monkeypatch):
    config = _config(store, *AMORTIZED)
    model = _model(config)
    with torch.no_grad():
        model.reference_encoder.head.weight.normal_(0, 0.1)  # a trained-looking head: the start moves with input
    seen, starts = [], []
    real_embed, real_start = ReferenceEncoder.embed, meta_step_module.starting_params

    def spy_embed(self, mels, mel_lengths):
        seen.append((mels, mel_lengths))
        return real_embed(self, mels, mel_lengths)

    def spy_start(*args, **kwargs):
        starts.append({n: t.detach().clone() for n, t in real_start(*args, **kwargs).items()})
        return starts[-1]

    monkeypatch.setattr(ReferenceEncoder, "embed", spy_embed)
    monkeypatch.setattr(meta_step_module, "starting_params", spy_start)
    task = _episode_task(config, model, seed=0)
    other = _episode_task(config, model, speaker_index=1, seed=0)  # another speaker's query
    settings = MetaStepSettings(groups=list(SPEAKER_GROUPS), inner_steps=1)
    model.eval()
    objectives = [task_objective(model, Task(task.support, query), settings, 0.1, FastSpeech2Loss())[0]
                  for query in (task.query, other.query)]
    assert len(seen) == 2 and len(starts) == 2
    for mels, lengths in seen:  # exactly the support clips, each time
        assert torch.equal(mels, task.support.mels) and torch.equal(lengths, task.support.mel_lengths)
    assert all(torch.equal(starts[0][n], starts[1][n]) for n in SLOT)  # another query: the same start
    assert not torch.equal(starts[0]["speaker.slot_norms"], model.speaker.slot_norms.detach())
    assert not torch.equal(objectives[0], objectives[1])  # the query did change


def test_the_start_loss_is_the_zero_shot_query_loss_and_trains_the_encoder_without_the_inner_loop(store):
    """``meta.start_loss_weight``: L_task gains w_0 L_query(φ_start), and the encoder's meta-gradient then has a term
    that does not pass through the inner steps (without it, the start is only trained to be a good place to adapt
    from, and the zero-shot voice drifted in meta-training)."""
    config = _config(store, *AMORTIZED)
    model = _model(config).eval()  # no dropout: the three losses below are one deterministic function
    with torch.no_grad():
        model.reference_encoder.head.weight.normal_(0, 0.1)
    task = _episode_task(config, model)
    support = task.support.with_durations(model.alignment(task.support).durations)
    query = task.query.with_durations(model.alignment(task.query).durations)
    groups = list(SPEAKER_GROUPS)

    def total(steps: int, weight: float) -> torch.Tensor:
        return task_loss(model, support, query, 0.1, groups, steps=steps, start_weight=weight).total

    plain, zero_shot, both = total(2, 0.0), total(0, 0.0), total(2, 0.5)
    torch.testing.assert_close(both, plain + 0.5 * zero_shot)
    head = model.reference_encoder.head.weight
    grad_plain, = torch.autograd.grad(plain, head)
    grad_both, = torch.autograd.grad(total(2, 0.5), head)
    grad_zero, = torch.autograd.grad(zero_shot, head)
    torch.testing.assert_close(grad_both, grad_plain + 0.5 * grad_zero)
    assert grad_zero.abs().sum() > 0
    with pytest.raises(ValueError, match="start_weight"):
        total(1, -1.0)


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def meta_run(store, tmp_path_factory) -> Path:
    """A plain ``metatts train`` checkpoint (no encoder), meta-trained 3 steps with the amortized start from it."""
    root = tmp_path_factory.mktemp("runs")
    train(_config(store, "train.steps=1"), root / "sup", **QUIET)
    result = meta_train(_config(store, "meta.steps=3", *AMORTIZED), root / "meta",
                        init_from=root / "sup/checkpoint", **QUIET)
    assert result.step == 3 and result.skipped_steps == 0
    return root / "meta/checkpoint"


def test_meta_training_saves_the_encoder_and_adapt_at_zero_steps_is_its_prediction(store, meta_run, tmp_path):
    weights = load_file(str(meta_run / "model.safetensors"))
    assert any(n.startswith("reference_encoder.") for n in weights)  # started fresh from the train checkpoint
    assert torch.count_nonzero(weights["reference_encoder.head.weight"]) > 0  # and meta-training moved it
    tts = load(meta_run, device="cpu", vocoder="griffinlim")
    entries = [e for e in FeatureStore(store).entries if e.speaker == "m3"][:3]
    clips, texts = [e.audio_path for e in entries], [e.text for e in entries]
    voice = tts.adapt(clips, texts, steps=0)
    batch = voice.clips.batch(list(range(len(voice.clips.clips))))
    expected = _prediction(tts.model.reference_encoder, select_parameters(tts.model, SPEAKER_GROUPS), batch.mels,
                           batch.mel_lengths)
    assert set(voice.pack.params) == set(SLOT)
    for name in SLOT:
        torch.testing.assert_close(voice.pack.params[name], expected[name], rtol=1e-5, atol=1e-6)
    slot_norms = tts.model.speaker.slot_norms.detach()
    assert not torch.allclose(voice.pack.params["speaker.slot_norms"], slot_norms)  # zero-shot: not φ0
    # The inner loop refines from there.
    refined = tts.adapt(clips, texts, steps=2)
    assert not torch.equal(refined.pack.params["speaker.slot_norms"], voice.pack.params["speaker.slot_norms"])
    # The pack holds the adapted speaker tensors only, and round-trips.
    path = refined.save(tmp_path / "m3.safetensors")
    assert set(load_file(str(path))) == set(SLOT)
    direct = tts.mels("Ships sail at dawn.", voice=refined)[1][0]
    from_file = load(meta_run, device="cpu", vocoder="griffinlim").mels("Ships sail at dawn.", voice=path)[1][0]
    torch.testing.assert_close(from_file, direct)


def test_the_evaluations_meta_method_starts_at_the_prediction(store, meta_run, tmp_path):
    ev = load_for_store(meta_run, FeatureStore(store))
    by_speaker = {s: [e.id for e in entries] for s, entries in ev.collator.store.speakers().items()}
    episode = EpisodeSampler(by_speaker, 2, 2, seed=0).episode("m3", 0)
    context = EvalContext(models={"meta": ev}, groups=list(SPEAKER_GROUPS), device=torch.device("cpu"), real=None,
                          encoder=None, splits=None, shots=2, queries=2, out_dir=tmp_path)
    start = MetaMethod(context).adapter(episode).params()  # 0 steps
    support = aligned_batch(ev.model, ev.collator, list(episode.support), torch.device("cpu"))
    expected = _prediction(ev.model.reference_encoder, select_parameters(ev.model, SPEAKER_GROUPS), support.mels,
                           support.mel_lengths)
    for name in SLOT:
        torch.testing.assert_close(start[name], expected[name], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(start["speaker.slot_norms"], ev.model.speaker.slot_norms.detach())


def test_a_checkpoint_without_an_encoder_adapts_from_phi0(store, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "plain")
    tts = load(checkpoint, device="cpu", vocoder="griffinlim")
    assert tts.model.reference_encoder is None and tts.model.parameter_groups()["reference_encoder"] == []
    entries = [e for e in FeatureStore(store).entries if e.speaker == "m3"][:2]
    voice = tts.adapt([e.audio_path for e in entries], [e.text for e in entries], steps=0)
    phi0 = select_parameters(tts.model, SPEAKER_GROUPS)
    assert set(voice.pack.params) == set(SLOT)
    assert all(torch.equal(voice.pack.params[n], phi0[n].detach()) for n in SLOT)
