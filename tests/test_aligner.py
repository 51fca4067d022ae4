"""Monotonic alignment search, the beta-binomial prior, the forward-sum / bin losses and the aligner itself."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from metatts.align import (
    Aligner,
    AlignerConfig,
    AlignmentOutput,
    beta_binomial_log_prior,
    bin_loss,
    durations_to_attention,
    forward_sum_loss,
    mas,
    mas_batch,
    plot_alignment,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_force(log_probs: np.ndarray) -> tuple[float, np.ndarray]:
    """Best monotonic path by enumerating every way to split T frames into L non-empty runs."""
    frames, phonemes = log_probs.shape
    best, best_d = -np.inf, None
    for cuts in itertools.combinations(range(1, frames), phonemes - 1):
        edges = (0,) + cuts + (frames,)
        score = sum(log_probs[edges[j]:edges[j + 1], j].sum() for j in range(phonemes))
        if score > best:
            best, best_d = score, np.diff(edges)
    return best, best_d


def _path_score(log_probs: np.ndarray, durations: np.ndarray) -> float:
    edges = np.concatenate([[0], np.cumsum(durations)])
    return sum(log_probs[edges[j]:edges[j + 1], j].sum() for j in range(len(durations)))


def test_mas_finds_the_best_path_like_brute_force():
    rng = np.random.default_rng(0)
    for frames, phonemes in [(1, 1), (5, 1), (5, 5), (7, 3), (9, 4), (10, 6)]:
        for _ in range(5):
            lp = rng.normal(size=(frames, phonemes)).astype(np.float32)
            best, _ = _brute_force(lp)
            durations = mas(lp)
            assert durations.sum() == frames and (durations >= 1).all()
            assert _path_score(lp, durations) == pytest.approx(best, abs=1e-4)


def test_mas_recovers_known_durations_from_a_crafted_matrix():
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 9, size=40)
    frames = int(truth.sum())
    owner = np.repeat(np.arange(40), truth)
    lp = np.full((frames, 40), -8.0) + rng.normal(scale=0.5, size=(frames, 40))
    lp[np.arange(frames), owner] = -0.1
    np.testing.assert_array_equal(mas(lp), truth)


@pytest.mark.parametrize("frames,phonemes", [(3, 3), (50, 7), (800, 200), (2, 5), (0, 3)])
def test_mas_durations_sum_to_frames_and_cover_every_phoneme(frames, phonemes):
    lp = np.random.default_rng(2).normal(size=(frames, phonemes))
    durations = mas(lp)
    assert durations.shape == (phonemes,) and durations.sum() == frames
    if frames >= phonemes:
        assert (durations >= 1).all()
    else:  # impossible to give every phoneme a frame: spread evenly instead
        assert durations.max() <= 1


def test_mas_is_fast():
    lp = np.random.default_rng(3).normal(size=(800, 200)).astype(np.float32)
    mas(lp)  # compile (or load the cached compilation)
    start = time.perf_counter()
    for _ in range(5):
        mas(lp)
    assert (time.perf_counter() - start) / 5 < 0.02  # ~1 ms on one core; generous for a shared machine


def test_mas_batch_respects_lengths():
    torch.manual_seed(0)
    lp = torch.randn(3, 30, 8)
    text, mel = torch.tensor([8, 5, 1]), torch.tensor([30, 12, 4])
    durations = mas_batch(lp, text, mel)
    assert durations.dtype == torch.long
    assert durations.sum(1).tolist() == mel.tolist()
    assert (durations[1, 5:] == 0).all() and (durations[2, 1:] == 0).all()
    np.testing.assert_array_equal(durations[1, :5].numpy(), mas(lp[1, :12, :5].numpy()))


def test_beta_binomial_prior_is_a_distribution_along_the_diagonal():
    text, mel = torch.tensor([6, 4]), torch.tensor([30, 10])
    log_prior = beta_binomial_log_prior(text, mel, 30, 6)
    p = log_prior[0].exp()
    assert torch.allclose(p.sum(-1), torch.ones(30), atol=1e-5)  # floor adds ~6e-8 per cell
    peaks = p.argmax(-1)
    assert peaks[0] == 0 and peaks[-1] == 5 and (peaks.diff() >= 0).all()
    assert torch.allclose(log_prior[1, :10, :4].exp().sum(-1), torch.ones(10), atol=1e-5)
    assert (log_prior[1, 10:] == 0).all() and (log_prior[1, :, 4:] == 0).all()  # masked region left at 0


def _aligner_inputs(batch=3, n_symbols=12, n_mels=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.tensor([7, 5, 3])[:batch]
    durations = torch.zeros(batch, 7, dtype=torch.long)
    for b in range(batch):
        durations[b, : text[b]] = torch.randint(1, 5, (int(text[b]),), generator=g)
    mel = durations.sum(1)
    phonemes = torch.randint(1, n_symbols, (batch, 7), generator=g) * (torch.arange(7) < text[:, None])
    mels = torch.randn(batch, n_mels, int(mel.max()), generator=g)
    return phonemes, text, mels, mel


def test_aligner_outputs_are_masked_and_padding_invariant():
    torch.manual_seed(0)
    aligner = Aligner(12, 10, AlignerConfig(embed_dim=16, channels=8)).eval()
    phonemes, text, mels, mel = _aligner_inputs()
    out = aligner(phonemes, text, mels, mel)
    assert out.soft.shape == (3, int(mel.max()), 7)
    for b in range(3):
        t, l = int(mel[b]), int(text[b])
        assert torch.allclose(out.soft[b, :t, :l].sum(-1), torch.ones(t), atol=1e-5)
        assert (out.soft[b, t:] == 0).all() and (out.soft[b, :, l:] == 0).all()
        alone = aligner(phonemes[b:b + 1, :l], text[b:b + 1], mels[b:b + 1, :, :t], mel[b:b + 1])
        assert torch.allclose(alone.log_probs[0], out.log_probs[b, :t, :l], atol=1e-4)
        assert torch.equal(alone.durations[0], out.durations[b, :l])
    assert out.durations.sum(1).tolist() == mel.tolist()


def test_forward_sum_loss_batched_equals_per_utterance_and_has_finite_gradients():
    torch.manual_seed(0)
    aligner = Aligner(12, 10, AlignerConfig(embed_dim=16, channels=8))
    phonemes, text, mels, mel = _aligner_inputs()
    out = aligner(phonemes, text, mels, mel)
    loss = forward_sum_loss(out)
    singles = []
    for b in range(3):
        t, l = int(mel[b]), int(text[b])
        single = AlignmentOutput(out.log_probs[b:b + 1, :t, :l], out.soft[b:b + 1, :t, :l],
                                 out.durations[b:b + 1, :l], text[b:b + 1], mel[b:b + 1])
        singles.append(forward_sum_loss(single))
    assert torch.allclose(loss, torch.stack(singles).mean(), atol=1e-5)
    loss.backward()
    grads = [p.grad for p in aligner.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_forward_sum_loss_prefers_the_diagonal():
    text, mel = torch.tensor([4]), torch.tensor([12])
    durations = torch.tensor([[3, 3, 3, 3]])
    hard = torch.from_numpy(durations_to_attention(durations[0]))[None]
    good = torch.log(hard * 0.97 + 0.01)
    bad = torch.log(hard.flip(-1) * 0.97 + 0.01)
    loss = [forward_sum_loss(AlignmentOutput(lp, lp.exp(), durations, text, mel)) for lp in (good, bad)]
    assert loss[0] < loss[1]
    # The bin loss is small when the soft alignment sits on the hard path and large when it does not.
    assert bin_loss(AlignmentOutput(good, good.exp(), durations, text, mel)) < 0.1
    assert bin_loss(AlignmentOutput(bad, bad.exp(), durations, text, mel)) > 2


def test_aligner_learns_known_durations_on_synthetic_speech():
    """Frames are noisy copies of a per-symbol vector, repeated for known durations: after training with the
    forward-sum loss, MAS must put (nearly) every phoneme boundary within a frame of the truth."""
    g = torch.Generator().manual_seed(2)
    n_symbols, n_mels, batch, length = 16, 12, 16, 10
    sounds = torch.randn(n_symbols, n_mels, generator=g) * 2
    phonemes = torch.zeros(batch, length, dtype=torch.long)
    text = torch.randint(6, length + 1, (batch,), generator=g)
    durations = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        seq = [int(torch.randint(1, n_symbols, (1,), generator=g))]
        while len(seq) < text[b]:  # no symbol twice in a row: the boundary would be unobservable
            s = int(torch.randint(1, n_symbols, (1,), generator=g))
            if s != seq[-1]:
                seq.append(s)
        phonemes[b, : text[b]] = torch.tensor(seq)
        durations[b, : text[b]] = torch.randint(1, 8, (int(text[b]),), generator=g)
    mel = durations.sum(1)
    mels = torch.zeros(batch, n_mels, int(mel.max()))
    for b in range(batch):
        frames = sounds[phonemes[b, : text[b]].repeat_interleave(durations[b, : text[b]])]
        mels[b, :, : mel[b]] = frames.T + 0.1 * torch.randn(n_mels, int(mel[b]), generator=g)
    valid = torch.arange(length)[None] < text[:, None]

    def boundary_errors(found):
        return (found.cumsum(1) - durations.cumsum(1)).abs()[valid].float()

    torch.manual_seed(2)
    aligner = Aligner(n_symbols, n_mels, AlignerConfig(embed_dim=32, channels=16))
    before = boundary_errors(aligner(phonemes, text, mels, mel).durations)  # the diagonal prior's guess
    optimizer = torch.optim.Adam(aligner.parameters(), lr=3e-3)
    for _ in range(120):
        loss = forward_sum_loss(aligner(phonemes, text, mels, mel))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    found = aligner(phonemes, text, mels, mel).durations
    assert found.sum(1).tolist() == mel.tolist() and (found[valid] >= 1).all()
    after = boundary_errors(found)
    assert (before <= 1).float().mean() < 0.7
    assert (after <= 1).float().mean() >= 0.95 and after.mean() < 0.6, (found, durations)


def test_plot_alignment_writes_a_png(tmp_path):
    soft = torch.softmax(torch.randn(40, 8), -1)
    path = plot_alignment(soft, tmp_path / "plots" / "align.png", durations=torch.full((8,), 5), title="test",
                          phonemes=list("abcdefgh"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
