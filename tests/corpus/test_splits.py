"""Speaker splits: deterministic, disjoint, minimum-utterance exclusion, saved and reused without reshuffling."""

from __future__ import annotations

import json

import pytest

from metatts.corpus.splits import ALL, SpeakerSplits, SplitError, load_or_make, make_splits

COUNTS = {f"s{i:02d}": 20 for i in range(30)} | {"tiny1": 3, "tiny2": 9}


def test_deterministic_disjoint_and_complete():
    a = make_splits(COUNTS, val_speakers=3, test_speakers=5, seed=7, min_utterances=10)
    b = make_splits(dict(reversed(list(COUNTS.items()))), val_speakers=3, test_speakers=5, seed=7, min_utterances=10)
    assert a == b  # the order of the counts does not matter
    assert (len(a.train), len(a.val), len(a.test)) == (22, 3, 5)
    assert not (set(a.train) & set(a.val) or set(a.train) & set(a.test) or set(a.val) & set(a.test))
    assert sorted(a.train + a.val + a.test + list(a.excluded)) == sorted(COUNTS)
    assert a.train == sorted(a.train) and a.role(a.test[0]) == "test"
    c = make_splits(COUNTS, val_speakers=3, test_speakers=5, seed=8, min_utterances=10)
    assert c.test != a.test  # the seed matters


def test_split_does_not_depend_on_global_random_state():
    import random

    random.seed(1)
    a = make_splits(COUNTS, 2, 2, seed=0, min_utterances=1)
    random.seed(2)
    assert make_splits(COUNTS, 2, 2, seed=0, min_utterances=1) == a


def test_min_utterances_excludes_with_reason():
    splits = make_splits(COUNTS, val_speakers=1, test_speakers=1, seed=0, min_utterances=10)
    assert set(splits.excluded) == {"tiny1", "tiny2"}
    assert "3 utterances" in splits.excluded["tiny1"] and "10" in splits.excluded["tiny1"]
    assert "tiny2" not in splits.speakers() and splits.role("tiny2") == "excluded"


def test_adding_a_speaker_moves_at_most_one_held_out_speaker():
    before = make_splits(COUNTS, val_speakers=3, test_speakers=5, seed=0, min_utterances=10)
    after = make_splits(COUNTS | {"newcomer": 20}, val_speakers=3, test_speakers=5, seed=0, min_utterances=10)
    assert len(set(before.test) - set(after.test)) <= 1


def test_not_enough_speakers_is_a_clear_error():
    with pytest.raises(SplitError, match="not enough speakers: 2 of 4 .* = 3 are needed"):
        make_splits({"a": 10, "b": 10, "c": 1, "d": 1}, val_speakers=1, test_speakers=2, seed=0, min_utterances=5)
    with pytest.raises(SplitError):
        make_splits({"a": 10}, val_speakers=0, test_speakers=0, seed=0, min_utterances=11)


def test_a_test_only_store_holds_every_speaker_out():
    splits = make_splits({"a": 10, "b": 10, "c": 1}, val_speakers=0, test_speakers=2, seed=0, min_utterances=5)
    assert splits.train == [] and splits.test == ["a", "b"] and set(splits.excluded) == {"c"}


def test_save_load_round_trip_is_atomic_json(tmp_path):
    splits = make_splits(COUNTS, 2, 3, seed=4, min_utterances=10)
    path = tmp_path / "runs" / "splits.json"
    splits.save(path)
    assert SpeakerSplits.load(path) == splits
    assert json.loads(path.read_text())["test"] == splits.test
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left behind


def test_load_rejects_malformed_and_overlapping(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(SplitError, match="not valid JSON"):
        SpeakerSplits.load(path)
    path.write_text(json.dumps({"format": 1, "seed": 0, "min_utterances": 1, "train": ["a"], "val": ["a"],
                                "test": [], "excluded": {}}))
    with pytest.raises(SplitError, match="'a' is in both train and val"):
        SpeakerSplits.load(path)


def test_load_or_make_makes_then_reuses(tmp_path):
    path = tmp_path / "splits.json"
    made = load_or_make(path, COUNTS, 2, 3, seed=0, min_utterances=10)
    assert SpeakerSplits.load(path) == made
    # Hand-pick a held-out speaker: the saved split, not a freshly made one, must come back.
    picked = made.train[0]
    edited = SpeakerSplits(train=sorted(made.train[1:] + [made.test[0]]), val=made.val,
                           test=sorted(made.test[1:] + [picked]), excluded=made.excluded, seed=0, min_utterances=10)
    edited.save(path)
    assert load_or_make(path, COUNTS, 2, 3, seed=0, min_utterances=10) == edited != made


def test_load_or_make_adds_new_speakers_to_train_only(tmp_path):
    path = tmp_path / "splits.json"
    made = load_or_make(path, COUNTS, 2, 3, seed=0, min_utterances=10)
    grown = COUNTS | {"new_big": 50, "new_small": 2, "tiny2": 12}  # tiny2 was excluded and has grown
    reused = load_or_make(path, grown, 2, 3, seed=0, min_utterances=10)
    assert (reused.val, reused.test) == (made.val, made.test)
    assert set(reused.train) == set(made.train) | {"new_big", "tiny2"}
    assert set(reused.excluded) == {"tiny1", "new_small"}
    assert SpeakerSplits.load(path) == reused


def test_load_or_make_refuses_when_speakers_are_gone_or_settings_differ(tmp_path):
    path = tmp_path / "splits.json"
    made = load_or_make(path, COUNTS, 2, 3, seed=0, min_utterances=10)
    gone = made.test[0]
    shrunk = made.val[0]
    counts = {s: c for s, c in COUNTS.items() if s != gone} | {shrunk: 4}
    with pytest.raises(SplitError) as err:
        load_or_make(path, counts, 2, 3, seed=0, min_utterances=10)
    assert gone in str(err.value) and f"{shrunk} (4)" in str(err.value) and "delete the file" in str(err.value)
    with pytest.raises(SplitError, match=r"seed 0 \(asked 1\)"):
        load_or_make(path, COUNTS, 2, 3, seed=1, min_utterances=10)
    with pytest.raises(SplitError, match=r"test_speakers 3 \(asked 4\)"):
        load_or_make(path, COUNTS, 2, 4, seed=0, min_utterances=10)
    assert SpeakerSplits.load(path) == made  # a refused reuse leaves the file alone


def test_real_corpus_split(speechocean):
    from metatts.corpus.readers import read_corpus

    counts = read_corpus(speechocean).speakers()
    splits = make_splits(counts, val_speakers=4, test_speakers=8, seed=0, min_utterances=10)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.excluded) == (84, 4, 8, {})


def test_a_test_only_store_holds_out_every_speaker_without_counting_them(tmp_path):
    counts = {"a": 12, "b": 11, "c": 3, "d": 10}  # c lost utterances to a length filter: excluded, not counted
    splits = make_splits(counts, val_speakers=0, test_speakers=ALL, seed=0, min_utterances=10)
    assert splits.test == ["a", "b", "d"] and splits.train == [] and "c" in splits.excluded
    path = tmp_path / "splits.json"
    assert load_or_make(path, counts, 0, ALL, 0, 10) == splits
    assert load_or_make(path, counts, 0, ALL, 0, 10).test == ["a", "b", "d"]  # reused: the same settings
    with pytest.raises(SplitError, match="other settings"):
        load_or_make(path, counts, 0, 2, 0, 10)
    with pytest.raises(SplitError, match="must be >= 0"):
        make_splits(counts, 0, -2, 0, 10)
    from metatts.config import ConfigError, config_from_dict

    assert config_from_dict({}, ["data.test_speakers=-1"]).data.test_speakers == ALL
    with pytest.raises(ConfigError, match="data.test_speakers"):
        config_from_dict({}, ["data.test_speakers=-2"])
