"""The evaluation result schema: a result built from the real building blocks validates in memory and in its file;
each documented rule rejects what breaks it, naming the key path."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from metatts.evaluation.bootstrap import as_table, intervals_by_step
from metatts.evaluation.references import EpisodeEmbeddings, reference_levels
from metatts.evaluation.schema import METRIC_TABLES, SchemaError, steps_from_file, steps_to_file, validate


def _result() -> dict:
    rng = np.random.default_rng(0)
    speakers = [f"s{i}" for i in range(4) for _ in range(2)]
    steps = [0, 5, 20]
    tables = {metric: {method: as_table(intervals_by_step(rng.normal(size=(8, 3)), steps, speakers, n_resamples=200))
                       for method in ("meta", "baseline")} for metric in METRIC_TABLES}
    tables["cer"]["meta"][20]["mean"] = math.nan  # a value that could not be computed
    tables["cer"]["meta"][20]["ci_low"] = tables["cer"]["meta"][20]["ci_high"] = math.nan
    centres = np.abs(rng.normal(size=(4, 16)))
    episodes = [EpisodeEmbeddings(s, query=centres[int(s[1])] + rng.random((3, 16)),
                                  support=centres[int(s[1])] + rng.random((3, 16))) for s in speakers]
    references = reference_levels(episodes).summary()
    references["real"] = {"cer": 0.44, "wer": 0.61, "dnsmos": {"mean": 3.2, "ci_low": 3.1, "ci_high": 3.3}}
    return {**tables, "references": references,
            "baselines_tuned": {"baseline": {"chosen": {"lr": 0.5}, "grid": [{"lr": 0.1}, {"lr": 0.5}],
                                             "scores": [0.61, 0.66], "metric": "similarity"},
                                "full": {"chosen": {"lr": 1e-4, "optimizer": "adam"},
                                         "grid": [{"lr": 1e-4, "optimizer": "adam"}, {"lr": 1e-3, "optimizer": "sgd"}],
                                         "scores": [0.6, None], "metric": "similarity"}},
            "vocoder": {"name": "hifigan", "class": "HifiGan"}, "seconds": 812.5,
            "suite": {"name": "speechocean762-test", "speakers": ["s0", "s1"]}, "machine": {"cpus": 2},
            "per_episode": {"similarity": {}}}  # undocumented keys are allowed


def _file_form(result: dict) -> dict:
    def clean(value):  # what the harness's _clean does: NaN -> null
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.loads(json.dumps(clean(steps_to_file(result)), allow_nan=False))


def test_a_result_validates_in_memory_and_in_its_file_and_comes_back():
    result = _result()
    validate(result)
    loaded = _file_form(result)
    assert set(loaded["similarity"]["meta"]) == {"0", "5", "20"}
    validate(loaded, in_file=True)
    back = steps_from_file(loaded)
    assert set(back["wer"]["baseline"]) == {0, 5, 20}
    assert back["similarity"]["meta"][5] == pytest.approx(result["similarity"]["meta"][5])
    validate(back)
    with pytest.raises(SchemaError, match="step keys in a file are strings"):
        validate(result, in_file=True)
    with pytest.raises(SchemaError, match="step keys in memory are integers"):
        validate(loaded)
    with pytest.raises(SchemaError, match="not an integer"):
        steps_from_file({"eer": {"meta": {"five": {}}}})


def _broken(edit) -> dict:
    result = copy.deepcopy(_result())
    edit(result)
    return result


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("dnsmos"), "results: missing dnsmos"),
    (lambda r: r.pop("machine"), "results: missing machine"),
    (lambda r: r["eer"]["meta"][5].pop("ci_high"), r"eer\.meta\.5: an interval needs"),
    (lambda r: r["mcd"]["baseline"][0].update(ci_low=9.0, ci_high=8.0), r"mcd\.baseline\.0: needs ci_low <= ci_high"),
    (lambda r: r["wer"]["meta"][0].update(mean="0.5"), r"wer\.meta\.0\.mean: must be a number"),
    (lambda r: r["references"]["stranger"].pop("eer"), r"references\.stranger: missing eer"),
    (lambda r: r["references"]["real"].pop("dnsmos"), r"references\.real: missing dnsmos"),
    (lambda r: r["references"].pop("same_speaker"), r"references\.same_speaker: must be an object"),
    (lambda r: r["baselines_tuned"]["baseline"].update(chosen={"lr": 2.0}), "is not one of the grid"),
    (lambda r: r["baselines_tuned"]["full"]["scores"].pop(), "one score per grid setting"),
    (lambda r: r["baselines_tuned"]["full"].pop("metric"), r"baselines_tuned\.full: missing metric"),
    (lambda r: r.update(vocoder={"class": "GriffinLim"}), "vocoder.name"),
    (lambda r: r.update(seconds=-1.0), "seconds: must be >= 0"),
    (lambda r: r.update(suite="speechocean762"), "suite: must be an object"),
])
def test_each_rule_rejects_what_breaks_it(edit, message):
    with pytest.raises(SchemaError, match=message):
        validate(_broken(edit))


def test_a_file_has_no_nan():
    loaded = _file_form(_result())
    loaded["similarity"]["meta"]["0"]["mean"] = math.nan
    with pytest.raises(SchemaError, match=r"similarity\.meta\.0\.mean: non-finite"):
        validate(loaded, in_file=True)
