"""Summaries the evaluation uses: NaN-aware means, spreads, and JSON-safe values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def spread(values: Sequence[float]) -> dict:
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not finite.size:
        return {"std": None, "min": None, "max": None, "n": 0}
    return {"std": float(finite.std()), "min": float(finite.min()), "max": float(finite.max()), "n": int(finite.size)}


def clean(value):
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers, tuples lists, keys strings."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
