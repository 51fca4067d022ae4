"""Figures: mel spectrograms side by side (matplotlib object API on an Agg canvas: no global backend switch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def plot_mels(mels: list[torch.Tensor | np.ndarray], titles: list[str], path: str | Path,
              hop_seconds: float | None = None, suptitle: str = "") -> Path:
    """One row per mel ([n_mels, T] log-mel), shared colour scale, time in seconds when ``hop_seconds`` is given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arrays = [np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float32) for m in mels]
    lo = min(np.percentile(a, 1) for a in arrays)
    hi = max(np.percentile(a, 99.5) for a in arrays)
    longest = max(a.shape[1] for a in arrays)
    fig = Figure(figsize=(max(6.0, longest / 50), 2.2 * len(arrays) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for row, (array, title) in enumerate(zip(arrays, titles), start=1):
        ax = fig.add_subplot(len(arrays), 1, row)
        extent = None
        if hop_seconds:
            extent = (0, array.shape[1] * hop_seconds, 0, array.shape[0])
        ax.imshow(array, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma", extent=extent,
                  interpolation="nearest")
        ax.set_xlim(0, longest * (hop_seconds or 1))
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel band")
    ax.set_xlabel("seconds" if hop_seconds else "frame")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
