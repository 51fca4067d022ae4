"""The d-vector baseline: a closed-form encoder in the spirit of Meta-TTS's d-vector one (rather than a TTS trained
with d-vector input). A ridge projection maps a speaker's mean Resemblyzer d-vector to its speaker-table row
(``table_embedding`` ++ ``table_norms``, the layout of the slot tensors). It is fitted on the baseline's training
speakers (their real utterances in the store), its λ chosen by the teacher-forced mel L1 of the held-out ``val``
speakers (leave-one-out on the training rows when there is none). At test time the support clips' mean d-vector
gives the slot tensors: no gradient step."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import Tensor
from torch.func import functional_call

from metatts.checkpoints import StoreModel
from metatts.episodes.collate import aligned_batch
from metatts.evaluation.errors import EvaluationError
from metatts.evaluation.metrics import mean_embedding
from metatts.evaluation.real_audio import RealAudio
from metatts.model.acoustic import select_parameters
from metatts.model.losses import FastSpeech2Loss

RIDGE_LAMBDAS = tuple(float(x) for x in np.logspace(-3, 2, 11))  # relative to the mean centred Gram diagonal


class DvectorError(EvaluationError):
    """The projection cannot be fitted (no speaker-table counterpart, too few training speakers)."""


@dataclass
class RidgeProjection:
    """y ≈ y_mean + (x − x_mean) W, fitted by ridge regression (``fit_ridge``)."""

    x_mean: np.ndarray  # [D]
    y_mean: np.ndarray  # [P]
    weight: np.ndarray  # [D, P]
    lam: float  # the absolute ridge penalty used

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.y_mean + (np.asarray(x, dtype=np.float64) - self.x_mean) @ self.weight


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> RidgeProjection:
    """Ridge regression with an unpenalized intercept: W = argmin ‖Yc − Xc W‖² + λ‖W‖² on centred data, solved on
    the smaller side (the dual (XcXcᵀ + λI)⁻¹ form when there are fewer rows than features)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"expected x [N, D] and y [N, P] with N >= 2, got {x.shape} and {y.shape}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    if n <= d:
        weight = xc.T @ np.linalg.lstsq(xc @ xc.T + lam * np.eye(n), yc, rcond=None)[0]
    else:
        weight = np.linalg.lstsq(xc.T @ xc + lam * np.eye(d), xc.T @ yc, rcond=None)[0]
    return RidgeProjection(x_mean, y_mean, weight, float(lam))


def ridge_scale(x: np.ndarray) -> float:
    """Mean squared norm of the centred rows: the relative λ grid is multiplied by it, so it suits any scale."""
    xc = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(axis=0)
    return float(np.mean(np.sum(xc * xc, axis=1))) or 1.0


def ridge_loo_error(x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """Mean squared leave-one-out error of ridge regression with penalty ``lam`` (refits N times; N is small)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    errors = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        errors.append(float(np.mean((fit_ridge(x[keep], y[keep], lam)(x[i]) - y[i]) ** 2)))
    return float(np.mean(errors))


@dataclass(frozen=True)
class SlotTensor:
    """A speaker-group tensor of the new-speaker slot and the speaker-table tensor whose rows have its structure."""

    slot: str  # e.g. speaker.slot_norms
    table: str  # e.g. speaker.table_norms
    shape: tuple[int, ...]  # of the slot tensor (= one table row)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def slot_layout(model: torch.nn.Module, groups: Sequence[str]) -> list[SlotTensor]:
    """Each speaker-group tensor that has a speaker-table counterpart, in the order of the projection's target
    vector: the table rows and the slot have the same structure (``metatts.model.speaker``)."""
    named = dict(model.named_parameters())
    layout = []
    for name, tensor in select_parameters(model, list(groups)).items():
        table = name.replace(".slot_", ".table_")
        if table != name and table in named and tuple(named[table].shape[1:]) == tuple(tensor.shape):
            layout.append(SlotTensor(name, table, tuple(tensor.shape)))
    return layout


@dataclass
class DvectorModel:
    """The fitted d-vector → slot projection and how it was chosen."""

    projection: RidgeProjection
    layout: list[SlotTensor]
    info: dict

    def params(self, dvector: np.ndarray, device: torch.device) -> dict[str, Tensor]:
        flat = torch.from_numpy(self.projection(dvector).astype(np.float32)).to(device)
        out, start = {}, 0
        for part in self.layout:
            out[part.slot] = flat[start:start + part.size].view(part.shape)
            start += part.size
        return out


@dataclass
class _FitData:
    """What the projection is fitted on: training speakers' utterances and held-out (support, query) splits."""

    train_ids: dict[str, list[str]]
    val: list[tuple[str, list[str], list[str]]]  # (speaker, support ids, query ids)
    skipped: dict[str, str]


def _fit_data(base: StoreModel, real: RealAudio, splits, shots: int, queries: int,
              max_utterances: int | None) -> _FitData:
    by_speaker = real.store.speakers()
    data = _FitData({}, [], {})
    for speaker in base.meta.speakers:
        ids = sorted(e.id for e in by_speaker.get(speaker, []))[:max_utterances]
        if ids:
            data.train_ids[speaker] = ids
        else:
            data.skipped[speaker] = "no utterance in the store"
    for speaker in sorted(splits.val):
        ids = sorted(e.id for e in by_speaker.get(speaker, []))
        if len(ids) >= 2:
            k = min(shots, len(ids) - 1)
            data.val.append((speaker, ids[:k], ids[k:k + queries]))
    return data


def _cached(cache: Path | None, key: str, layout: list[SlotTensor], log) -> DvectorModel | None:
    if cache is None or not (cache.with_suffix(".json").is_file() and cache.is_file()):
        return None
    info = json.loads(cache.with_suffix(".json").read_text())
    if info.get("key") != key:
        return None
    tensors = load_file(str(cache))
    log(f"d-vector projection: cached fit {cache} (λ = {info['lambda']:.3g}, {info['selection']})")
    return DvectorModel(RidgeProjection(tensors["x_mean"], tensors["y_mean"], tensors["weight"], info["lambda"]),
                        layout, info)


def _training_rows(base: StoreModel, real: RealAudio, data: _FitData,
                   layout: list[SlotTensor]) -> tuple[np.ndarray, np.ndarray]:
    """(mean d-vector per training speaker [N, 256], its speaker-table row [N, P])."""
    named = dict(base.model.named_parameters())
    x, y = [], []
    for speaker, ids in data.train_ids.items():
        try:
            x.append(mean_embedding(real.embeddings(ids, keep_waves=False)))
        except ValueError:
            data.skipped[speaker] = "no usable utterance for a d-vector"
            continue
        row = base.meta.speakers.index(speaker)
        y.append(torch.cat([named[p.table][row].detach().flatten().cpu() for p in layout]).double().numpy())
    real.save()
    return np.stack(x).astype(np.float64), np.stack(y)


def _select_lambda(base: StoreModel, real: RealAudio, data: _FitData, layout: list[SlotTensor], x: np.ndarray,
                   y: np.ndarray, device: torch.device) -> tuple[list[float], str]:
    """Score of each relative λ of ``RIDGE_LAMBDAS`` (lower is better) and how it was scored."""
    scale = ridge_scale(x)
    val_inputs = []
    for _, support, query in data.val:
        try:
            dvec = mean_embedding(real.embeddings(support, keep_waves=False))
        except ValueError:
            continue
        val_inputs.append((dvec, aligned_batch(base.model, base.collator, query, device)))
    if not val_inputs:
        return ([ridge_loo_error(x, y, rel * scale) for rel in RIDGE_LAMBDAS],
                "leave-one-out squared error on the training rows (no usable val speaker)")
    loss, scores = FastSpeech2Loss(), []
    for rel in RIDGE_LAMBDAS:
        candidate = DvectorModel(fit_ridge(x, y, rel * scale), layout, {})
        values = []
        for dvec, batch in val_inputs:
            with torch.no_grad():
                terms = loss(functional_call(base.model, candidate.params(dvec, device), (batch,)), batch)
            values.append(float(terms.postnet_mel if base.postnet else terms.mel))
        scores.append(float(np.mean(values)))
    return scores, f"teacher-forced mel L1 of {len(val_inputs)} held-out val speakers"


def fit_dvector_model(base: StoreModel, groups: Sequence[str], real: RealAudio, splits, *, shots: int, queries: int,
                      device: torch.device, cache: Path | None, max_utterances: int | None = None,
                      log: Callable[[str], None] = print) -> DvectorModel:
    """Fit the ridge projection (see the module docstring); reuse ``cache`` when it was fitted on the same inputs."""
    started = time.perf_counter()
    layout = slot_layout(base.model, groups)
    if not layout:
        raise DvectorError(f"speaker groups {', '.join(groups)} of {base.path} have no speaker-table counterpart "
                           f"for the d-vector projection to predict")
    data = _fit_data(base, real, splits, shots, queries, max_utterances)
    key = hashlib.sha256(json.dumps({"digest": base.digest, "groups": list(groups), "train": data.train_ids,
                                     "val": data.val, "lambdas": RIDGE_LAMBDAS}).encode()).hexdigest()[:16]
    cached = _cached(cache, key, layout, log)
    if cached is not None:
        return cached
    if len(data.train_ids) < 2:
        raise DvectorError(f"the d-vector projection needs at least 2 training speakers of {base.path} with "
                           f"utterances in {real.store.root}, found {len(data.train_ids)}")
    log(f"d-vector projection: embedding the real utterances of {len(data.train_ids)} training speakers")
    x, y = _training_rows(base, real, data, layout)
    scores, selection = _select_lambda(base, real, data, layout, x, y, device)
    best = int(np.argmin(scores))
    projection = fit_ridge(x, y, RIDGE_LAMBDAS[best] * ridge_scale(x))
    info = {"key": key, "lambda": projection.lam, "lambda_relative": RIDGE_LAMBDAS[best], "selection": selection,
            "lambda_grid_relative": list(RIDGE_LAMBDAS), "selection_scores": scores,
            "train_speakers": len(x), "train_utterances": sum(len(v) for v in data.train_ids.values()),
            "skipped_speakers": data.skipped, "val_speakers": [s for s, _, _ in data.val],
            "targets": [p.table for p in layout], "fit_seconds": time.perf_counter() - started,
            "checkpoint": str(base.path)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"x_mean": projection.x_mean, "y_mean": projection.y_mean, "weight": projection.weight},
                  str(cache))
        cache.with_suffix(".json").write_text(json.dumps(info, indent=1))
    log(f"d-vector projection: λ = {projection.lam:.3g} (relative {RIDGE_LAMBDAS[best]:.3g}) by {selection}; "
        f"{info['fit_seconds']:.1f} s")
    return DvectorModel(projection, layout, info)
