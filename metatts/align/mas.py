"""Monotonic alignment search: the most likely monotonic path through a frame-by-phoneme log-probability matrix.

A path starts at (frame 0, phoneme 0), ends at (last frame, last phoneme) and at each frame either stays on the
phoneme or moves to the next one. Counting the frames spent on each phoneme gives integer durations that sum
exactly to the number of frames, with at least one frame per phoneme whenever there are at least as many frames
as phonemes. This is the Viterbi step of Glow-TTS / RAD-TTS ("One TTS Alignment to Rule Them All").

The dynamic programme is a double loop, so it is compiled with numba (a librosa dependency): a 200 x 800 matrix
takes well under a millisecond once compiled (the first call compiles, about a second).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor


@numba.njit(cache=True, nogil=True)
def _mas_durations(log_probs: np.ndarray, durations: np.ndarray) -> None:
    """Viterbi over ``log_probs`` [T, L] (T >= L >= 1); adds each phoneme's frame count into ``durations`` [L]."""
    frames, phonemes = log_probs.shape
    # Scores of the previous and current frame only (cache-friendly); the choices are kept for backtracking.
    previous = np.full(phonemes, -np.inf)
    current = np.full(phonemes, -np.inf)
    moved = np.zeros((frames, phonemes), dtype=np.bool_)  # True: reached (t, j) from (t - 1, j - 1)
    previous[0] = log_probs[0, 0]
    for t in range(1, frames):
        # Only cells reachable from the start and from which the last phoneme is still reachable.
        low = max(0, phonemes - (frames - t))
        high = min(phonemes - 1, t)
        for j in range(low, high + 1):
            stay = previous[j]
            move = previous[j - 1] if j > 0 else -np.inf
            if move >= stay:
                current[j] = move + log_probs[t, j]
                moved[t, j] = True
            else:
                current[j] = stay + log_probs[t, j]
        if low > 0:
            current[low - 1] = -np.inf  # fell out of the band: no longer a valid predecessor
        previous, current = current, previous
    j = phonemes - 1
    for t in range(frames - 1, -1, -1):
        durations[j] += 1
        if moved[t, j]:
            j -= 1


def even_durations(frames: int, phonemes: int) -> np.ndarray:
    """Durations spreading ``frames`` evenly over ``phonemes`` (sum exact; some zeros if frames < phonemes)."""
    edges = np.round(np.linspace(0, frames, phonemes + 1)).astype(np.int64)
    return np.diff(edges)


def mas(log_probs: np.ndarray) -> np.ndarray:
    """Durations [L] (int64) of the best monotonic path through ``log_probs`` [T, L].

    The sum is exactly T. With fewer frames than phonemes no path visits every phoneme; the frames are then
    spread evenly instead (some phonemes get zero frames), so callers always get a valid length regulation.
    """
    frames, phonemes = log_probs.shape
    if phonemes == 0:
        raise ValueError("monotonic alignment search needs at least one phoneme")
    if frames < phonemes:
        return even_durations(frames, phonemes)
    durations = np.zeros(phonemes, dtype=np.int64)
    _mas_durations(np.ascontiguousarray(log_probs, dtype=np.float32), durations)
    return durations


def mas_batch(log_probs: Tensor, phoneme_lengths: Tensor, mel_lengths: Tensor) -> Tensor:
    """Batched MAS: ``log_probs`` [B, T, L] -> durations [B, L] long on the input's device (zero at padding).

    Gradients do not flow (the path is discrete); the input is detached and moved to the CPU.
    """
    values = log_probs.detach().to("cpu", torch.float32).numpy()
    text = phoneme_lengths.tolist()
    frames = mel_lengths.tolist()
    out = np.zeros(values.shape[0:1] + values.shape[2:3], dtype=np.int64)
    for b in range(values.shape[0]):
        out[b, : text[b]] = mas(values[b, : frames[b], : text[b]])
    return torch.from_numpy(out).to(log_probs.device)
