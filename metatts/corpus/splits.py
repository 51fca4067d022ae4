"""Speaker splits: which speakers meta-train, which validate, which are held out for the few-shot tests.

How speakers are drawn: each eligible speaker gets a key, ``sha256(f"{seed}:{speaker}")``, and speakers are ranked
by it; the first ``test_speakers`` are held out for testing, the next ``val_speakers`` validate, the rest train.
``test_speakers = ALL`` (-1) holds out every eligible speaker that does not validate, without counting them.
A per-speaker key, rather than one shuffle of the whole list, makes the split stable as a corpus changes: adding
or removing one speaker moves at most one speaker between roles instead of reshuffling all of them. SHA-256
rather than ``hash()`` or ``random`` so the same seed gives the same split on every machine and Python version.

Policy of ``load_or_make`` (a user's held-out speakers are never silently reshuffled):
- no saved split: make one and save it;
- a saved split made with the same settings whose speakers all still exist with at least ``min_utterances``:
  reuse it. Speakers without a role (new to the corpus, or excluded before and now large enough) join train,
  and the file is updated; val and test never change;
- a saved split made with other settings, or naming speakers that are gone or now too small: ``SplitError``
  saying which, and that deleting the file makes a new split.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
ALL = -1  # test_speakers = ALL: every eligible speaker not validating is held out (a test-only store), uncounted


class SplitError(ValueError):
    """Not enough speakers, or a saved split that no longer fits the corpus or the requested settings."""


@dataclass
class SpeakerSplits:
    """Disjoint, sorted lists of speaker ids per role; ``excluded`` maps left-out speakers to the reason."""

    train: list[str]
    val: list[str]
    test: list[str]
    excluded: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    min_utterances: int = 1

    def __post_init__(self) -> None:
        roles = {"train": self.train, "val": self.val, "test": self.test, "excluded": list(self.excluded)}
        seen: dict[str, str] = {}
        for role, speakers in roles.items():
            for speaker in speakers:
                if speaker in seen:
                    raise SplitError(f"speaker {speaker!r} is in both {seen[speaker]} and {role}")
                seen[speaker] = role

    def role(self, speaker: str) -> str:
        """``train``, ``val``, ``test`` or ``excluded``; KeyError for a speaker the split does not know."""
        for role in ("train", "val", "test"):
            if speaker in getattr(self, role):
                return role
        if speaker in self.excluded:
            return "excluded"
        raise KeyError(speaker)

    def speakers(self) -> list[str]:
        """Every speaker that has a role (excluded ones are not), sorted."""
        return sorted(self.train + self.val + self.test)

    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "seed": self.seed, "min_utterances": self.min_utterances,
                "train": self.train, "val": self.val, "test": self.test, "excluded": self.excluded}

    @classmethod
    def from_dict(cls, data: dict, source: str = "split") -> SpeakerSplits:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise SplitError(f"{source}: not a speaker split of format {FORMAT_VERSION}")
        try:
            splits = cls(train=list(data["train"]), val=list(data["val"]), test=list(data["test"]),
                         excluded=dict(data["excluded"]), seed=int(data["seed"]),
                         min_utterances=int(data["min_utterances"]))
        except (KeyError, TypeError, ValueError) as err:
            raise SplitError(f"{source}: malformed speaker split ({err})") from None
        for role in ("train", "val", "test"):
            if not all(isinstance(s, str) for s in getattr(splits, role)):
                raise SplitError(f"{source}: {role} must be a list of speaker id strings")
        return splits

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically (temporary file + rename), so an interrupted run never leaves half a split."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SpeakerSplits:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SplitError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


def _rank_key(seed: int, speaker: str) -> str:
    return hashlib.sha256(f"{seed}:{speaker}".encode("utf-8")).hexdigest()


def _eligibility(speaker_counts: dict[str, int], min_utterances: int) -> tuple[list[str], dict[str, str]]:
    eligible, excluded = [], {}
    for speaker, count in sorted(speaker_counts.items()):
        if count >= min_utterances:
            eligible.append(speaker)
        else:
            excluded[speaker] = f"{count} utterances, fewer than min_utterances = {min_utterances}"
    return eligible, excluded


def make_splits(speaker_counts: dict[str, int], val_speakers: int, test_speakers: int, seed: int,
                min_utterances: int) -> SpeakerSplits:
    """Split speakers (speaker id -> usable utterances) into train/val/test; deterministic in ``seed``.
    Every speaker may be held out: a test-only store (LibriTTS test-clean beside a train-clean-100 one) is how a
    corpus's own test subset becomes a task suite; training on a store without train speakers fails clearly."""
    if val_speakers < 0 or (test_speakers < 0 and test_speakers != ALL):
        raise SplitError(f"speaker counts must be >= 0 (test_speakers may be {ALL}: all), got "
                         f"val_speakers={val_speakers}, test_speakers={test_speakers}")
    if min_utterances < 1:
        raise SplitError(f"min_utterances must be at least 1, got {min_utterances}")
    eligible, excluded = _eligibility(speaker_counts, min_utterances)
    if test_speakers == ALL:
        test_speakers = max(len(eligible) - val_speakers, 1)
    needed = max(1, val_speakers + test_speakers)
    if len(eligible) < needed:
        raise SplitError(
            f"not enough speakers: {len(eligible)} of {len(speaker_counts)} have at least {min_utterances} "
            f"utterances, and {test_speakers} test + {val_speakers} val = {needed} are needed (at least 1); "
            f"lower data.test_speakers, data.val_speakers or data.min_utterances_per_speaker")
    ranked = sorted(eligible, key=lambda speaker: _rank_key(seed, speaker))
    return SpeakerSplits(train=sorted(ranked[test_speakers + val_speakers:]),
                         val=sorted(ranked[test_speakers:test_speakers + val_speakers]),
                         test=sorted(ranked[:test_speakers]), excluded=excluded, seed=seed,
                         min_utterances=min_utterances)


def load_or_make(path: str | os.PathLike[str], speaker_counts: dict[str, int], val_speakers: int,
                 test_speakers: int, seed: int, min_utterances: int) -> SpeakerSplits:
    """Reuse the split saved at ``path`` when it still fits, make and save one when there is none (policy in the
    module docstring)."""
    path = Path(path)
    if not path.exists():
        splits = make_splits(speaker_counts, val_speakers, test_speakers, seed, min_utterances)
        splits.save(path)
        return splits

    saved = SpeakerSplits.load(path)
    asked = {"seed": seed, "val_speakers": val_speakers, "test_speakers": test_speakers,
             "min_utterances": min_utterances}
    found = {"seed": saved.seed, "val_speakers": len(saved.val), "test_speakers": len(saved.test),
             "min_utterances": saved.min_utterances}
    if test_speakers == ALL:  # "all" is not a count: a saved split fits when it held every speaker out but val
        asked["test_speakers"] = found["test_speakers"] if not saved.train else "all"
    differ = [f"{key} {found[key]} (asked {asked[key]})" for key in asked if asked[key] != found[key]]
    if differ:
        raise SplitError(f"{path} was made with other settings: {', '.join(differ)}. Set the config to match, "
                         f"or delete the file to make a new split (this changes the held-out speakers)")

    missing = [s for s in saved.speakers() if s not in speaker_counts]
    too_small = [f"{s} ({speaker_counts[s]})" for s in saved.speakers()
                 if s in speaker_counts and speaker_counts[s] < min_utterances]
    if missing or too_small:
        problems = []
        if missing:
            problems.append(f"speakers no longer in the corpus: {', '.join(missing)}")
        if too_small:
            problems.append(f"speakers now under {min_utterances} utterances: {', '.join(too_small)}")
        raise SplitError(f"{path} does not fit the corpus: {'; '.join(problems)}. Restore them, or delete the file "
                         f"to make a new split (this changes the held-out speakers)")

    # Speakers without a role (new ones, or excluded ones that have grown) may only join train: putting them in val
    # or test would change what earlier results were measured on. Excluded reasons are refreshed with the counts.
    assigned = set(saved.speakers())
    unassigned = {s: c for s, c in speaker_counts.items() if s not in assigned}
    eligible, excluded = _eligibility(unassigned, min_utterances)
    updated = SpeakerSplits(train=sorted(saved.train + eligible), val=saved.val, test=saved.test, excluded=excluded,
                            seed=saved.seed, min_utterances=saved.min_utterances)
    if updated != saved:
        updated.save(path)
    return updated
