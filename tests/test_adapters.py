"""Low-rank adapters (the ``adapters`` group): they start at the shared model, only they move when they are the
fast weights, plain training leaves them at zero effect, and a voice pack of them round-trips and is refused by a
checkpoint that has none."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from metatts.adapt.voicepack import VoicePackError, check_fits
from metatts.api import load
from metatts.config import config_from_dict
from metatts.model import FastSpeech2Loss, select_parameters
from metatts.model.acoustic import ADAPTER_MARK, AcousticModel
from metatts.model.batch import NEW_SPEAKER
from metatts.train.supervised import train
from test_model import N_MELS, N_SYMBOLS, make_batch, small_config
from tiny import TEXTS, TINY_MODEL, synthesize_corpus, tiny_store

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(progress=False, log=lambda *_: None)


def _model(rank: int, seed: int = 0) -> AcousticModel:
    torch.manual_seed(seed)
    return AcousticModel(small_config(adapter_rank=rank), N_SYMBOLS, N_MELS)


def test_adapters_are_their_own_group_inside_the_decoder():
    model = _model(3)
    groups = model.parameter_groups()
    names = groups["adapters"]
    # 2 decoder blocks x (qkv, out, conv1, conv2) x (A, B)
    assert len(names) == 2 * 4 * 2
    assert all(ADAPTER_MARK in n and n.startswith("decoder.") for n in names)
    assert not any(ADAPTER_MARK in n for g, members in groups.items() if g != "adapters" for n in members)
    assert _model(0).parameter_groups()["adapters"] == []
    a = dict(model.named_parameters())["decoder.blocks.0.feed_forward.conv1_adapter.lora_a"]
    assert a.shape == (3, 32, 3)  # rank x hidden x the convolution's kernel


def test_adapters_start_at_the_shared_model():
    plain, adapted = _model(0), _model(4, seed=1)
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(ADAPTER_MARK in n for n in missing)
    batch = make_batch()
    plain.eval(), adapted.eval()
    torch.testing.assert_close(adapted(batch).mel, plain(batch).mel, rtol=0, atol=1e-6)


def test_as_fast_weights_only_adapters_move_and_b_moves_first():
    model = _model(2)
    model.eval()
    batch = make_batch(speakers=(NEW_SPEAKER,) * 3, with_durations=True)
    loss_fn = FastSpeech2Loss()
    fast = {n: p.detach().clone().requires_grad_() for n, p in select_parameters(model, ["adapters"]).items()}
    base = {n: p.detach() for n, p in model.named_parameters() if n not in fast}

    def loss(params):
        return loss_fn(functional_call(model, {**base, **params}, (batch,)), batch).total

    grads = dict(zip(fast, torch.autograd.grad(loss(fast), list(fast.values()))))
    # B = 0: the first gradient reaches only B (A's gradient is B^T times something), as in LoRA.
    assert all(g.abs().max() > 0 for n, g in grads.items() if n.endswith("lora_b"))
    assert all(g.abs().max() == 0 for n, g in grads.items() if n.endswith("lora_a"))
    stepped = {n: p - 0.5 * grads[n] for n, p in fast.items()}
    assert loss(stepped) < loss(fast)
    second = torch.autograd.grad(loss(stepped), [stepped[n] for n in stepped if n.endswith("lora_a")])
    assert any(g.abs().max() > 0 for g in second)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny checkpoints trained 10 steps on 2 espeak voices, one with rank-2 decoder adapters; clips of a
    third voice to adapt to."""
    root = tmp_path_factory.mktemp("adapters")
    store = tiny_store(root, ("m1", "f2"), TEXTS[:4])
    synthesize_corpus(root / "clips", ("m3",), TEXTS[:3])
    common = [f"data.features={store}", "train.steps=10", "train.val_every=100", *TINY_MODEL]
    train(config_from_dict({}, [*common, "model.adapter_rank=2"]), root / "lora", **QUIET)
    train(config_from_dict({}, common), root / "plain", **QUIET)
    return {"lora": root / "lora" / "checkpoint", "plain": root / "plain" / "checkpoint", "clips": root / "clips"}


@pytest.mark.slow
def test_plain_training_leaves_adapters_at_zero_effect(runs):
    tts = load(runs["lora"], device="cpu", vocoder="griffinlim")
    b = [p for n, p in tts.model.named_parameters() if n.endswith("lora_b")]
    assert b and all(torch.count_nonzero(p) == 0 for p in b)
    trained = dict(tts.model.named_parameters())["decoder.blocks.0.feed_forward.conv1.weight"]
    fresh = AcousticModel(tts.model.config, len(tts.symbols), 80)
    assert not torch.equal(trained, dict(fresh.named_parameters())["decoder.blocks.0.feed_forward.conv1.weight"])


@pytest.mark.slow
def test_adapter_pack_round_trips_and_is_refused_without_adapters(runs, tmp_path):
    tts = load(runs["lora"], device="cpu", vocoder="griffinlim")
    voice = tts.adapt(runs["clips"] / "m3", steps=5, groups=["speaker_embedding", "adapters"], lr=0.1)
    assert set(voice.pack.params) == {"speaker.slot_embedding", *tts.model.parameter_groups()["adapters"]}
    assert any(torch.count_nonzero(t) for n, t in voice.pack.params.items() if n.endswith("lora_b"))
    path = voice.save(tmp_path / "m3.safetensors")
    direct = tts.mels("Ships sail at dawn.", voice=voice)[1][0]
    from_file = load(runs["lora"], device="cpu", vocoder="griffinlim").mels("Ships sail at dawn.", voice=path)[1][0]
    torch.testing.assert_close(from_file, direct)
    initial = tts.mels("Ships sail at dawn.")[1][0]
    assert direct.shape != initial.shape or not torch.allclose(direct, initial)
    plain = load(runs["plain"], device="cpu", vocoder="griffinlim")
    with pytest.raises(VoicePackError):
        plain.mels("Ships sail at dawn.", voice=path)
    with pytest.raises(VoicePackError, match="lora"):  # and not only for its weights hash: no place for the tensors
        check_fits(voice.pack.params, plain.model)
