"""Few-shot benchmark task suites: a YAML in ``tasks/`` fixes which episodes every method is evaluated on.

A suite names a corpus and its feature store, a split of held-out speakers (``test``, or ``val``), the episode shape
(shots, queries), how many tasks each speaker gives, a seed and the grid of inner-step counts to evaluate::

    # metatts tasks tasks/demo.yaml --checkpoint runs/demo/meta/checkpoint
    corpus: demo-corpus
    features: runs/demo/features
    split: test
    shots: 5
    queries: 5
    tasks_per_speaker: 4
    seed: 0
    step_grid: [0, 1, 2, 5, 10, 20]

``frozen_episodes`` derives the episode list from the suite, the store and the speaker split alone: episode ``i``
of a speaker is a draw from a local generator seeded with ``(seed, speaker, i)`` over the speaker's sorted
utterance ids, so it does not depend on the global RNG, on the other speakers, or on the order of the manifest.
``episodes_digest`` fingerprints the list, so two machines can check they evaluated the same episodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from metatts.corpus.splits import SpeakerSplits
from metatts.episodes.sampler import Episode, EpisodeSampler
from metatts.features.store import FeatureStore

SPLITS = ("test", "val")


class TaskSuiteError(ValueError):
    """A task suite file is malformed, or does not fit the feature store it is used with."""


@dataclass(frozen=True)
class TaskSuite:
    """One benchmark: which speakers, how many clips, which step counts. Every key of the YAML is a field here."""

    corpus: str  # corpus name the suite is written for (the store's utterances must carry it)
    features: str  # feature store folder; override it with --features (or ``load_task_suite(features=...)``)
    split: str  # held-out speakers to draw tasks from: test (meta-test) or val (meta-validation)
    shots: int  # support utterances per task (the clips a new speaker gives)
    queries: int  # query utterances per task, disjoint from the support, on which the loss is measured
    tasks_per_speaker: int  # episodes drawn per speaker (different support/query draws)
    seed: int  # seed of the episode draws
    step_grid: list[int] = field(default_factory=lambda: [0, 1, 2, 5, 10, 20])  # inner-step counts evaluated
    name: str = ""  # label in reports; defaults to the file's stem

    def check(self, source: str = "suite") -> None:
        def require(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise TaskSuiteError(f"{source}: {key}: {message}")

        require(self.split in SPLITS, "split", f"must be test or val, got {self.split!r}")
        require(bool(self.corpus), "corpus", "must not be empty")
        require(bool(self.features), "features", "must not be empty")
        require(self.shots >= 1, "shots", "must be at least 1")
        require(self.queries >= 1, "queries", "must be at least 1")
        require(self.tasks_per_speaker >= 1, "tasks_per_speaker", "must be at least 1")
        require(len(self.step_grid) > 0, "step_grid", "must not be empty")
        require(all(s >= 0 for s in self.step_grid), "step_grid", "steps must be >= 0")
        require(list(self.step_grid) == sorted(set(self.step_grid)), "step_grid", "must be strictly increasing")


def _typed(value, annotation: str, key: str, source: str):
    kind = {"str": str, "int": int, "list[int]": list}[annotation]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and annotation == "list[int]":
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise TaskSuiteError(f"{source}: {key}: expected {annotation.replace('str', 'a string')}, got {value!r}")
    return list(value) if annotation == "list[int]" else value


def load_task_suite(path: str | Path, *, features: str | Path | None = None) -> TaskSuite:
    """Read and validate a suite; unknown or missing keys raise naming the key. ``features`` overrides the
    store path the file gives (e.g. a store prepared elsewhere)."""
    path = Path(path)
    if not path.is_file():
        raise TaskSuiteError(f"task suite {path} does not exist")
    from metatts.config import ConfigError
    from metatts.config.load import load_yaml

    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))  # no tags, no aliases, one-line errors
    except UnicodeDecodeError as error:
        raise TaskSuiteError(f"{path}: not UTF-8 text ({error.reason})") from None
    except ConfigError as error:
        raise TaskSuiteError(str(error)) from None
    if not isinstance(data, dict):
        raise TaskSuiteError(f"{path}: the top level must be a mapping of suite keys")
    fields = {f.name: f for f in dataclasses.fields(TaskSuite)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TaskSuiteError(f"{path}: {unknown[0]}: unknown key (known keys: {', '.join(fields)})")
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise TaskSuiteError(f"{path}: {missing[0]}: missing key (required: {', '.join(required)})")
    values = {key: _typed(value, str(fields[key].type), key, str(path)) for key, value in data.items()}
    values.setdefault("name", path.stem)
    if features is not None:
        values["features"] = str(features)
    suite = TaskSuite(**values)
    suite.check(str(path))
    return suite


def suite_speakers(suite: TaskSuite, store: FeatureStore, splits: SpeakerSplits) -> tuple[list[str], dict[str, str]]:
    """(speakers that give episodes, {skipped speaker: reason}) for the suite's split of this store."""
    corpora = {entry.corpus for entry in store.entries}
    if suite.corpus not in corpora:
        raise TaskSuiteError(f"suite {suite.name!r} is for corpus {suite.corpus!r} but the store {store.root} holds "
                             f"{', '.join(sorted(corpora)) or 'nothing'}: pass the matching --features")
    by_speaker = store.speakers()
    need = suite.shots + suite.queries
    usable, skipped = [], {}
    for speaker in sorted(getattr(splits, suite.split)):
        count = len(by_speaker.get(speaker, []))
        if count >= need:
            usable.append(speaker)
        else:
            skipped[speaker] = (f"{count} prepared utterances, an episode needs {need} "
                                f"({suite.shots} shots + {suite.queries} queries)")
    return usable, skipped


def frozen_episodes(suite: TaskSuite, store: FeatureStore, splits: SpeakerSplits, *,
                    log: Callable[[str], None] | None = None) -> list[Episode]:
    """The suite's episodes, speaker by speaker (sorted) and ``tasks_per_speaker`` each; speakers that cannot
    give ``shots + queries`` utterances are skipped, each reported through ``log`` with the reason."""
    usable, skipped = suite_speakers(suite, store, splits)
    for speaker, reason in skipped.items():
        if log is not None:
            log(f"task suite {suite.name}: skipped speaker {speaker}: {reason}")
    if not usable:
        raise TaskSuiteError(f"suite {suite.name!r}: no {suite.split} speaker of {store.root} can give an episode "
                             f"({len(skipped)} skipped)")
    by_speaker = store.speakers()
    sampler = EpisodeSampler({s: [e.id for e in by_speaker[s]] for s in usable}, suite.shots, suite.queries,
                             seed=suite.seed)
    return [sampler.episode(speaker, index) for speaker in usable for index in range(suite.tasks_per_speaker)]


def episodes_digest(episodes: list[Episode]) -> str:
    """Short content hash of an episode list (speakers, support and query ids, in order)."""
    text = json.dumps([[e.speaker, list(e.support), list(e.query)] for e in episodes])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
