"""`metatts evaluate` on a tiny baseline and a tiny meta checkpoint initialized from it: every method gives finite
numbers at every step on the same frozen episodes, adaptation moves the query loss, the outputs exist, the ridge
projection recovers a known linear map, compute is recorded in checkpoints, and bad input exits 2 with one line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from metatts.cli import main
from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.tasks import frozen_episodes, load_task_suite
from metatts.evaluation.compute import training_compute
from metatts.evaluation.dvector import fit_ridge, ridge_loo_error
from metatts.evaluation import schema
from metatts.evaluation.harness import METHODS, EvaluationError, check_checkpoints, run_evaluation
from metatts.features.store import FeatureStore

from tiny import EVAL_STEPS as STEPS, QUIET  # the conftest fixtures tiny_runs and evaluation are built with these


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_method_gives_finite_numbers_at_every_step(evaluation):
    results, _ = evaluation
    assert results.methods == list(METHODS)
    for metric in ("similarity", "eer", "mcd", "mel_l1"):
        for method in METHODS:
            values = results.mean(metric, method)
            assert list(values) == list(STEPS), (metric, method)  # integer step keys
            assert all(v is not None and math.isfinite(v) for v in values.values()), (metric, method, values)
    for method in METHODS:
        assert all(0.0 <= v <= 1.0 for v in results.mean("eer", method).values())
        assert all(-1.0 <= v <= 1.0 for v in results.mean("similarity", method).values())
    # Flat methods repeat one evaluation; the gradient methods are scored at each step.
    for method in ("none", "dvector"):
        assert len(set(results.mean("mel_l1", method).values())) == 1
    assert len(set(results.mean("mel_l1", "meta").values())) == len(STEPS)


def test_methods_share_the_suites_frozen_episodes(evaluation, tiny_runs):
    results, _ = evaluation
    suite = load_task_suite(tiny_runs["suite"])
    store = FeatureStore(tiny_runs["store"])
    expected = frozen_episodes(suite, store, SpeakerSplits.load(tiny_runs["store"] / "splits.json"))
    assert [(e.speaker, list(e.support), list(e.query)) for e in results.episodes] == \
        [(e.speaker, list(e.support), list(e.query)) for e in expected]
    assert len({e.speaker for e in results.episodes}) == 2
    # The baseline, full fine-tuning and no adaptation start from the same model: on the same episodes their
    # step-0 numbers are identical, episode by episode.
    for metric in ("mel_l1", "similarity", "mcd"):
        rows = {m: [row[0] for row in results.tables[m][metric].per_episode] for m in ("baseline", "full", "none")}
        assert rows["baseline"] == rows["full"] == rows["none"], metric


def test_adaptation_lowers_the_query_loss(evaluation):
    results, _ = evaluation
    for method in ("baseline", "full", "meta"):
        first, last = results.mean("mel_l1", method)[STEPS[0]], results.mean("mel_l1", method)[STEPS[-1]]
        assert last < first, (method, first, last)


def test_outputs_exist(evaluation):
    results, out = evaluation
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["similarity"] == results.to_json()["similarity"]
    assert list(on_disk["similarity"]["meta"]) == [str(k) for k in STEPS]  # JSON keys are strings, at the edge only
    for key in ("similarity", "eer", "mcd", "f0_rmse", "mel_l1", "spread", "compute", "episodes", "suite",
                "checkpoints", "vocoder", "machine"):
        assert key in on_disk, key
    table = (out / "results.md").read_text()
    assert all(f"| {m}" in table for m in METHODS) and "compute" in table
    for png in ("similarity.png", "gap_closed.png", "eer.png"):
        assert (out / png).stat().st_size > 5000
    assert list((out / "tb").glob("events.out.tfevents.*"))
    speakers = {e.speaker for e in results.episodes}
    for method in ("meta", "baseline", "full"):
        for k in STEPS:
            assert {p.stem for p in (out / "samples" / method / f"step{k}").glob("*.wav")} == \
                {f"{s}-0" for s in speakers}
    assert len(list((out / "samples" / "none" / f"step{STEPS[0]}").glob("*.wav"))) == 2
    assert (out / "dvector_projection.safetensors").is_file() and (out / "cache" / "dvectors.npz").is_file()


def test_compute_is_recorded_and_the_meta_run_includes_its_initialization(evaluation, tiny_runs):
    results, _ = evaluation
    base = training_compute(tiny_runs["base"])
    assert base["updates"] == 40 and base["seconds"] > 0 and base["source"] == "checkpoint metadata"
    meta = results.compute["meta"]
    assert meta["updates"] == 43 and meta["init_from"]["compute"]["updates"] == 40
    assert meta["seconds"] > base["seconds"]
    assert results.compute["baseline"]["adapt_updates"] == STEPS[-1]
    assert results.compute["none"]["adapt_updates"] == 0
    assert all(results.compute[m]["adapt_seconds"] > 0 for m in ("meta", "baseline", "full", "dvector"))


def test_ridge_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 5)), rng.normal(size=5)
    x = rng.normal(size=(200, 8))
    fit = fit_ridge(x, x @ a + b, 1e-9)
    np.testing.assert_allclose(fit.weight, a, atol=1e-6)
    x_new = rng.normal(size=(3, 8))
    np.testing.assert_allclose(fit(x_new), x_new @ a + b, atol=1e-6)
    # Fewer rows than features (the d-vector case): the dual solution interpolates the rows, and a large penalty
    # shrinks every prediction to the mean row.
    wide = rng.normal(size=(6, 30))
    targets = rng.normal(size=(6, 4))
    np.testing.assert_allclose(fit_ridge(wide, targets, 1e-10)(wide), targets, atol=1e-6)
    np.testing.assert_allclose(fit_ridge(wide, targets, 1e9)(wide), np.tile(targets.mean(0), (6, 1)), atol=1e-6)
    # Leave-one-out error prefers a small penalty when the map is exactly linear.
    assert ridge_loo_error(x[:40], x[:40] @ a, 1e-6) < ridge_loo_error(x[:40], x[:40] @ a, 1e3)


def test_input_checks(tiny_runs, tmp_path):
    with pytest.raises(EvaluationError, match="unknown method 'maml'"):
        check_checkpoints(tiny_runs["meta"], tiny_runs["base"], ["meta", "maml"])
    with pytest.raises(EvaluationError, match="baseline .* is a 'meta' checkpoint"):
        check_checkpoints(tiny_runs["meta"], tiny_runs["meta"], ["meta", "baseline"])
    with pytest.raises(EvaluationError, match="not a meta-trained one"):
        check_checkpoints(tiny_runs["base"], tiny_runs["base"], ["meta", "baseline"])
    # Only what the methods need is required.
    assert check_checkpoints(None, tiny_runs["base"], ["baseline", "none"])[0] is None


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["evaluate", *argv, "--quiet"])
    return code, capsys.readouterr().err.strip()


def test_cli_errors_exit_2_with_one_line(tiny_runs, tmp_path, capsys):
    meta, base, suite = str(tiny_runs["meta"]), str(tiny_runs["base"]), str(tiny_runs["suite"])
    cases = [
        (["--checkpoint", str(tmp_path / "nope"), "--baseline", base, "--task", suite], "does not exist"),
        (["--checkpoint", meta, "--baseline", base, "--task", suite, "--methods", "meta", "magic"],
         "unknown method 'magic'"),
        (["--checkpoint", meta, "--baseline", meta, "--task", suite], "is a 'meta' checkpoint"),
        (["--checkpoint", meta, "--baseline", base, "--task", suite, "--features", str(tmp_path / "nostore"),
          "--out", str(tmp_path / "o")], "does not exist or is not prepared"),
        (["--baseline", base, "--task", suite], "need the meta checkpoint"),
    ]
    other = tmp_path / "other-symbols"
    shutil.copytree(tiny_runs["base"], other)
    info = json.loads((other / "meta.json").read_text())
    table = json.loads(info["symbols"])
    table["symbols" if isinstance(table, dict) and "symbols" in table else next(iter(table))].append("zz")
    info["symbols"] = json.dumps(table)
    (other / "meta.json").write_text(json.dumps(info))
    cases.append((["--checkpoint", meta, "--baseline", str(other), "--task", suite], "different phoneme symbol"))
    for argv, message in cases:
        code, err = _run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and message in err, (argv, err)


# ------------------------------------------------------------------------- references, tuning, on-the-fly suites
def test_results_follow_the_schema_with_references_intervals_and_listener_metrics(evaluation, tiny_runs):
    results, out = evaluation
    on_disk = json.loads((out / "results.json").read_text())
    schema.validate(on_disk, in_file=True)
    assert on_disk["vocoder"]["name"] == "hifigan"  # what `metatts synthesize` plays, by default
    refs = on_disk["references"]
    # On espeak voices a speaker's own recordings are closer to their support clips than another speaker's.
    assert refs["same_speaker"]["similarity"]["mean"] > refs["stranger"]["similarity"]["mean"]
    for metric in ("cer", "wer", "dnsmos"):
        assert refs["real"][metric]["mean"] is not None, metric
        for method in ("meta", "baseline"):
            assert all(cell["mean"] is not None for cell in on_disk[metric][method].values()), (metric, method)
    for method in ("meta", "baseline", "full"):
        for k, cell in on_disk["gap_closed"][method].items():
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"], (method, k, cell)
    # gap closed is each episode's similarity placed between its own stranger and same-speaker levels.
    similarity = np.asarray(results.tables["meta"]["similarity"].per_episode)
    gap = np.asarray(results.tables["meta"]["gap_closed"].per_episode)
    assert np.isfinite(gap).all() and not np.allclose(gap, similarity)
    assert set(on_disk["paired"]["gap_closed"]) == {"meta-baseline", "meta-full", "meta-none", "meta-dvector"}
    assert "Griffin-Lim by default" not in (out / "results.json").read_text()
    assert (out / "gap_closed.png").stat().st_size > 5000
    table = (out / "results.md").read_text()
    assert "real: same speaker" in table and "real recordings" in table and "chose" in table


def test_baselines_are_tuned_on_meta_val_speakers_only(evaluation, tiny_runs):
    results, _ = evaluation
    splits = SpeakerSplits.load(tiny_runs["store"] / "splits.json")
    tuned = results.baselines_tuned
    assert set(tuned) == {"baseline", "full"}
    for method, record in tuned.items():
        assert record["chosen"] in record["grid"] and len(record["scores"]) == len(record["grid"])
        finite = [(s, g) for s, g in zip(record["scores"], record["grid"]) if s is not None]
        assert min(finite, key=lambda pair: pair[0])[1] == record["chosen"]
        used = {e["speaker"] for e in record["episodes"]}
        assert used and used <= set(splits.val) and not used & set(splits.test), (method, used)
        ids = {u for e in record["episodes"] for u in e["support"] + e["query"]}
        test_ids = {u for e in results.episodes for u in (*e.support, *e.query)}
        assert not ids & test_ids
    assert results.settings["baseline_lr"] == tuned["baseline"]["chosen"]["lr"]
    assert results.settings["full_optimizer"] == tuned["full"]["chosen"]["optimizer"]


def test_tuning_adapts_nothing_but_meta_val_episodes(tiny_runs, tmp_path, monkeypatch):
    from metatts.evaluation import tuning

    seen = []
    real_score = tuning.setting_score

    def spy(method, episodes, grid):
        seen.extend((method.name, e.speaker) for e in episodes)
        return real_score(method, episodes, grid)

    monkeypatch.setattr(tuning, "setting_score", spy)
    run_evaluation(None, tiny_runs["base"], tiny_runs["suite"], tmp_path / "e", methods=["baseline"], steps=(0, 1),
                   vocoder="griffinlim", samples=0, threads=1, tensorboard=False, listener_steps=(), **QUIET)
    val = set(SpeakerSplits.load(tiny_runs["store"] / "splits.json").val)
    assert len(seen) == len(tuning_grid("baseline")) * len(val)
    assert {speaker for _, speaker in seen} == val
    # A rate fixed on the command line is used as given and not tuned.
    seen.clear()
    fixed = run_evaluation(None, tiny_runs["base"], tiny_runs["suite"], tmp_path / "f", methods=["baseline"],
                           steps=(0, 1), vocoder="griffinlim", samples=0, threads=1, tensorboard=False,
                           baseline_lr=0.05, listener_steps=(), **QUIET)
    assert not seen and fixed.baselines_tuned["baseline"]["chosen"] == {"lr": 0.05}
    assert fixed.baselines_tuned["baseline"]["metric"].startswith("not tuned")


def tuning_grid(name: str):
    from metatts.evaluation.methods import REGISTRY

    return REGISTRY[name].tuning_grid


def test_a_method_that_returns_the_real_audio_scores_as_the_real_speaker(tiny_runs, tmp_path, monkeypatch):
    """The references are computed with the pairing methods are scored with: an oracle whose 'synthesis' is the
    real query recordings closes the whole gap (1 in every episode) and reads at exactly the real CER."""
    from metatts.evaluation import harness
    from metatts.evaluation.methods import REGISTRY, Method
    from metatts.evaluation.scoring import Rendered

    class Oracle(Method):
        name, flat, measures = "oracle", True, "nothing"

        def adapter(self, episode):
            from metatts.evaluation.methods import FixedParams

            return FixedParams({})

        def render(self, params, query, reference, vocoder, encoder):
            return Rendered(waves=reference.real_waves(), embeddings=reference.embeddings, mel_l1=0.0,
                            sample_rate=reference.real.audio.sample_rate)

    monkeypatch.setitem(REGISTRY, "oracle", Oracle)
    monkeypatch.setattr(harness, "METHODS", (*harness.METHODS, "oracle"))
    result = run_evaluation(None, tiny_runs["base"], tiny_runs["suite"], tmp_path / "o", methods=["oracle"],
                            steps=(0,), vocoder="griffinlim", samples=0, threads=1, tensorboard=False, **QUIET)
    gap = np.asarray(result.tables["oracle"]["gap_closed"].per_episode)
    assert np.allclose(gap, 1.0)
    assert result.mean("similarity", "oracle")[0] == pytest.approx(result.references["same_speaker"]["similarity"].mean)
    for metric in ("cer", "wer"):
        assert result.mean(metric, "oracle")[0] == pytest.approx(result.references["real"][metric].mean)
    assert result.mean("eer", "oracle")[0] == pytest.approx(result.references["same_speaker"]["eer"].mean)


def test_an_on_the_fly_suite_needs_no_task_file(tiny_runs, tmp_path, capsys):
    from metatts.evaluation.harness import adhoc_suite

    store = FeatureStore(tiny_runs["store"])
    splits = SpeakerSplits.load(tiny_runs["store"] / "splits.json")
    frozen = frozen_episodes(load_task_suite(tiny_runs["suite"]), store, splits)
    adhoc = adhoc_suite(tiny_runs["store"], split="test", shots=2, queries=2, tasks_per_speaker=1, seed=0)
    assert [(e.speaker, e.support, e.query) for e in frozen_episodes(adhoc, store, splits)] == \
        [(e.speaker, e.support, e.query) for e in frozen]
    other = adhoc_suite(tiny_runs["store"], split="test", shots=2, queries=2, tasks_per_speaker=1, seed=1)
    assert [e.support for e in frozen_episodes(other, store, splits)] != [e.support for e in frozen]
    out = tmp_path / "fly"
    code = main(["evaluate", "--baseline", str(tiny_runs["base"]), "--features", str(tiny_runs["store"]),
                 "--shots", "2", "--queries", "2", "--tasks-per-speaker", "1", "--steps", "0", "1",
                 "--methods", "baseline", "none", "--baseline-lr", "0.1", "--vocoder", "griffinlim",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    on_disk = json.loads((out / "results.json").read_text())
    assert [(e["speaker"], e["support"], e["query"]) for e in on_disk["episodes"]] == \
        [(e.speaker, list(e.support), list(e.query)) for e in frozen]
    assert on_disk["suite"]["split"] == "test" and on_disk["steps"] == [0, 1]
    code = main(["evaluate", "--baseline", str(tiny_runs["base"]), "--quiet"])
    assert code == 2 and "--features" in capsys.readouterr().err


def test_a_rerun_reads_every_score_from_the_cache(evaluation, tiny_runs, monkeypatch):
    """An evaluation stopped, extended or split over processes redoes nothing: the same run again renders no
    sentence and tunes nothing, and gives the same numbers."""
    from metatts.evaluation import tuning
    from metatts.evaluation.methods import Method

    results, out = evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed what the cache holds")

    monkeypatch.setattr(Method, "render", refuse)
    monkeypatch.setattr(tuning, "setting_score", refuse)
    again = run_evaluation(tiny_runs["meta"], tiny_runs["base"], tiny_runs["suite"], out, steps=STEPS, samples=1,
                           threads=1, tensorboard=False, **QUIET)
    for metric in ("gap_closed", "similarity", "cer", "dnsmos", "mcd"):
        for method in METHODS:
            assert again.tables[method][metric].per_episode == results.tables[method][metric].per_episode
    assert again.samples == results.samples and again.baselines_tuned == results.baselines_tuned


def test_listener_steps_limit_the_costly_scorers(tiny_runs, tmp_path):
    """CER, WER and DNSMOS cost seconds per sentence: --listener-steps scores them only at those step counts (the
    others are null), while similarity and the rest are scored at every step."""
    result = run_evaluation(None, tiny_runs["base"], tiny_runs["suite"], tmp_path / "l", methods=["baseline"],
                            steps=(0, 1), vocoder="griffinlim", samples=0, threads=1, tensorboard=False,
                            baseline_lr=0.1, listener_steps=(1, 7), **QUIET)
    for metric in ("cer", "wer", "dnsmos"):
        values = result.mean(metric, "baseline")
        assert math.isnan(values[0]) and math.isfinite(values[1]), (metric, values)
    assert all(math.isfinite(v) for v in result.mean("similarity", "baseline").values())
    assert result.settings["listener_steps"] == [1]
