"""The acoustic model: shapes and masks, padding invariance, parameter groups and the speaker budget, the
new-speaker slot under functional_call, second-order gradients, losses, inference and overfitting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call

from metatts.config.schema import ModelConfig
from metatts.model import (
    GROUPS,
    NEW_SPEAKER,
    SPEAKER_GROUPS,
    AcousticModel,
    Batch,
    FastSpeech2Loss,
    LossWeights,
    lengths_to_mask,
    preset_values,
    select_parameters,
)
from metatts.model.layers import LengthRegulator, frame_to_phoneme

N_SYMBOLS, N_MELS = 20, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**overrides) -> ModelConfig:
    values = dict(preset="custom", hidden=32, encoder_layers=1, decoder_layers=2, heads=2, conv_filter=64,
                  conv_kernel=3, predictor_filter=32, predictor_kernel=3, pitch_bins=16, energy_bins=16,
                  speaker_dim=8, dropout=0.0, postnet=False, max_speakers=4)
    values.update(overrides)
    return ModelConfig(**values)


def make_model(seed: int = 0, **overrides) -> AcousticModel:
    torch.manual_seed(seed)
    options = {k: overrides.pop(k) for k in ("condition_variance_adaptor", "new_speaker_prob") if k in overrides}
    return AcousticModel(small_config(**overrides), N_SYMBOLS, N_MELS, postnet_channels=16, **options)


def make_batch(seed: int = 0, phoneme_lengths=(9, 6, 3), frames_per_phoneme=(1, 5), speakers=(0, 1, NEW_SPEAKER),
               with_durations: bool = False, dtype=torch.float32) -> Batch:
    """A padded batch whose mels follow its durations (smooth per-phoneme spectra), so it is learnable."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(phoneme_lengths)
    b, length = len(phoneme_lengths), int(lengths.max())
    durations = torch.randint(*frames_per_phoneme, (b, length), generator=g) * lengths_to_mask(lengths, length)
    durations[durations.eq(0) & lengths_to_mask(lengths, length)] = 1
    phonemes = torch.randint(1, N_SYMBOLS, (b, length), generator=g) * lengths_to_mask(lengths, length)
    mel_lengths = durations.sum(1)
    frames = int(mel_lengths.max())
    mask = lengths_to_mask(mel_lengths, frames)
    sounds = torch.randn(N_SYMBOLS, N_MELS, generator=g, dtype=dtype)
    index = frame_to_phoneme(durations, frames)
    mels = sounds[phonemes.gather(1, index)].transpose(1, 2) * mask[:, None]
    pitch = torch.randn(b, frames, generator=g, dtype=dtype) * mask
    energy = torch.randn(b, frames, generator=g, dtype=dtype) * mask
    return Batch(phonemes=phonemes, phoneme_lengths=lengths, mels=mels, mel_lengths=mel_lengths, pitch=pitch,
                 energy=energy, speakers=torch.tensor(speakers), durations=durations if with_durations else None)


def unpadded(batch: Batch, i: int) -> Batch:
    """Utterance ``i`` of ``batch`` alone, cut to its own lengths."""
    length, frames = int(batch.phoneme_lengths[i]), int(batch.mel_lengths[i])
    return Batch(phonemes=batch.phonemes[i:i + 1, :length], phoneme_lengths=batch.phoneme_lengths[i:i + 1],
                 mels=batch.mels[i:i + 1, :, :frames], mel_lengths=batch.mel_lengths[i:i + 1],
                 pitch=batch.pitch[i:i + 1, :frames], energy=batch.energy[i:i + 1, :frames],
                 speakers=batch.speakers[i:i + 1],
                 durations=None if batch.durations is None else batch.durations[i:i + 1, :length])


# ----------------------------------------------------------------------------------------------- shapes and masks
def test_forward_shapes_masks_and_aligner_durations():
    model = make_model(postnet=True).train()
    batch = make_batch()
    out = model(batch)
    b, frames = batch.size, batch.mels.shape[-1]
    assert out.mel.shape == out.mel_postnet.shape == (b, N_MELS, frames)
    assert out.pitch.shape == out.energy.shape == (b, frames)
    assert out.log_durations.shape == batch.phonemes.shape
    # The aligner ran (no external durations): its MAS durations drive the model and sum to the mel lengths.
    assert out.alignment is not None and torch.equal(out.durations, out.alignment.durations)
    assert torch.equal(out.durations.sum(1), batch.mel_lengths) and torch.equal(out.mel_lengths, batch.mel_lengths)
    assert (out.durations[batch.phoneme_mask] >= 1).all() and (out.durations[~batch.phoneme_mask] == 0).all()
    assert torch.equal(out.mel_mask, batch.mel_mask)
    pad = ~batch.mel_mask
    assert (out.mel.transpose(1, 2)[pad] == 0).all() and (out.mel_postnet.transpose(1, 2)[pad] == 0).all()
    assert (out.pitch[pad] == 0).all() and (out.energy[pad] == 0).all()


def test_external_durations_are_used_and_checked():
    model = make_model()
    batch = make_batch(with_durations=True)
    out = model(batch)
    assert out.alignment is None and torch.equal(out.durations, batch.durations)
    wrong = batch.durations.clone()
    wrong[0, 0] += 1
    with pytest.raises(ValueError, match="sum to"):
        model(batch.with_durations(wrong))


@pytest.mark.parametrize("with_durations", [True, False])
def test_padding_does_not_change_unpadded_outputs(with_durations):
    model = make_model(postnet=True, condition_variance_adaptor=True).eval()
    batch = make_batch(with_durations=with_durations)
    with torch.no_grad():
        together = model(batch)
        for i in range(batch.size):
            alone = model(unpadded(batch, i))
            length, frames = int(batch.phoneme_lengths[i]), int(batch.mel_lengths[i])
            assert torch.equal(alone.durations[0], together.durations[i, :length])
            torch.testing.assert_close(alone.mel_postnet[0], together.mel_postnet[i, :, :frames], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(alone.pitch[0], together.pitch[i, :frames], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(alone.log_durations[0], together.log_durations[i, :length], atol=1e-5,
                                       rtol=1e-4)


def test_length_regulator_handles_zero_durations_and_padding():
    x = torch.arange(4, dtype=torch.float32)[None, :, None].repeat(2, 1, 1)  # state j = j
    durations = torch.tensor([[2, 0, 3, 1], [1, 2, 0, 0]])
    states, mask, progress = LengthRegulator()(x, durations, frames=7)
    assert states[0, :, 0].tolist() == [0, 0, 2, 2, 2, 3, 0]  # phoneme 1 owns no frame; frame 6 is padding
    assert states[1, :, 0].tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert mask.sum(1).tolist() == [6, 3]
    assert progress[0].tolist() == pytest.approx([0, 0.5, 0, 1 / 3, 2 / 3, 0, 0])


# ------------------------------------------------------------------------------------- parameter groups, budget
@pytest.mark.parametrize("postnet,conditioned", [(False, False), (True, True)])
def test_every_parameter_is_in_exactly_one_group(postnet, conditioned):
    model = make_model(postnet=postnet, condition_variance_adaptor=conditioned)
    groups = model.parameter_groups()
    assert tuple(groups) == GROUPS
    names = [n for members in groups.values() for n in members]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert groups["speaker_embedding"] == ["speaker.slot_embedding"]
    assert groups["speaker_norms"] == ["speaker.slot_norms"]
    assert sorted(groups["speaker_tables"]) == ["speaker.table_embedding", "speaker.table_norms"]
    assert bool(groups["postnet"]) == postnet


def test_select_parameters_by_group_and_pattern():
    model = make_model()
    fast = select_parameters(model, list(SPEAKER_GROUPS))
    assert list(fast) == ["speaker.slot_embedding", "speaker.slot_norms"]
    assert all(p is dict(model.named_parameters())[n] for n, p in fast.items())  # the live parameters
    emb_va = select_parameters(model, ["speaker_embedding", "variance_adaptor"])
    assert "speaker.slot_embedding" in emb_va and all(
        n == "speaker.slot_embedding" or n.startswith("variance_adaptor.") for n in emb_va)
    first_block = select_parameters(model, ["decoder.blocks.0.*"])
    assert first_block and all(n.startswith("decoder.blocks.0.") for n in first_block)
    with pytest.raises(ValueError, match="neither a parameter group"):
        select_parameters(model, ["speaker_embeddings"])


def test_paper_speaker_group_fits_in_32_kb():
    config = ModelConfig(**{**preset_values("paper"), "preset": "paper"})
    with torch.device("meta"):  # shapes only: no memory, no initialization time
        model = AcousticModel(config, n_symbols=100, n_mels=80)
    fast = select_parameters(model, config.speaker_groups)
    floats = sum(p.numel() for p in fast.values())
    assert floats == 256 + 6 * 2 * 2 * 256  # embedding + (gain, bias) of the decoder's 12 layer norms
    assert floats * 4 <= 32 * 1024
    with torch.device("meta"):
        conditioned = AcousticModel(config, n_symbols=100, n_mels=80, condition_variance_adaptor=True)
    assert sum(p.numel() for p in select_parameters(conditioned, SPEAKER_GROUPS).values()) == floats + 6 * 2 * 256


def test_presets():
    assert {k: v for k, v in dataclasses.asdict(ModelConfig()).items() if k in preset_values("tiny")} == \
        preset_values("tiny")
    ModelConfig(**preset_values("paper")).check()
    assert preset_values("custom") == {}
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_values("huge")


# ----------------------------------------------------------------------------------------- speakers and the slot
def test_functional_call_with_slot_fast_weights():
    model = make_model().eval()
    batch = dataclasses.replace(make_batch(with_durations=True), speakers=torch.full((3,), NEW_SPEAKER))
    params = dict(model.named_parameters())
    slot = select_parameters(model, SPEAKER_GROUPS)
    with torch.no_grad():
        reference = model(batch).mel
        same = functional_call(model, {**params, **{n: p.clone() for n, p in slot.items()}}, (batch,)).mel
        moved = {n: p + 0.5 * torch.randn_like(p) for n, p in slot.items()}
        changed = functional_call(model, {**params, **moved}, (batch,)).mel
    torch.testing.assert_close(same, reference, rtol=0, atol=0)
    assert (changed - reference).abs().max() > 1e-2
    # Table speakers do not see the slot.
    table_batch = dataclasses.replace(batch, speakers=torch.tensor([0, 1, 2]))
    with torch.no_grad():
        torch.testing.assert_close(functional_call(model, {**params, **moved}, (table_batch,)).mel,
                                   model(table_batch).mel, rtol=0, atol=0)


def test_training_routes_a_fraction_of_speakers_to_the_slot():
    model = make_model(new_speaker_prob=1.0).train()
    batch = make_batch(with_durations=True, speakers=(0, 1, 2))
    slot_batch = dataclasses.replace(batch, speakers=torch.full((3,), NEW_SPEAKER))
    torch.testing.assert_close(model(batch).mel, model(slot_batch).mel)
    model.speaker.new_speaker_prob = 0.0
    assert not torch.allclose(model(batch).mel, model(slot_batch).mel)
    model.speaker.new_speaker_prob = 1.0
    model.eval()  # never at evaluation: a table speaker keeps its own voice
    assert not torch.allclose(model(batch).mel, model(slot_batch).mel)


# ------------------------------------------------------------------------------------------- second order (MAML)
def _maml_query_loss(model, params, support, query, loss_fn, inner_lr=0.1, first_order=False):
    """One inner SGD step on the slot from the support batch, then the query loss with the adapted slot."""
    slot_names = [n for g in SPEAKER_GROUPS for n in model.parameter_groups()[g]]
    slot = {n: params[n] for n in slot_names}
    support_loss = loss_fn(functional_call(model, params, (support,)), support).total
    grads = torch.autograd.grad(support_loss, list(slot.values()), create_graph=not first_order)
    adapted = {n: p - inner_lr * g for (n, p), g in zip(slot.items(), grads)}
    return loss_fn(functional_call(model, {**params, **adapted}, (query,)), query).total


def _slot_batch(seed, **kwargs):
    batch = make_batch(seed, **kwargs)
    return dataclasses.replace(batch, speakers=torch.full((batch.size,), NEW_SPEAKER))


def test_second_order_meta_gradient_flows_through_the_whole_model():
    model = make_model(postnet=True, condition_variance_adaptor=True).train()
    loss_fn = FastSpeech2Loss(LossWeights(bin=1.0))
    support, query = _slot_batch(1), _slot_batch(2)  # no external durations: the aligner (and CTC) run as well
    params = dict(model.named_parameters())
    second = torch.autograd.grad(_maml_query_loss(model, params, support, query, loss_fn),
                                 list(params.values()), allow_unused=True)
    torch.manual_seed(0)
    first = torch.autograd.grad(_maml_query_loss(model, params, support, query, loss_fn, first_order=True),
                                list(params.values()), allow_unused=True)
    groups = model.parameter_groups()
    for name, g in zip(params, second):
        if name in groups["speaker_tables"]:
            continue  # slot batches never read the tables
        assert g is not None and torch.isfinite(g).all(), name
    grads = dict(zip(params, second))
    for group in ("decoder", "encoder", "variance_adaptor", "mel_head", "postnet", "aligner", *SPEAKER_GROUPS):
        assert sum(grads[n].abs().sum() for n in groups[group]) > 0, group
    # The second-order terms are really there: the decoder's meta-gradient differs from the first-order one.
    diff = sum((g2 - g1).abs().sum() for n, g2, g1 in zip(params, second, first) if n in groups["decoder"])
    assert diff > 1e-6


def test_second_order_gradient_matches_finite_differences():
    model = make_model(seed=3, hidden=8, conv_filter=8, predictor_filter=8, speaker_dim=4, pitch_bins=4,
                       energy_bins=4, decoder_layers=1).double().train()
    loss_fn = FastSpeech2Loss()
    kw = dict(phoneme_lengths=(4, 3), speakers=(0, 0), with_durations=True, dtype=torch.float64)
    support, query = _slot_batch(4, **kw), _slot_batch(5, **kw)
    support = dataclasses.replace(support, mels=support.mels.double(), pitch=support.pitch.double(),
                                  energy=support.energy.double())
    query = dataclasses.replace(query, mels=query.mels.double(), pitch=query.pitch.double(),
                                energy=query.energy.double())
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}

    def f(**replaced):
        return _maml_query_loss(model, {**params, **replaced}, support, query, loss_fn, inner_lr=0.5)

    checked = 0
    for name in ("decoder.blocks.0.feed_forward.conv2.weight", "mel_head.weight", "decoder.blocks.0.norm2.norm.weight",
                 "speaker.projection.weight"):
        (grad,) = torch.autograd.grad(f(), [params[name]])
        first_order_grad = torch.autograd.grad(
            _maml_query_loss(model, params, support, query, loss_fn, inner_lr=0.5, first_order=True), [params[name]])[0]
        index = (grad - first_order_grad).abs().argmax()  # the entry where second-order terms matter most
        eps = 1e-6
        with torch.no_grad():
            plus, minus = params[name].clone(), params[name].clone()
            plus.view(-1)[index] += eps
            minus.view(-1)[index] -= eps
        numeric = (f(**{name: plus}) - f(**{name: minus})) / (2 * eps)
        assert grad.view(-1)[index].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-8), name
        if (grad - first_order_grad).abs().max() > 1e-6:
            checked += 1
    assert checked >= 2  # at least two entries where the first-order approximation would be measurably wrong


# --------------------------------------------------------------------------------------------- losses, inference
def test_losses_ignore_padding():
    model = make_model(postnet=True)
    batch = make_batch(with_durations=True)
    loss_fn = FastSpeech2Loss()
    torch.manual_seed(0)
    out = model(batch)
    terms = loss_fn(out, batch)
    assert terms.forward_sum == 0 and terms.bin == 0  # no aligner when durations are external
    expected = sum(getattr(terms, n) * getattr(loss_fn.weights, n)
                   for n in ("mel", "postnet_mel", "duration", "pitch", "energy"))
    torch.testing.assert_close(terms.total, expected)
    pad = ~batch.mel_mask
    noisy = dataclasses.replace(batch, mels=batch.mels + 100 * pad[:, None], pitch=batch.pitch + 100 * pad,
                                energy=batch.energy - 100 * pad)
    torch.testing.assert_close(loss_fn(out, noisy).total, terms.total)
    assert set(terms.as_floats()) == {"total", "mel", "postnet_mel", "duration", "pitch", "energy",
                                      "forward_sum", "bin"}
    with pytest.raises(ValueError, match="teacher-forced"):
        loss_fn(model(batch, use_predicted_durations=True), batch)


def test_aligner_losses_are_part_of_the_total():
    model = make_model()
    batch = make_batch()
    terms = FastSpeech2Loss(LossWeights(bin=0.5))(model(batch), batch)
    assert terms.forward_sum > 0 and terms.bin > 0


def test_infer_and_alignment_helpers():
    model = make_model(postnet=True).train()
    batch = make_batch()
    synth = model.infer(batch.phonemes, batch.phoneme_lengths, batch.speakers)
    assert model.training  # mode restored
    assert torch.equal(synth.mel_lengths, synth.durations.sum(1))
    assert (synth.durations[batch.phoneme_mask] >= 1).all() and (synth.durations[~batch.phoneme_mask] == 0).all()
    assert synth.mels.shape == (3, N_MELS, int(synth.mel_lengths.max()))
    pad = ~lengths_to_mask(synth.mel_lengths, synth.mels.shape[-1])
    assert (synth.mels.transpose(1, 2)[pad] == 0).all()
    slow = model.infer(batch.phonemes, batch.phoneme_lengths, batch.speakers, duration_scale=3.0)
    assert (slow.mel_lengths >= synth.mel_lengths).all() and slow.mel_lengths.sum() > synth.mel_lengths.sum()
    capped = model.infer(batch.phonemes, batch.phoneme_lengths, batch.speakers, duration_scale=3.0, max_frames=5)
    assert capped.mels.shape[-1] == 5 and (capped.mel_lengths <= 5).all()
    shifted = model.infer(batch.phonemes, batch.phoneme_lengths, batch.speakers, pitch_shift=3.0)
    assert not torch.allclose(shifted.mels, synth.mels)

    alignment = model.alignment(batch)
    assert alignment.soft.shape == (3, batch.mels.shape[-1], batch.phonemes.shape[1])
    assert torch.equal(alignment.durations.sum(1), batch.mel_lengths) and not alignment.soft.requires_grad
    cached = model(batch.with_durations(alignment.durations))  # e.g. an inner loop reusing one MAS per episode
    assert cached.alignment is None and torch.equal(cached.durations, alignment.durations)


def test_overfitting_a_tiny_batch_halves_the_mel_loss():
    model = make_model().train()
    batch = make_batch(seed=7, phoneme_lengths=(8, 6), speakers=(0, 1))
    loss_fn = FastSpeech2Loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):  # typically -80% by then; all terms, aligner included, are trained together
        terms = loss_fn(model(batch), batch)
        first = terms if first is None else first
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    assert terms.mel < 0.5 * first.mel
    assert terms.duration < first.duration and terms.forward_sum < first.forward_sum
