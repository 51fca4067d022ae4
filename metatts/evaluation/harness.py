"""`metatts evaluate`: every adaptation method on the same frozen episodes, scored per inner-step count.

    suite (tasks/*.yaml) ─ frozen_episodes ─▶ episodes: one held-out speaker, N support + Q query utterances
    per episode, per method:  φ from the support clips  ─▶  after each step count k of the grid:
        synthesize the Q query sentences (their phonemes, predicted durations/pitch/energy) ─ vocoder ─▶ waves
        speaker similarity   cosine of Resemblyzer d-vectors: each synthesized query vs the mean d-vector of the
                             real query utterances of the episode; mean over the Q sentences
        EER                  Meta-TTS's verification trials (``metrics.verification_eer``): every (synthesized,
                             real) pair over all episodes' speakers, positive when of one speaker; pooled over
                             episodes; its spread is over rounds (round r = the r-th episode of every speaker)
        MCD (DTW), log-F0    each synthesized query against its real recording (``metrics.compare_mels`` on the
        RMSE                 same analysis ``compare_audio`` does)
        query mel L1         teacher-forced on the query with the aligner's durations, as ``adaptation_curve``

Methods (all adapt from the new-speaker slot; the query is always routed to the slot):

- ``meta``: the meta-trained checkpoint's speaker group (``model.speaker_groups``) with plain SGD at its learned
  Meta-SGD rates, eval mode, no graph -- the loss and rates of ``metatts adapt`` (``adapt_voice``), on the store's
  features of the support clips instead of re-extracted files.
- ``baseline``: the multi-speaker (``metatts train``) checkpoint, the same group and SGD, lr = its config's
  ``meta.inner_lr`` unless ``baseline_lr`` is given (Meta-TTS's baseline).
- ``full``: the baseline fine-tuning every parameter with Adam (``full_lr``), eval mode.
- ``none``: the baseline's slot without adaptation. Evaluated once per episode; the value is repeated over the grid.
- ``dvector``: an encoder baseline in the spirit of Meta-TTS's d-vector one, but closed form rather than a TTS
  trained with d-vector input: a ridge projection maps a speaker's mean Resemblyzer d-vector to its speaker-table
  row (``table_embedding`` ++ ``table_norms``, the layout of the slot tensors). It is fitted on the baseline's
  training speakers (their real utterances in the store), its λ chosen by the teacher-forced mel L1 of the
  held-out ``val`` speakers (leave-one-out on the training rows when there is none). At test time the support
  clips' mean d-vector gives the slot tensors: no gradient step, so it too is flat over the grid.

Speed (2 shared cores): real utterances' d-vectors are cached on disk (``cache_dir``); each episode is adapted
once, incrementally along the grid; real references are analysed once. The default vocoder is Griffin-Lim: its
real-time factor with the tiny model is ~0.08 on one thread against ~0.6 for HiFi-GAN V1 (benchmarks/results/
synthesis-*.json), and the evaluation vocodes (methods × steps × queries) sentences per episode; Resemblyzer's
d-vectors and the DTW MCD read through its phase artefacts well enough to rank methods (use ``vocoder="hifigan"``
for final numbers).

Compute: ``results["compute"][method]`` is the training behind the model (updates and wall seconds its checkpoint
records; a meta checkpoint initialized from a ``metatts train`` one adds that run; checkpoints saved before compute
was recorded fall back to the span of their run's TensorBoard events) plus the adaptation updates and seconds per
episode (to the largest step count; aligner included).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from metatts.config import Config
from metatts.episodes.collate import Collator
from metatts.episodes.sampler import Episode
from metatts.features.store import FeatureStore, ManifestEntry
from metatts.model.batch import NEW_SPEAKER, Batch
from metatts.model.losses import FastSpeech2Loss
from metatts.runtime.checkpoint import CheckpointError, CheckpointMeta, read_meta, weights_digest

METHODS = ("meta", "baseline", "full", "none", "dvector")
FLAT_METHODS = ("none", "dvector")  # no gradient step: evaluated once per episode, repeated over the grid
DEFAULT_STEPS = (0, 1, 2, 5, 10, 20, 50, 100)
METRICS = ("similarity", "eer", "mcd", "f0_rmse", "mel_l1")
FULL_LR = 1e-4  # Adam's step for fine-tuning every parameter (Adam's step is ~lr per element)
RIDGE_LAMBDAS = tuple(float(x) for x in np.logspace(-3, 2, 11))  # relative to the mean centred Gram diagonal


class EvaluationError(ValueError):
    """The evaluation cannot run with these inputs (a missing or unfitting checkpoint, an unknown method)."""


# --------------------------------------------------------------------------------------------------- models
@dataclass
class EvalModel:
    """A checkpoint loaded for evaluation: the model in eval mode and a collator with its symbols and statistics."""

    path: Path
    meta: CheckpointMeta
    config: Config
    model: torch.nn.Module
    digest: str
    collator: Collator

    @classmethod
    def load(cls, path: str | Path, store: FeatureStore, device: torch.device) -> "EvalModel":
        from metatts.train.common import load_for_store

        meta, config, model, collator = load_for_store(path, store)
        return cls(Path(path), meta, config, model.to(device).eval(), weights_digest(path), collator)

    @property
    def postnet(self) -> bool:
        return getattr(self.model, "postnet", None) is not None


def check_checkpoints(meta_checkpoint: str | Path | None, baseline_checkpoint: str | Path | None,
                      methods: Sequence[str]) -> tuple[CheckpointMeta | None, CheckpointMeta | None]:
    """Validate the inputs before any work: method names, which checkpoints they need, their kinds and that the
    two share a symbol table. Raises ``EvaluationError`` with one clear sentence."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EvaluationError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    if not methods:
        raise EvaluationError(f"no method to evaluate: choose from {', '.join(METHODS)}")

    def read(path, role: str) -> CheckpointMeta:
        if path is None:
            raise EvaluationError(f"methods {', '.join(m for m in methods)} need the {role} checkpoint")
        if not Path(path).is_dir():
            raise EvaluationError(f"{role} checkpoint {path} does not exist")
        try:
            return read_meta(path)
        except CheckpointError as error:
            raise EvaluationError(f"{role} checkpoint: {error}") from error

    meta = read(meta_checkpoint, "meta") if "meta" in methods else None
    base = read(baseline_checkpoint, "baseline") if set(methods) - {"meta"} else None
    if meta is not None and meta.kind != "meta":
        raise EvaluationError(f"{meta_checkpoint} is a {meta.kind!r} checkpoint, not a meta-trained one: pass the "
                              f"`metatts meta-train` checkpoint as --checkpoint")
    if base is not None and base.kind != "train":
        raise EvaluationError(f"baseline {baseline_checkpoint} is a {base.kind!r} checkpoint: the baseline is the "
                              f"multi-speaker `metatts train` checkpoint")
    if meta is not None and base is not None and meta.symbols != base.symbols:
        raise EvaluationError(f"{meta_checkpoint} and {baseline_checkpoint} have different phoneme symbol tables: "
                              f"they were not trained on the same store, so their numbers would not compare")
    return meta, base


# --------------------------------------------------------------------------------------------------- ridge
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


# --------------------------------------------------------------------------------------------------- audio
class RealAudio:
    """Real utterances of the store as the model saw them (loaded, trimmed and loudness-normalized like
    ``metatts prepare`` does), with their Resemblyzer d-vectors cached on disk and their analysis in memory."""

    def __init__(self, store: FeatureStore, audio, encoder, cache_path: Path | None):
        from metatts.features.extract import FeatureExtractor

        self.store, self.audio, self.encoder = store, audio, encoder
        self.extractor = FeatureExtractor(audio)
        self.cache_path = cache_path
        self.vectors: dict[str, np.ndarray] = {}
        self.signatures: dict[str, str] = {}
        self._waves: dict[str, np.ndarray] = {}
        self._analysis: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._dirty = False
        if cache_path is not None and cache_path.is_file():
            with np.load(cache_path, allow_pickle=False) as data:
                for utt, signature, vector in zip(data["ids"], data["signatures"], data["vectors"]):
                    self.vectors[str(utt)], self.signatures[str(utt)] = vector, str(signature)

    def _signature(self, entry: ManifestEntry) -> str:
        stat = os.stat(entry.audio_path)
        return f"{entry.audio_path}|{stat.st_size}|{stat.st_mtime_ns}|{self.audio.sample_rate}"

    def wave(self, utt_id: str, keep: bool = True) -> np.ndarray:
        if utt_id in self._waves:
            return self._waves[utt_id]
        from metatts.features.audio import load_audio

        wave = self.extractor.condition(load_audio(self.store.by_id[utt_id].audio_path, self.audio.sample_rate))
        if keep:
            self._waves[utt_id] = wave
        return wave

    def embeddings(self, ids: Sequence[str], keep_waves: bool = True) -> np.ndarray:
        """[N, 256] d-vectors (NaN rows for unusable audio), computed once per file content and cached."""
        missing = []
        for utt in ids:
            signature = self._signature(self.store.by_id[utt])
            if self.signatures.get(utt) != signature:
                missing.append((utt, signature))
        if missing:
            vectors = self.encoder.embed_many([self.wave(u, keep_waves) for u, _ in missing], self.audio.sample_rate,
                                              on_error="nan")
            for (utt, signature), vector in zip(missing, vectors):
                self.vectors[utt], self.signatures[utt] = vector, signature
            self._dirty = True
        return np.stack([self.vectors[u] for u in ids])

    def analysis(self, utt_id: str) -> tuple[np.ndarray, np.ndarray]:
        if utt_id not in self._analysis:
            self._analysis[utt_id] = analyse(self.wave(utt_id), self.audio)
        return self._analysis[utt_id]

    def save(self) -> None:
        if not self._dirty or self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        ids = sorted(self.vectors)
        tmp = self.cache_path.with_name(f".{self.cache_path.stem}-{os.getpid()}.npz")
        np.savez(tmp, ids=np.array(ids), signatures=np.array([self.signatures[i] for i in ids]),
                 vectors=np.stack([self.vectors[i] for i in ids]).astype(np.float32))
        os.replace(tmp, self.cache_path)
        self._dirty = False


def analyse(wave: np.ndarray, audio) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel [n_mels, T] float64, F0 [T] Hz) of a wave at ``audio.sample_rate``: what ``compare_audio`` computes
    for each side, so a real reference is analysed once rather than once per comparison."""
    from metatts.features.mel import MelSpectrogram
    from metatts.features.pitch import PitchTracker

    wave = np.asarray(wave, dtype=np.float32)
    with torch.inference_mode():
        log_mel = MelSpectrogram.from_config(audio)(torch.from_numpy(wave)).double().numpy()
    return log_mel, PitchTracker.from_config(audio)(wave).f0


# --------------------------------------------------------------------------------------------------- adaptation
def _with_params(model: torch.nn.Module, params: Mapping[str, Tensor], call):
    from metatts.api import _with_params as swap

    return swap(model, dict(params), call) if params else call()


def aligned(ev: EvalModel, ids: Sequence[str], device: torch.device) -> Batch:
    """Utterances on the new-speaker slot with the model's aligner durations (computed once, no graph)."""
    from metatts.meta.outer_loop import aligned_batch

    return aligned_batch(ev.model, ev.collator, ids, device)


def support_loss(ev: EvalModel, ids: Sequence[str], fast_names: set[str], device: torch.device):
    """The support loss of ``metatts adapt``: the FastSpeech 2 terms over length buckets of the support clips."""
    from metatts.adapt.fast import length_buckets, support_loss_fn

    frames = [ev.collator.store.by_id[i].frames for i in ids]
    batches = [aligned(ev, [ids[j] for j in bucket], device) for bucket in length_buckets(frames)]
    frozen = {n: p.detach() for n, p in ev.model.named_parameters() if n not in fast_names}
    return support_loss_fn(ev.model, frozen, batches, FastSpeech2Loss())


class SGDAdapter:
    """Plain SGD on the fast weights (``adapt(..., differentiable=False)``); stateless, so it advances in pieces."""

    def __init__(self, loss_fn, fast0: Mapping[str, Tensor], lr):
        self.loss_fn, self.fast, self.lr = loss_fn, dict(fast0), lr

    def advance(self, steps: int) -> None:
        from metatts.meta.inner_loop import adapt

        if steps:
            self.fast = adapt(self.loss_fn, self.fast, steps, self.lr, differentiable=False).fast

    def params(self) -> dict[str, Tensor]:
        return self.fast


class AdamAdapter:
    """Adam on the fast weights, its moments kept across ``advance`` calls (so k steps in pieces = k steps)."""

    def __init__(self, loss_fn, fast0: Mapping[str, Tensor], lr: float):
        self.loss_fn = loss_fn
        self.fast = {n: t.detach().clone().requires_grad_() for n, t in fast0.items()}
        self.optimizer = torch.optim.Adam(list(self.fast.values()), lr=lr)

    def advance(self, steps: int) -> None:
        params = list(self.fast.values())
        for _ in range(steps):
            with torch.enable_grad():
                loss = self.loss_fn(self.fast)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = torch.zeros_like(p) if g is None else g
            self.optimizer.step()

    def params(self) -> dict[str, Tensor]:
        return {n: t.detach() for n, t in self.fast.items()}


# --------------------------------------------------------------------------------------------------- d-vector
@dataclass
class DvectorModel:
    """The fitted d-vector → slot projection and how it was chosen."""

    projection: RidgeProjection
    layout: list[tuple[str, tuple[int, ...]]]  # (slot parameter name, shape) in the order of the target vector
    info: dict

    def params(self, dvector: np.ndarray, device: torch.device) -> dict[str, Tensor]:
        flat = torch.from_numpy(self.projection(dvector).astype(np.float32)).to(device)
        out, start = {}, 0
        for name, shape in self.layout:
            size = int(np.prod(shape))
            out[name] = flat[start:start + size].view(shape)
            start += size
        return out


def slot_layout(model: torch.nn.Module, groups: Sequence[str]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(slot name, table name, slot shape) of each speaker-group tensor that has a speaker-table counterpart: the
    table rows and the slot have the same structure (``metatts.model.speaker``)."""
    from metatts.model.acoustic import select_parameters

    named = dict(model.named_parameters())
    layout = []
    for name, tensor in select_parameters(model, list(groups)).items():
        table = name.replace(".slot_", ".table_")
        if table != name and table in named and tuple(named[table].shape[1:]) == tuple(tensor.shape):
            layout.append((name, table, tuple(tensor.shape)))
    return layout


def fit_dvector_model(base: EvalModel, groups: Sequence[str], real: RealAudio, splits, *, shots: int, queries: int,
                      device: torch.device, cache: Path | None, max_utterances: int | None = None,
                      log: Callable[[str], None] = print) -> DvectorModel:
    """Fit the ridge projection (see the module docstring); reuse ``cache`` when it was fitted on the same inputs."""
    from safetensors.numpy import load_file, save_file

    from metatts.evaluation.metrics import mean_embedding

    started = time.perf_counter()
    layout = slot_layout(base.model, groups)
    if not layout:
        raise EvaluationError(f"speaker groups {', '.join(groups)} of {base.path} have no speaker-table counterpart "
                              f"for the d-vector projection to predict")
    by_speaker = real.store.speakers()
    named = dict(base.model.named_parameters())
    train_ids: dict[str, list[str]] = {}
    skipped = {}
    for speaker in base.meta.speakers:
        ids = sorted(e.id for e in by_speaker.get(speaker, []))[:max_utterances]
        if ids:
            train_ids[speaker] = ids
        else:
            skipped[speaker] = "no utterance in the store"
    val = []
    for speaker in sorted(splits.val):
        ids = sorted(e.id for e in by_speaker.get(speaker, []))
        if len(ids) >= 2:
            k = min(shots, len(ids) - 1)
            val.append((speaker, ids[:k], ids[k:k + queries]))
    key = hashlib.sha256(json.dumps({"digest": base.digest, "groups": list(groups), "train": train_ids,
                                     "val": val, "lambdas": RIDGE_LAMBDAS}).encode()).hexdigest()[:16]
    if cache is not None and cache.with_suffix(".json").is_file() and cache.is_file():
        info = json.loads(cache.with_suffix(".json").read_text())
        if info.get("key") == key:
            tensors = load_file(str(cache))
            log(f"d-vector projection: cached fit {cache} (λ = {info['lambda']:.3g}, {info['selection']})")
            return DvectorModel(RidgeProjection(tensors["x_mean"], tensors["y_mean"], tensors["weight"],
                                                info["lambda"]), [(n, s) for n, _, s in layout], info)
    if len(train_ids) < 2:
        raise EvaluationError(f"the d-vector projection needs at least 2 training speakers of {base.path} with "
                              f"utterances in {real.store.root}, found {len(train_ids)}")
    log(f"d-vector projection: embedding the real utterances of {len(train_ids)} training speakers")
    x, y = [], []
    for speaker, ids in train_ids.items():
        try:
            x.append(mean_embedding(real.embeddings(ids, keep_waves=False)))
        except ValueError:
            skipped[speaker] = "no usable utterance for a d-vector"
            continue
        row = base.meta.speakers.index(speaker)
        y.append(torch.cat([named[table][row].detach().flatten().cpu() for _, table, _ in layout]).double().numpy())
    real.save()
    x, y = np.stack(x).astype(np.float64), np.stack(y)
    scale = ridge_scale(x)
    loss = FastSpeech2Loss()
    scores = []
    val_inputs = []
    for speaker, support, query in val:
        try:
            dvec = mean_embedding(real.embeddings(support, keep_waves=False))
        except ValueError:
            continue
        val_inputs.append((dvec, aligned(base, query, device)))
    if val_inputs:
        selection = f"teacher-forced mel L1 of {len(val_inputs)} held-out val speakers"
        for rel in RIDGE_LAMBDAS:
            candidate = DvectorModel(fit_ridge(x, y, rel * scale), [(n, s) for n, _, s in layout], {})
            values = []
            for dvec, batch in val_inputs:
                with torch.no_grad():
                    terms = loss(functional_call(base.model, candidate.params(dvec, device), (batch,)), batch)
                values.append(float(terms.postnet_mel if base.postnet else terms.mel))
            scores.append(float(np.mean(values)))
    else:
        selection = "leave-one-out squared error on the training rows (no usable val speaker)"
        scores = [ridge_loo_error(x, y, rel * scale) for rel in RIDGE_LAMBDAS]
    best = int(np.argmin(scores))
    projection = fit_ridge(x, y, RIDGE_LAMBDAS[best] * scale)
    info = {"key": key, "lambda": projection.lam, "lambda_relative": RIDGE_LAMBDAS[best], "selection": selection,
            "lambda_grid_relative": list(RIDGE_LAMBDAS), "selection_scores": scores,
            "train_speakers": len(x), "train_utterances": sum(len(v) for v in train_ids.values()),
            "skipped_speakers": skipped, "val_speakers": [s for s, _, _ in val],
            "targets": [table for _, table, _ in layout], "fit_seconds": time.perf_counter() - started,
            "checkpoint": str(base.path)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"x_mean": projection.x_mean, "y_mean": projection.y_mean, "weight": projection.weight},
                  str(cache))
        cache.with_suffix(".json").write_text(json.dumps(info, indent=1))
    log(f"d-vector projection: λ = {projection.lam:.3g} (relative {RIDGE_LAMBDAS[best]:.3g}) by {selection}; "
        f"{info['fit_seconds']:.1f} s")
    return DvectorModel(projection, [(n, s) for n, _, s in layout], info)


# --------------------------------------------------------------------------------------------------- compute
def _tensorboard_seconds(run: Path) -> float | None:
    """Sum over the run's event files of (last − first event wall time): each file is one process of the run."""
    files = sorted(glob.glob(str(run / "tb" / "events.out.tfevents.*")))
    if not files:
        return None
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total = 0.0
    for path in files:
        times = [event.wall_time for event in EventFileLoader(path).Load()]
        if times:
            total += max(times) - min(times)
    return total


def training_compute(checkpoint: str | Path) -> dict:
    """Updates and wall seconds of the training behind a checkpoint, its initialization's included."""
    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    record = meta.extra.get("compute")
    if record is not None:
        out = {"updates": int(record["updates"]), "seconds": float(record["seconds"]), "kind": meta.kind,
               "source": "checkpoint metadata", "own": {"updates": int(record["updates"]),
                                                        "seconds": float(record["seconds"])}}
        if record.get("seconds_before_resume_unknown"):
            out["note"] = "a resumed part of the run predates compute metadata: seconds are a lower bound"
        source = record.get("init_from")
        if source is not None:
            out["init_from"] = {k: source[k] for k in ("checkpoint", "kind", "step")}
            inner = source.get("compute")
            if inner is not None:
                out["updates"] += int(inner["updates"])
                out["seconds"] += float(inner["seconds"])
                out["init_from"]["compute"] = {"updates": int(inner["updates"]), "seconds": float(inner["seconds"])}
            else:
                out["note"] = (f"initialized from {source['checkpoint']}, whose compute is not recorded: its "
                               f"training is not included")
        return out
    seconds = _tensorboard_seconds(checkpoint.parent)
    return {"updates": int(meta.step), "seconds": seconds, "kind": meta.kind,
            "source": ("span of the run's TensorBoard event wall times (the checkpoint predates compute metadata)"
                       if seconds is not None else "not recorded (no compute metadata, no TensorBoard events)"),
            "note": "whether this run was initialized from another checkpoint is not recorded"}


# --------------------------------------------------------------------------------------------------- evaluation
@dataclass
class Score:
    similarity: float
    mcd: float
    f0_rmse: float
    mel_l1: float
    embeddings: np.ndarray  # [Q, 256] synthesized queries' d-vectors (NaN rows: unusable synthesis)
    waves: list[np.ndarray]
    unusable: int  # synthesized queries Resemblyzer could not embed


@dataclass
class EpisodeData:
    episode: Episode
    real_embeddings: np.ndarray  # [Q, 256]
    real_centroid: np.ndarray  # [256]
    max_frames: int  # cap on synthesized frames (a broken duration predictor must not run away)


def score(ev: EvalModel, params: Mapping[str, Tensor], data: EpisodeData, query: Batch, vocoder, encoder,
          real: RealAudio) -> Score:
    from metatts.evaluation.metrics import compare_mels, similarity_matrix

    model = ev.model
    with torch.no_grad():
        terms = FastSpeech2Loss()(functional_call(model, dict(params), (query,)), query)
    mel_l1 = float(terms.postnet_mel if ev.postnet else terms.mel)
    speakers = torch.full((query.size,), NEW_SPEAKER, dtype=torch.long, device=query.phonemes.device)
    synthesis = _with_params(model, params, lambda: model.infer(query.phonemes, query.phoneme_lengths, speakers,
                                                                max_frames=data.max_frames))
    waves = []
    with torch.no_grad():
        for i in range(query.size):
            mel = synthesis.mels[i:i + 1, :, :max(int(synthesis.mel_lengths[i]), 1)]
            waves.append(vocoder(mel.float())[0].cpu().numpy().astype(np.float32))
    rate = ev.config.audio.sample_rate
    embeddings = encoder.embed_many(waves, rate, on_error="nan")
    cosines = similarity_matrix(embeddings, data.real_centroid[None])[:, 0]
    mcds, f0s = [], []
    for utt, wave in zip(data.episode.query, waves):
        real_mel, real_f0 = real.analysis(utt)
        synth_mel, synth_f0 = analyse(wave, ev.config.audio)
        comparison = compare_mels(real_mel, synth_mel, f0_a=real_f0, f0_b=synth_f0)
        mcds.append(comparison.mcd_db)
        f0s.append(comparison.f0_rmse_cents)
    return Score(similarity=_nanmean(cosines), mcd=_nanmean(mcds), f0_rmse=_nanmean(f0s), mel_l1=mel_l1,
                 embeddings=embeddings, waves=waves, unusable=int((~np.isfinite(embeddings).all(axis=1)).sum()))


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _spread(values: Sequence[float]) -> dict:
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not finite.size:
        return {"std": None, "min": None, "max": None, "n": 0}
    return {"std": float(finite.std()), "min": float(finite.min()), "max": float(finite.max()), "n": int(finite.size)}


def _clean(value):
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class _MethodRun:
    ev: EvalModel
    rows: dict[str, list[list[float]]] = field(default_factory=lambda: {m: [] for m in METRICS if m != "eer"})
    embeddings: list[list[np.ndarray]] = field(default_factory=list)  # [episode][step] -> [Q, 256]
    adapt_seconds: list[float] = field(default_factory=list)
    unusable: int = 0


def run_evaluation(meta_checkpoint, baseline_checkpoint, suite, out_dir, *, methods=METHODS, steps=DEFAULT_STEPS,
                   vocoder="griffinlim", device="cpu", samples=1, progress=True, log=print,
                   features: str | Path | None = None, baseline_lr: float | None = None, full_lr: float = FULL_LR,
                   threads: int | None = None, speakers: Sequence[str] | int | None = None,
                   tasks_per_speaker: int | None = None, cache_dir: str | Path | None = None,
                   dvector_utterances: int | None = None, tensorboard: bool = True) -> dict:
    """Evaluate ``methods`` on the frozen episodes of ``suite`` (a tasks/*.yaml path or a ``TaskSuite``) after each
    step count of ``steps`` and write ``out_dir``/results.json (returned), results.md, plots, samples and tb/.
    See the module docstring. Extra keywords: ``features`` overrides the suite's store; ``speakers`` keeps only
    these held-out speakers (a list, or the first N); ``tasks_per_speaker`` overrides the suite's;
    ``threads`` sets torch's CPU threads for the run; ``cache_dir`` holds the d-vector cache (default
    ``out_dir``/cache); ``dvector_utterances`` caps the utterances per training speaker for the d-vector fit."""
    from metatts.corpus.splits import SpeakerSplits
    from metatts.episodes.tasks import TaskSuite, episodes_digest, frozen_episodes, load_task_suite
    from metatts.evaluation import report
    from metatts.evaluation.metrics import SpeakerEncoder, mean_embedding, verification_eer
    from metatts.features.store import StoreError
    from metatts.model.acoustic import select_parameters
    from metatts.runtime.env import machine_info, resolve_device
    from metatts.vocoder import load_vocoder

    started = time.perf_counter()
    methods = list(dict.fromkeys(methods))
    grid = sorted(set(int(s) for s in steps))
    if not grid or grid[0] < 0:
        raise EvaluationError(f"steps must be step counts >= 0, got {list(steps)}")
    if samples < 0:
        raise EvaluationError(f"samples must be >= 0, got {samples}")
    meta_info, base_info = check_checkpoints(meta_checkpoint, baseline_checkpoint, methods)
    if isinstance(suite, TaskSuite):
        if features is not None:
            suite = dataclasses.replace(suite, features=str(features))
    else:
        suite = load_task_suite(suite, features=features)
    if tasks_per_speaker is not None:
        suite = dataclasses.replace(suite, tasks_per_speaker=int(tasks_per_speaker))
    root = Path(suite.features)
    if not (root / "manifest.jsonl").is_file():
        raise EvaluationError(f"the feature store {root} of suite {suite.name!r} does not exist or is not prepared "
                              f"(no manifest.jsonl): run `metatts prepare`, or pass --features")
    if not (root / "splits.json").is_file():
        raise StoreError(f"{root} has no splits.json: re-run `metatts prepare`")
    store = FeatureStore(root)
    splits = SpeakerSplits.load(root / "splits.json")
    episodes = frozen_episodes(suite, store, splits, log=log)
    if speakers is not None:
        available = list(dict.fromkeys(e.speaker for e in episodes))
        keep = available[:speakers] if isinstance(speakers, int) else list(speakers)
        unknown = [s for s in keep if s not in available]
        if unknown:
            raise EvaluationError(f"speaker {unknown[0]} gives no episode of suite {suite.name!r} (its {suite.split} "
                                  f"speakers with episodes: {', '.join(available)})")
        episodes = [e for e in episodes if e.speaker in keep]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir / "cache"

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        torch_device = resolve_device(device)
        meta_ev = EvalModel.load(meta_checkpoint, store, torch_device) if meta_info is not None else None
        base_ev = EvalModel.load(baseline_checkpoint, store, torch_device) if base_info is not None else None
        reference = meta_ev or base_ev
        groups = list(reference.config.model.speaker_groups)
        audio = reference.config.audio
        if meta_ev is not None and base_ev is not None and \
                dataclasses.asdict(meta_ev.config.audio) != dataclasses.asdict(base_ev.config.audio):
            raise EvaluationError(f"{meta_checkpoint} and {baseline_checkpoint} use different audio settings")
        vocoder_impl = load_vocoder(vocoder, audio, torch_device)
        encoder = SpeakerEncoder(device="cpu")
        real = RealAudio(store, audio, encoder, cache_dir / "dvectors.npz")
        dvector = None
        if "dvector" in methods:
            dvector = fit_dvector_model(base_ev, groups, real, splits, shots=suite.shots, queries=suite.queries,
                                        device=torch_device, cache=out_dir / "dvector_projection.safetensors",
                                        max_utterances=dvector_utterances, log=log)
        baseline_rate = float(baseline_lr) if baseline_lr is not None else \
            (float(base_ev.config.meta.inner_lr) if base_ev is not None else None)
        runs = {m: _MethodRun(meta_ev if m == "meta" else base_ev) for m in methods}
        sample_paths: dict[str, dict[int, list[str]]] = {m: {} for m in methods}
        sample_paths["real"] = {}
        first_of_speaker = {}
        for index, episode in enumerate(episodes):
            first_of_speaker.setdefault(episode.speaker, index)

        from tqdm import tqdm

        evaluations = sum(1 if m in FLAT_METHODS else len(grid) for m in methods) * len(episodes)
        bar = tqdm(total=evaluations, desc="evaluate", unit="eval", disable=not progress)
        for index, episode in enumerate(episodes):
            query_ids = list(episode.query)
            real_embeddings = real.embeddings(query_ids)
            frames = max(store.by_id[u].frames for u in query_ids)
            data = EpisodeData(episode, real_embeddings, mean_embedding(real_embeddings), max_frames=4 * frames + 200)
            write_samples = samples > 0 and first_of_speaker[episode.speaker] == index
            if write_samples:
                sample_paths["real"].setdefault(0, []).extend(
                    _write_waves(out_dir / "samples" / "real", episode.speaker,
                                 [real.wave(u) for u in query_ids[:samples]], audio.sample_rate))
            queries: dict[int, Batch] = {}
            for method in methods:
                run = runs[method]
                ev = run.ev
                if id(ev) not in queries:
                    queries[id(ev)] = aligned(ev, query_ids, torch_device)
                query = queries[id(ev)]
                tick = time.perf_counter()
                if method in FLAT_METHODS:
                    params = {}
                    if method == "dvector":
                        dvec = mean_embedding(encoder.embed_many([real.wave(u, keep=False) for u in episode.support],
                                                                 audio.sample_rate, on_error="nan"))
                        params = dvector.params(dvec, torch_device)
                    run.adapt_seconds.append(time.perf_counter() - tick)
                    result = score(ev, params, data, query, vocoder_impl, encoder, real)
                    bar.update()
                    results_per_step = [result] * len(grid)
                else:
                    if method == "full":
                        fast0 = {n: p.detach() for n, p in ev.model.named_parameters()}
                    else:
                        fast0 = {n: p.detach() for n, p in select_parameters(ev.model, groups).items()}
                    loss_fn = support_loss(ev, list(episode.support), set(fast0), torch_device)
                    if method == "meta":
                        from metatts.adapt.fast import resolve_lr

                        rate, _ = resolve_lr(ev.path, fast0, None, "sgd", ev.config.meta.inner_lr)
                        adapter = SGDAdapter(loss_fn, fast0, rate)
                    elif method == "baseline":
                        adapter = SGDAdapter(loss_fn, fast0, baseline_rate)
                    else:
                        adapter = AdamAdapter(loss_fn, fast0, full_lr)
                    seconds = time.perf_counter() - tick  # the aligner on the support
                    done = 0
                    results_per_step = []
                    for k in grid:
                        tick = time.perf_counter()
                        adapter.advance(k - done)
                        seconds += time.perf_counter() - tick
                        done = k
                        results_per_step.append(score(ev, adapter.params(), data, query, vocoder_impl, encoder,
                                                      real))
                        bar.update()
                    run.adapt_seconds.append(seconds)
                for metric in run.rows:
                    run.rows[metric].append([getattr(r, metric) for r in results_per_step])
                run.embeddings.append([r.embeddings for r in results_per_step])
                run.unusable += sum(r.unusable for r in (results_per_step[:1] if method in FLAT_METHODS
                                                         else results_per_step))
                if write_samples:
                    written = None
                    for k, r in zip(grid, results_per_step):
                        if method not in FLAT_METHODS or written is None:  # a flat method's files: under step<first>
                            written = _write_waves(out_dir / "samples" / method / f"step{k}", episode.speaker,
                                                   r.waves[:samples], audio.sample_rate)
                        sample_paths[method].setdefault(k, []).extend(written)
            real.save()
        bar.close()

        # ---- aggregate
        results: dict = {metric: {} for metric in METRICS}
        results["spread"] = {metric: {} for metric in METRICS}
        results["per_episode"] = {metric: {} for metric in METRICS if metric != "eer"}
        eer_notes = {}
        speakers_seen = list(dict.fromkeys(e.speaker for e in episodes))
        rounds = max(sum(1 for e in episodes if e.speaker == s) for s in speakers_seen)
        for method, run in runs.items():
            for metric, rows in run.rows.items():
                columns = list(zip(*rows))
                results[metric][method] = {str(k): _nanmean(col) for k, col in zip(grid, columns)}
                results["spread"][metric][method] = {str(k): _spread(col) for k, col in zip(grid, columns)}
                results["per_episode"][metric][method] = rows
            results["eer"][method], results["spread"]["eer"][method] = {}, {}
            for j, k in enumerate(grid):
                if len(speakers_seen) < 2:
                    eer_notes[method] = "EER needs episodes of at least 2 speakers (negative trials)"
                    results["eer"][method][str(k)] = math.nan
                    results["spread"]["eer"][method][str(k)] = _spread([])
                    continue
                pooled = _eer(episodes, run.embeddings, j, real, verification_eer)
                per_round = [_eer(episodes, run.embeddings, j, real, verification_eer, round_index=r)
                             for r in range(rounds)] if rounds > 1 else []
                results["eer"][method][str(k)] = pooled
                results["spread"]["eer"][method][str(k)] = {**_spread(per_round), "over": "rounds"}

        # ---- compute
        compute = {}
        for method in methods:
            ev = runs[method].ev
            record = training_compute(ev.path)
            record.update(method_adapt_compute(method, grid, runs[method].adapt_seconds))
            if method == "dvector":
                record["fit_seconds"] = float(dvector.info["fit_seconds"])
                if record["seconds"] is not None:
                    record["seconds"] += record["fit_seconds"]
                record["note"] = ("baseline training plus the closed-form ridge fit (fit_seconds: d-vectors of the "
                                  "training speakers, unless cached, and the λ search); no gradient update")
            compute[method] = record
        results["compute"] = compute
        results.update({
            "steps": grid,
            "methods": methods,
            "flat_methods": {m: "no gradient step: evaluated once per episode and repeated over the grid"
                             for m in methods if m in FLAT_METHODS},
            "episodes": [{"speaker": e.speaker, "support": list(e.support), "query": list(e.query)}
                         for e in episodes],
            "episodes_digest": episodes_digest(episodes),
            "suite": {**dataclasses.asdict(suite), "speakers": speakers_seen},
            "checkpoints": {name: {"path": str(ev.path), "kind": ev.meta.kind, "step": ev.meta.step,
                                   "digest": ev.digest}
                            for name, ev in (("meta", meta_ev), ("baseline", base_ev)) if ev is not None},
            "settings": {"groups": groups, "baseline_lr": baseline_rate, "full_lr": full_lr,
                         "full_optimizer": "adam", "meta_lr": "learned per-parameter Meta-SGD rates (load_inner_lr)",
                         "similarity": "cosine of each synthesized query's d-vector with the mean d-vector of the "
                                       "episode's real query utterances, averaged over the queries",
                         "eer": "verification_eer over (synthesized query, real query) pairs of all episodes; "
                                "spread over rounds (the r-th episode of every speaker)",
                         "mcd": "dB, DTW on mel cepstra, synthesized vs real query",
                         "f0_rmse": "cents, over frames voiced in both after the same DTW",
                         "mel_l1": "query mel L1, teacher-forced with the model's aligner durations"},
            "vocoder": {"name": str(vocoder), "class": type(vocoder_impl).__name__,
                        "why": "Griffin-Lim by default: real-time factor ~0.08 (tiny model, 1 thread) against ~0.6 "
                               "for HiFi-GAN V1, and every episode vocodes methods × steps × queries sentences"},
            "unusable_synthesis": {m: r.unusable for m, r in runs.items()},
            "eer_notes": eer_notes,
            "samples": {m: {str(k): v for k, v in paths.items()} for m, paths in sample_paths.items() if paths},
            "dvector": _clean({k: v for k, v in dvector.info.items() if k != "key"}) if dvector else None,
            "machine": machine_info(),
            "seconds": time.perf_counter() - started,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        results = _clean(results)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
        report.write_markdown(results, out_dir / "results.md")
        report.plot_curves(results, "similarity", out_dir / "similarity.png")
        report.plot_curves(results, "eer", out_dir / "eer.png")
        if tensorboard:
            report.write_tensorboard(results, out_dir / "tb", out_dir)
        log(f"evaluation: {len(episodes)} episodes × {len(methods)} methods × {len(grid)} step counts in "
            f"{results['seconds']:.0f} s; {out_dir / 'results.json'}")
        return results
    finally:
        torch.set_num_threads(previous_threads)


def method_adapt_compute(method: str, grid: Sequence[int], seconds: Sequence[float]) -> dict:
    """Adaptation cost per episode: updates to the largest step count and their mean wall seconds."""
    updates = 0 if method in FLAT_METHODS else max(grid)
    what = {"none": "nothing (the slot as trained)",
            "dvector": "Resemblyzer d-vectors of the support clips + the projection"}.get(
        method, "aligner on the support + SGD/Adam steps to the largest step count")
    return {"adapt_updates": updates, "adapt_seconds": _nanmean(seconds) if seconds else None,
            "adapt_seconds_spread": _spread(list(seconds)), "adapt_measures": what}


def _eer(episodes: Sequence[Episode], embeddings: list[list[np.ndarray]], step_index: int, real: RealAudio,
         verification_eer, round_index: int | None = None) -> float:
    synth: dict[str, list[np.ndarray]] = {}
    reals: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for episode, rows in zip(episodes, embeddings):
        r = seen.get(episode.speaker, 0)
        seen[episode.speaker] = r + 1
        if round_index is not None and r != round_index:
            continue
        synth.setdefault(episode.speaker, []).append(rows[step_index])
        known = reals.setdefault(episode.speaker, [])
        known.extend(u for u in episode.query if u not in known)
    if len(synth) < 2:
        return math.nan
    try:
        return verification_eer({s: np.concatenate(v) for s, v in synth.items()},
                                {s: real.embeddings(ids) for s, ids in reals.items()}).eer
    except ValueError:  # every trial NaN (nothing embeddable)
        return math.nan


def _write_waves(folder: Path, speaker: str, waves: Sequence[np.ndarray], rate: int) -> list[str]:
    import soundfile as sf

    from metatts.runtime.outputs import safe_name

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, wave in enumerate(waves):
        path = folder / f"{safe_name(speaker)}-{n}.wav"  # speaker ids are corpus data, never paths
        sf.write(path, np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16")
        paths.append(str(path))
    return paths
