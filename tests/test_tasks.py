"""Task suites: every shipped suite loads and names its command; bad keys fail by name; frozen episodes are a
function of the suite and the store alone (not of the global RNG or the manifest order); small speakers are
skipped with the reason."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.tasks import (TaskSuite, TaskSuiteError, episodes_digest, frozen_episodes, load_task_suite,
                                    suite_speakers)
from metatts.features.store import FeatureStore
from metatts.text.symbols import SymbolTable

TASKS = Path(__file__).resolve().parents[1] / "tasks"
SUITE = """# metatts tasks suite.yaml
corpus: toy
features: {features}
split: test
shots: 2
queries: 3
tasks_per_speaker: 3
seed: 7
step_grid: [0, 1, 5]
"""


@pytest.mark.parametrize("path", sorted(TASKS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_loads_and_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# metatts ") and str(path.relative_to(TASKS.parent)) in first, first
    suite = load_task_suite(path)
    assert suite.name == path.stem and suite.split in ("test", "val")
    assert 5 in suite.step_grid  # the meta-trained step count is on every grid


def test_shipped_suites_exist():
    assert {p.name for p in TASKS.glob("*.yaml")} >= {"demo.yaml", "speechocean762.yaml"}


def _store(root: Path, counts: dict[str, int], *, shuffle: int | None = None) -> tuple[FeatureStore, SpeakerSplits]:
    """A manifest-only store (episodes need ids and speakers, not features) and its split."""
    root.mkdir(parents=True, exist_ok=True)
    entries = [{"id": f"{s}_{i:03d}", "speaker": s, "text": "x", "phonemes": ["a"], "frames": 10, "seconds": 0.1,
                "path": f"utts/{s}_{i}.safetensors", "audio_path": "", "corpus": "toy"}
               for s, n in counts.items() for i in range(n)]
    if shuffle is not None:
        random.Random(shuffle).shuffle(entries)
    (root / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    stats = {"log_f0_mean": 5.0, "log_f0_std": 0.3, "energy_mean": 0.0, "energy_std": 1.0, "utterances": 1}
    (root / "stats.json").write_text(json.dumps({"global": stats, "speakers": {}}))
    (root / "symbols.json").write_text(SymbolTable().to_json())
    speakers = sorted(counts)
    splits = SpeakerSplits(train=speakers[:1], val=[], test=speakers[1:])
    return FeatureStore(root), splits


def _suite(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text if text is not None else SUITE.format(features=tmp_path / "store"))
    return path


COUNTS = {"a": 9, "b": 8, "c": 12, "d": 4}  # a trains; b, c, d are test speakers; d is too small (needs 5)


def test_frozen_episodes_are_a_function_of_the_suite_and_the_store(tmp_path):
    store, splits = _store(tmp_path / "store", COUNTS)
    suite = load_task_suite(_suite(tmp_path))
    skipped = []
    random.seed(1)
    torch.manual_seed(1)
    episodes = frozen_episodes(suite, store, splits, log=skipped.append)
    assert [e.speaker for e in episodes] == ["b"] * 3 + ["c"] * 3
    for e in episodes:
        assert len(e.support) == 2 and len(e.query) == 3 and not set(e.support) & set(e.query)
        assert all(i.startswith(e.speaker + "_") for i in e.support + e.query)
    assert len({(e.support, e.query) for e in episodes}) == 6  # the tasks of a speaker differ
    assert skipped == ["task suite suite: skipped speaker d: 4 prepared utterances, an episode needs 5 "
                       "(2 shots + 3 queries)"]
    # Global RNG state and manifest order do not matter; the digest pins the list.
    random.seed(99)
    torch.manual_seed(99)
    reordered, _ = _store(tmp_path / "shuffled", COUNTS, shuffle=3)
    again = frozen_episodes(suite, reordered, splits)
    assert again == episodes and episodes_digest(again) == episodes_digest(episodes)
    # Another seed draws other episodes; one speaker's episodes do not depend on which other speakers exist.
    other = frozen_episodes(TaskSuite(**{**suite.__dict__, "seed": 8}), store, splits)
    assert episodes_digest(other) != episodes_digest(episodes)
    fewer = SpeakerSplits(train=["a"], val=[], test=["c"])
    assert frozen_episodes(suite, store, fewer) == episodes[3:]


def test_suite_speakers_lists_the_skipped_with_reasons_and_val_split(tmp_path):
    store, _ = _store(tmp_path / "store", COUNTS)
    splits = SpeakerSplits(train=["a"], val=["b", "d"], test=["c"])
    suite = TaskSuite(**{**load_task_suite(_suite(tmp_path)).__dict__, "split": "val"})
    usable, skipped = suite_speakers(suite, store, splits)
    assert usable == ["b"] and list(skipped) == ["d"] and "4 prepared utterances" in skipped["d"]
    with pytest.raises(TaskSuiteError, match="no val speaker"):
        frozen_episodes(suite, store, SpeakerSplits(train=["a", "b", "c"], val=["d"], test=[]))


def test_the_store_must_hold_the_suites_corpus_and_features_can_be_overridden(tmp_path):
    store, splits = _store(tmp_path / "store", COUNTS)
    path = _suite(tmp_path, SUITE.format(features="nowhere").replace("corpus: toy", "corpus: vctk"))
    suite = load_task_suite(path, features=tmp_path / "store")
    assert suite.features == str(tmp_path / "store")
    with pytest.raises(TaskSuiteError, match="for corpus 'vctk' but the store .* holds toy"):
        frozen_episodes(suite, store, splits)


@pytest.mark.parametrize("change, message", [
    (("shots: 2", "shots: 2\nshot: 3"), "shot: unknown key"),
    (("split: test", "split: train"), "split: must be test or val"),
    (("step_grid: [0, 1, 5]", "step_grid: [0, 5, 1]"), "step_grid: must be strictly increasing"),
    (("queries: 3", "queries: three"), "queries: expected int"),
    (("seed: 7\n", ""), "seed: missing key"),
    (("tasks_per_speaker: 3", "tasks_per_speaker: 0"), "tasks_per_speaker: must be at least 1"),
])
def test_bad_suites_fail_naming_the_key(tmp_path, change, message):
    text = SUITE.format(features="store").replace(*change)
    with pytest.raises(TaskSuiteError, match=message):
        load_task_suite(_suite(tmp_path, text))


def test_missing_or_non_mapping_suite_files_are_errors(tmp_path):
    with pytest.raises(TaskSuiteError, match="does not exist"):
        load_task_suite(tmp_path / "absent.yaml")
    with pytest.raises(TaskSuiteError, match="mapping"):
        load_task_suite(_suite(tmp_path, "- just\n- a list\n"))
