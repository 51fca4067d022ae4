"""The evaluation result (``results.json`` of ``metatts evaluate``): its documented keys and a validator.

Metric tables, one per metric, each ``method → step → interval``::

    similarity   cosine of synthesized queries' d-vectors with the support centroid (references.candidate_similarity)
    gap_closed   (similarity − stranger) / (same − stranger), per episode, then averaged
    eer          verification EER over all episodes' trials (the "mean" is the pooled EER)
    mcd          dB, DTW on mel cepstra, synthesized vs real query
    f0_rmse      cents, over frames voiced in both after the same DTW
    cer, wer     recognizer (PocketSphinx) error rates of the synthesized query sentences
    dnsmos       DNSMOS OVRL (1-5) of the synthesized query sentences

    interval = {"mean": m, "ci_low": lo, "ci_high": hi}: 95 % bootstrap over speakers (bootstrap.py); a value that
               could not be computed is NaN in memory and null in the file (JSON has no NaN)

Other documented keys:

    references       {"same_speaker": {metric: value}, "stranger": {metric: value}, "real": {metric: value}}:
                     same_speaker and stranger hold at least "similarity" and "eer" (references.ReferenceLevels);
                     real holds "cer", "wer" and "dnsmos" of the real recordings of the query sentences. A value is
                     a number (null if unavailable) or an interval.
    baselines_tuned  method → {"chosen": setting, "grid": [setting, ...], "scores": [number|null, ...],
                     "metric": name}: the setting (e.g. {"lr": 0.5} or {"lr": 1e-4, "optimizer": "adam"}) picked on
                     meta-val episodes by ``metric``; scores[i] is grid[i]'s; chosen is one of grid.
    vocoder          {"name": "hifigan" | "griffinlim", ...}
    seconds          wall seconds of the whole evaluation
    suite            the task suite evaluated (its fields, and the speakers seen)
    machine          ``runtime.env.machine_info()``

Step keys are integers in memory and strings in the file (JSON object keys are strings): ``steps_to_file`` and
``steps_from_file`` convert the metric tables at that boundary, and ``validate`` checks either form
(``in_file=True`` for a loaded file). Keys not listed here are allowed (the harness also writes per-episode rows,
compute, samples, ...), but a listed key must have its documented shape.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

METRIC_TABLES = ("similarity", "gap_closed", "eer", "mcd", "f0_rmse", "cer", "wer", "dnsmos")
INTERVAL_KEYS = ("mean", "ci_low", "ci_high")
REFERENCE_LEVELS = ("same_speaker", "stranger")
REFERENCE_LEVEL_METRICS = ("similarity", "eer")
REAL_METRICS = ("cer", "wer", "dnsmos")
REQUIRED = (*METRIC_TABLES, "references", "baselines_tuned", "vocoder", "seconds", "suite", "machine")


class SchemaError(ValueError):
    """A result that does not follow the schema; the message names the key path."""


def _fail(path: str, message: str):
    raise SchemaError(f"{path}: {message}")


def _number(value: Any, path: str, in_file: bool, nullable: bool = True) -> None:
    if value is None:
        if not nullable:
            _fail(path, "must be a number, got null")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(path, f"must be a number{' or null' if nullable else ''}, got {type(value).__name__} {value!r}")
    if in_file and not math.isfinite(value):
        _fail(path, f"non-finite {value!r} in a file (write null)")


def _mapping(value: Any, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        _fail(path, f"must be an object, got {type(value).__name__}")
    return value


def _interval(value: Any, path: str, in_file: bool) -> None:
    value = _mapping(value, path)
    missing = [k for k in INTERVAL_KEYS if k not in value]
    if missing:
        _fail(path, f"an interval needs {', '.join(INTERVAL_KEYS)}; missing {', '.join(missing)}")
    for key in INTERVAL_KEYS:
        _number(value[key], f"{path}.{key}", in_file)
    # Only the bounds' order is a rule: a percentile interval need not contain the point estimate (a skewed
    # statistic such as a pooled EER can sit outside its replicates' central 95 %).
    low, high = value["ci_low"], value["ci_high"]
    if all(v is not None and math.isfinite(v) for v in (low, high)) and low > high:
        _fail(path, f"needs ci_low <= ci_high, got {low} > {high}")


def _step_key(key: Any, path: str, in_file: bool) -> None:
    if in_file:
        if not (isinstance(key, str) and key.isdigit()):
            _fail(path, f"step keys in a file are strings of integers >= 0, got {key!r}")
    elif isinstance(key, bool) or not isinstance(key, int) or key < 0:
        _fail(path, f"step keys in memory are integers >= 0, got {key!r}")


def _value(value: Any, path: str, in_file: bool) -> None:
    if isinstance(value, Mapping):
        _interval(value, path, in_file)
    else:
        _number(value, path, in_file)


def validate(results: Mapping, *, in_file: bool = False) -> None:
    """Raise ``SchemaError`` (naming the key path) unless ``results`` has every documented key in its documented
    shape. ``in_file=True`` for a result read back from JSON (string step keys, null for NaN)."""
    results = _mapping(results, "results")
    missing = [k for k in REQUIRED if k not in results]
    if missing:
        _fail("results", f"missing {', '.join(missing)}")
    for metric in METRIC_TABLES:
        for method, steps in _mapping(results[metric], metric).items():
            if not isinstance(method, str):
                _fail(metric, f"method names are strings, got {method!r}")
            for step, interval in _mapping(steps, f"{metric}.{method}").items():
                _step_key(step, f"{metric}.{method}", in_file)
                _interval(interval, f"{metric}.{method}.{step}", in_file)

    references = _mapping(results["references"], "references")
    for level, metrics in ((lv, REFERENCE_LEVEL_METRICS) for lv in REFERENCE_LEVELS):
        table = _mapping(references.get(level), f"references.{level}")
        for metric in metrics:
            if metric not in table:
                _fail(f"references.{level}", f"missing {metric}")
        for metric, value in table.items():
            _value(value, f"references.{level}.{metric}", in_file)
    real = _mapping(references.get("real"), "references.real")
    for metric in REAL_METRICS:
        if metric not in real:
            _fail("references.real", f"missing {metric}")
    for metric, value in real.items():
        _value(value, f"references.real.{metric}", in_file)

    for method, tuned in _mapping(results["baselines_tuned"], "baselines_tuned").items():
        path = f"baselines_tuned.{method}"
        tuned = _mapping(tuned, path)
        for key in ("chosen", "grid", "scores", "metric"):
            if key not in tuned:
                _fail(path, f"missing {key}")
        chosen = _mapping(tuned["chosen"], f"{path}.chosen")
        grid, scores = tuned["grid"], tuned["scores"]
        if not isinstance(grid, list) or not grid:
            _fail(f"{path}.grid", "must be a non-empty list of settings")
        for i, setting in enumerate(grid):
            _mapping(setting, f"{path}.grid[{i}]")
        if not isinstance(scores, list) or len(scores) != len(grid):
            _fail(f"{path}.scores", f"must be a list of one score per grid setting ({len(grid)})")
        for i, score in enumerate(scores):
            _number(score, f"{path}.scores[{i}]", in_file)
        if dict(chosen) not in [dict(s) for s in grid]:
            _fail(f"{path}.chosen", f"{dict(chosen)} is not one of the grid's settings")
        if not isinstance(tuned["metric"], str) or not tuned["metric"]:
            _fail(f"{path}.metric", "must name the metric the choice was made by")

    vocoder = _mapping(results["vocoder"], "vocoder")
    if not isinstance(vocoder.get("name"), str) or not vocoder["name"]:
        _fail("vocoder.name", "must name the vocoder")
    _number(results["seconds"], "seconds", in_file, nullable=False)
    if results["seconds"] < 0:
        _fail("seconds", f"must be >= 0, got {results['seconds']}")
    _mapping(results["suite"], "suite")
    _mapping(results["machine"], "machine")


def _convert_steps(results: Mapping, convert) -> dict:
    out = dict(results)
    for metric in METRIC_TABLES:
        if metric in out and isinstance(out[metric], Mapping):
            out[metric] = {method: {convert(step): value for step, value in steps.items()}
                           for method, steps in out[metric].items()}
    return out


def steps_to_file(results: Mapping) -> dict:
    """A shallow copy of ``results`` with the metric tables' step keys as strings, for ``json.dumps``."""
    return _convert_steps(results, str)


def steps_from_file(results: Mapping) -> dict:
    """A shallow copy of a loaded result with the metric tables' step keys back as integers."""
    def to_int(step):
        if not (isinstance(step, str) and step.isdigit()):
            raise SchemaError(f"step key {step!r} is not an integer >= 0")
        return int(step)

    return _convert_steps(results, to_int)
