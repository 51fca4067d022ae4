"""`metatts demo`: the whole pipeline on the offline demo corpus, from nothing to a report, in one resumable command.

    1 corpus      espeak-ng voices read project-written sentences               OUT/demo-corpus
    2 prepare     features, statistics, speaker splits                          OUT/features
    3 train       the multi-speaker baseline (`metatts train`)                   OUT/train/checkpoint
    4 meta-train  MAML from the baseline (`metatts meta-train --init-from`)      OUT/meta/checkpoint
    5 adapt       held-out (test split) speakers from 5 clips each, both models  OUT/voices/<model>/*.safetensors
    6 synthesize  sentences no corpus speaker said, with the adapted voices      OUT/report/audio
    7 evaluate    meta vs baseline on the demo task suite (query mel L1 per step) OUT/eval
    8 report      Markdown with the numbers and commands, PNG plots, the wavs    OUT/report/README.md

Reuse. ``OUT/demo-state.json`` records, per stage, a key (a hash of everything the stage's output depends on: its
settings and the key of the stage before it), whether it finished, its wall time and its numbers. A stage whose key
and finished flag match and whose outputs are on disk is skipped; otherwise it runs, and so does every stage after
it. A killed training stage resumes from its last checkpoint when its key still matches; a changed key starts it
again. The demo only ever removes paths it created itself (listed in the state file): an --out folder that holds
anything else is refused.

Budgets. ``default`` takes the model and the train/meta-train step counts from the config (configs/demo.yaml, sized
to finish in under 20 minutes on 2 CPU cores) and adds the demo's own sizes (``BUDGETS``); ``smoke`` is a tiny
model on a tiny corpus that runs every stage in seconds (the end-to-end test uses it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from metatts.recipes import recipe_file

STATE_FILE = "demo-state.json"
CORPUS = "demo-corpus"  # the folder name is the corpus name, which the task suite (tasks/demo.yaml) names
STATE_KIND = "metatts-demo"
STATE_FORMAT = 1
DEFAULT_CONFIG = recipe_file("configs", "demo.yaml")
DEFAULT_SUITE = recipe_file("tasks", "demo.yaml")
STAGES = ("corpus", "prepare", "train", "meta-train", "adapt", "synthesize", "evaluate", "report")
METHODS = ("meta", "baseline")  # meta: the meta-trained checkpoint; baseline: the multi-speaker one

# Sentences for the adapted voices, none of which any corpus speaker reads (checked at run time against the store).
NEW_SENTENCES = (
    "A new voice was learned from five short recordings.",
    "Tomorrow the garden club will plant seven olive trees by the river.",
    "Please leave the green umbrella beside the kitchen door.",
)


class DemoError(ValueError):
    """The demo cannot run as asked (an --out folder that is not a demo run, an unknown budget)."""


@dataclass(frozen=True)
class DemoBudget:
    """How big each stage is. Model, training and meta-training sizes come from the config plus ``overrides``."""

    name: str
    corpus_speakers: int  # espeak-ng voices in the corpus (the split sizes are in the config's data section)
    corpus_sentences: int  # sentences per speaker
    adapt_speakers: int  # held-out (test split) speakers adapted and synthesized
    adapt_steps: int  # inner steps of `metatts adapt`
    sentences: int  # new sentences synthesized per adapted speaker and method
    eval_steps: tuple[int, ...]  # inner-step counts of the meta-vs-baseline comparison
    eval_tasks_per_speaker: int | None  # episodes per held-out speaker (None: the task suite's)
    overrides: tuple[str, ...] = ()  # config overrides (key.path=value) applied before the user's --set


# A model small enough to train a step in well under a second on one thread (the tests train it too: tests/tiny.py).
SMOKE_MODEL = ("model.preset=custom", "model.hidden=32", "model.heads=2", "model.encoder_layers=1",
                "model.decoder_layers=1", "model.conv_filter=64", "model.predictor_filter=32", "model.speaker_dim=16",
                "model.pitch_bins=16", "model.energy_bins=16", "model.max_speakers=8")

BUDGETS: dict[str, DemoBudget] = {
    # train/meta-train steps: configs/demo.yaml. Evaluation: 6 test speakers x 2 episodes x 2 models, grid to 10.
    "default": DemoBudget(name="default", corpus_speakers=40, corpus_sentences=25, adapt_speakers=3, adapt_steps=10,
                          sentences=2, eval_steps=(0, 1, 2, 5, 10), eval_tasks_per_speaker=2),
    # Every stage end to end in seconds: 6 voices x 10 sentences (3 train, 1 val, 2 test speakers), a tiny model.
    "smoke": DemoBudget(
        name="smoke", corpus_speakers=6, corpus_sentences=10, adapt_speakers=2, adapt_steps=2, sentences=1,
        eval_steps=(0, 1, 2), eval_tasks_per_speaker=1,
        overrides=(*SMOKE_MODEL, "data.workers=1", "data.val_speakers=1", "data.test_speakers=2",
                   "data.min_utterances_per_speaker=10", "train.steps=6", "train.batch_size=4",
                   "train.warmup_steps=2", "train.log_every=1", "train.val_every=1000", "train.checkpoint_every=1000",
                   "train.bin_loss_start=2", "train.bin_loss_ramp=2", "meta.steps=2", "meta.meta_batch=2",
                   "meta.inner_steps=2", "meta.shots=2", "meta.queries=2", "meta.val_tasks=1")),
}


# ------------------------------------------------------------------------------------------------ state
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


class DemoState:
    """``OUT/demo-state.json``: per stage its key, finished flag, seconds and numbers; the paths the demo created."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / STATE_FILE
        self.data = {"kind": STATE_KIND, "format": STATE_FORMAT, "created": [], "stages": {}}

    @classmethod
    def open(cls, out: Path) -> "DemoState":
        """The state of ``out``; a new one for a missing or empty folder. Anything else is refused."""
        from metatts.runtime.outputs import OutputError, claim_folder

        state = cls(out)
        # The shared output-folder policy, with the state file as the folder's marker (the demo writes it itself).
        try:
            claim_folder(out, STATE_KIND, marker=STATE_FILE, write_marker=False, label="demo run")
        except OutputError as error:
            raise DemoError(str(error)) from None
        if state.path.is_file():
            data = json.loads(state.path.read_text())  # claim_folder read it: valid JSON of our kind
            if data.get("format") != STATE_FORMAT:
                raise DemoError(f"{state.path} is a demo state of format {data.get('format')}, not {STATE_FORMAT}; "
                                f"choose another --out")
            state.data = data
        return state

    def save(self) -> None:
        from metatts.runtime.outputs import atomic_path

        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1))

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def ours(self, relative: str) -> bool:
        """Whether the demo made ``OUT/relative`` (itself, or a folder holding it)."""
        return any(relative == c or relative.startswith(c + "/") for c in self.data["created"])

    def claim(self, relative: str) -> Path:
        """Mark ``OUT/relative`` as made by the demo (so a later changed config may remove it). A path that exists
        without having been made by the demo is refused, never overwritten."""
        path = self.out / relative
        if not self.ours(relative):
            if path.exists():
                raise DemoError(f"{path} exists but was not made by `metatts demo`: move it away or choose another "
                                f"--out")
            self.data["created"].append(relative)
            self.save()
        return path

    def clear(self, relative: str) -> Path:
        """Remove ``OUT/relative`` (which the demo made) so a stage starts again; return the path."""
        path = self.claim(relative)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return path


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class DemoResult:
    out: Path
    report: Path
    stages: dict[str, dict]  # name -> {"seconds", "reused", ...}
    ran: list[str] = field(default_factory=list)  # stages that ran this time (the others were reused)
    seconds: float = 0.0


class Demo:
    """One demo run: paths, config, budget and the stage functions (``stage_<name>``)."""

    def __init__(self, out: str | os.PathLike, *, budget: str = "default", config: str | os.PathLike | None = None,
                 overrides: Sequence[str] = (), suite: str | os.PathLike | None = None, vocoder: str | None = None,
                 threads: int = 0, harness: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print):
        from metatts.config import load_config

        if budget not in BUDGETS:
            raise DemoError(f"unknown budget {budget!r}: choose {' or '.join(BUDGETS)}")
        self.out = Path(out).absolute()
        self.budget = BUDGETS[budget]
        self.config_path = Path(config) if config is not None else DEFAULT_CONFIG
        self.suite_path = Path(suite) if suite is not None else DEFAULT_SUITE
        if not self.suite_path.is_file():
            raise DemoError(f"task suite {self.suite_path} does not exist (pass --suite)")
        self.user_overrides = list(overrides)
        paths = [f"data.corpus={self.out / CORPUS}", f"data.features={self.out / 'features'}"]
        threads_override = [f"train.threads={threads}"] if threads else []
        self.overrides = [*self.budget.overrides, *self.user_overrides, *threads_override]
        self.config = load_config(self.config_path, [*self.overrides, *paths])
        self.vocoder_name = vocoder
        if harness and not harness_available():
            raise DemoError("--harness needs metatts.evaluation.harness and its extras (pip install -e '.[eval]')")
        self.harness = harness
        self.threads = threads
        self.progress = progress
        self.log = log
        self.state = DemoState.open(self.out)

    # ---- helpers
    def _settings(self, *sections: str, drop: Sequence[str] = ()) -> dict:
        values = {name: dataclasses.asdict(getattr(self.config, name)) for name in sections}
        for dotted in drop:
            section, key = dotted.split(".")
            values[section].pop(key, None)
        return values

    def keys(self) -> dict[str, str]:
        """Each stage's key: its settings plus the key of the stage before it (so a change reruns what follows)."""
        b = self.budget
        keys: dict[str, str] = {}
        keys["corpus"] = _digest("corpus", b.corpus_speakers, b.corpus_sentences)
        # Paths are fixed under OUT; workers and threads change speed, not results.
        keys["prepare"] = _digest(keys["corpus"], self._settings("audio", "text", "data",
                                                                 drop=("data.workers", "data.corpus",
                                                                       "data.features")))
        train = self._settings("model", "train", drop=("train.threads", "train.log_every"))
        keys["train"] = _digest(keys["prepare"], train)
        keys["meta-train"] = _digest(keys["train"], train, self._settings("meta"))
        suite = self.suite_path.read_text()
        keys["adapt"] = _digest(keys["meta-train"], b.adapt_speakers, b.adapt_steps, suite)
        keys["synthesize"] = _digest(keys["adapt"], b.sentences, NEW_SENTENCES, self.vocoder_name)
        keys["evaluate"] = _digest(keys["meta-train"], suite, b.eval_steps, b.eval_tasks_per_speaker,
                                   self._evaluation_method())
        keys["report"] = _digest(*(keys[s] for s in STAGES[:-1]))
        return keys

    def _evaluation_method(self) -> str:
        return "curve+harness" if self.harness else "curve"

    def _outputs_present(self, name: str) -> bool:
        record = self.state.stage(name)
        return all((self.out / p).exists() for p in record.get("outputs", [])) and bool(record.get("outputs"))

    def _suite(self):
        from metatts.episodes.tasks import load_task_suite

        suite = load_task_suite(self.suite_path, features=self.out / "features")
        if self.budget.eval_tasks_per_speaker is not None:
            suite = dataclasses.replace(suite, tasks_per_speaker=self.budget.eval_tasks_per_speaker)
        return dataclasses.replace(suite, step_grid=list(self.budget.eval_steps))

    def _episodes(self):
        from metatts.corpus.splits import SpeakerSplits
        from metatts.episodes.tasks import frozen_episodes
        from metatts.features.store import FeatureStore

        suite = self._suite()
        store = FeatureStore(self.out / "features")
        splits = SpeakerSplits.load(self.out / "features" / "splits.json")
        return suite, store, frozen_episodes(suite, store, splits, log=self.log)

    def _set_threads(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        elif self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)

    # ---- the driver
    def run(self) -> DemoResult:
        started = time.perf_counter()
        keys = self.keys()
        self.state.data.setdefault("runs", []).append({"started": _now(), "budget": self.budget.name,
                                                      "config": str(self.config_path),
                                                      "overrides": self.user_overrides,
                                                      "load_average": _load_average()})
        self.state.save()
        ran: list[str] = []
        rerun = False
        for index, name in enumerate(STAGES, start=1):
            record = self.state.stage(name)
            reusable = (not rerun and record.get("key") == keys[name] and record.get("done")
                        and self._outputs_present(name))
            prefix = f"[{index}/{len(STAGES)}] {name}"
            if reusable:
                self.log(f"{prefix}: reused ({record.get('summary', '')}; took {record.get('seconds', 0):.0f} s on "
                         f"{record.get('finished', '?')})")
                continue
            rerun = True
            resume = record.get("key") == keys[name] and not record.get("done")
            self.log(f"{prefix}: running")
            self._set_threads()
            load_before = _load_average()
            tick = time.perf_counter()
            self.state.data["stages"][name] = {"key": keys[name], "done": False, "started": _now(),
                                               "outputs": [], "resumable": resume}
            self.state.save()
            stage = getattr(self, "stage_" + name.replace("-", "_"))
            record = stage(resume=resume) or {}
            seconds = time.perf_counter() - tick
            record.update(key=keys[name], done=True, seconds=seconds, finished=_now(),
                          load_average=[load_before, _load_average()])
            self.state.data["stages"][name] = record
            self.state.save()
            ran.append(name)
            self.log(f"{prefix}: done in {seconds:.0f} s ({record.get('summary', '')})")
        total = time.perf_counter() - started
        self.state.data["runs"][-1].update(finished=_now(), seconds=total, ran=ran, load_average_end=_load_average())
        self.state.save()
        if ran and "report" not in ran:  # pragma: no cover - the report's key depends on every other stage
            raise AssertionError("a stage ran but the report was reused")
        stages = {n: {**self.state.stage(n), "reused": n not in ran} for n in STAGES}
        return DemoResult(out=self.out, report=self.out / "report" / "README.md", stages=stages, ran=ran,
                          seconds=total)

    # ---- 1 corpus
    def stage_corpus(self, resume: bool) -> dict:
        from tqdm import tqdm

        from metatts.corpus.demo import make_demo_corpus

        b = self.budget
        root = self.state.clear(CORPUS)  # a corpus of other parameters, or a partial one: made again
        with tqdm(total=b.corpus_speakers * b.corpus_sentences, desc="synthesize", unit="utt",
                  disable=not self.progress) as bar:
            info = make_demo_corpus(root, speakers=b.corpus_speakers, sentences_per_speaker=b.corpus_sentences,
                                    progress=lambda *_: bar.update())
        return {"outputs": [f"{CORPUS}/demo_corpus.json"], "speakers": len(info.speakers),
                "utterances": info.utterances, "audio_minutes": info.seconds / 60, "fingerprint": info.fingerprint,
                "summary": f"{len(info.speakers)} speakers, {info.utterances} utterances, "
                           f"{info.seconds / 60:.1f} min of audio"}

    # ---- 2 prepare
    def stage_prepare(self, resume: bool) -> dict:
        from metatts.features.prepare import prepare

        self.state.clear("features")  # a changed split or audio config would not fit the old store
        report = prepare(self.config, progress=self.progress, log=self.log)
        from metatts.corpus.splits import SpeakerSplits

        splits = SpeakerSplits.load(self.out / "features" / "splits.json")
        return {"outputs": ["features/manifest.jsonl", "features/splits.json"], "usable": report.usable,
                "skipped": len(report.skipped), "speakers": report.speakers,
                "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
                "summary": f"{report.usable} utterances of {report.speakers} speakers; {len(splits.train)} train, "
                           f"{len(splits.val)} val, {len(splits.test)} test speakers"}

    # ---- 3 train
    def _checkpoint_step(self, relative: str) -> int | None:
        from metatts.runtime.checkpoint import read_meta

        path = self.out / relative / "checkpoint"
        try:
            return read_meta(path).step if (path / "meta.json").is_file() else None
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is started again
            return None

    def _run_folder(self, relative: str, resume: bool, steps: int) -> tuple[Path, bool]:
        """The run folder, and whether to resume it: only a partial run of the same key, with a checkpoint."""
        step = self._checkpoint_step(relative) if resume else None
        if step is not None and 0 < step < steps:
            self.log(f"  resuming {relative} at step {step} of {steps}")
            return self.state.claim(relative), True
        return self.state.clear(relative), False

    def stage_train(self, resume: bool) -> dict:
        from metatts.train.supervised import train

        run, resume = self._run_folder("train", resume, self.config.train.steps)
        result = train(self.config, run, resume=resume, progress=self.progress, log=self.log)
        val = [v for v in _read_log(run / "log.jsonl") if v.get("kind") == "val"]
        first, last = (val[0], val[-1]) if val else ({}, {})
        return {"outputs": ["train/checkpoint/meta.json"], "steps": result.step, "train_seconds": result.seconds,
                "val_mel": [[v["step"], v["mel"]] for v in val],
                "summary": f"{result.step} steps; validation mel L1 {first.get('mel', float('nan')):.3f} (step "
                           f"{first.get('step', 0)}) -> {last.get('mel', float('nan')):.3f} (step "
                           f"{last.get('step', 0)})"}

    # ---- 4 meta-train
    def stage_meta_train(self, resume: bool) -> dict:
        from metatts.meta.outer_loop import meta_train

        run, resume = self._run_folder("meta", resume, self.config.meta.steps)
        result = meta_train(self.config, run, resume=resume, init_from=None if resume else
                            self.out / "train" / "checkpoint", progress=self.progress, log=self.log)
        val = [v for v in _read_log(run / "log.jsonl") if v.get("kind") == "meta_val"]
        summary = f"{result.step} meta-steps"
        if val:
            summary += (f"; meta-val query mel L1 after {val[0]['steps'][-1]} inner steps {val[0]['mel'][-1]:.3f} "
                        f"(step {val[0]['step']}) -> {val[-1]['mel'][-1]:.3f} (step {val[-1]['step']})")
        return {"outputs": ["meta/checkpoint/meta.json"], "steps": result.step, "meta_seconds": result.seconds,
                "skipped_steps": result.skipped_steps,
                "meta_val": [{"step": v["step"], "steps": v["steps"], "mel": v["mel"]} for v in val],
                "summary": summary}

    # ---- 5 adapt
    def checkpoints(self) -> dict[str, Path]:
        return {"meta": self.out / "meta" / "checkpoint", "baseline": self.out / "train" / "checkpoint"}

    def stage_adapt(self, resume: bool) -> dict:
        from metatts.api import load

        voices = self.state.clear("voices")
        voices.mkdir(parents=True)
        suite, store, episodes = self._episodes()
        first = {}
        for episode in episodes:  # each speaker's first episode of the suite: its 5 support clips
            first.setdefault(episode.speaker, episode)
        speakers = sorted(first)[:self.budget.adapt_speakers]
        records: dict[str, dict] = {}
        for method, checkpoint in self.checkpoints().items():
            tts = load(checkpoint, device="cpu")
            # The baseline adapts at its config's inner rate; the meta model at its learned per-parameter rates.
            lr = self.config.meta.inner_lr if method == "baseline" else None
            for speaker in speakers:
                episode = first[speaker]
                entries = [store.by_id[i] for i in episode.support]
                tsv = voices / f"{speaker}.tsv"
                tsv.write_text("".join(f"{Path(e.audio_path).name}\t{e.text}\n" for e in entries), encoding="utf-8")
                clips = [e.audio_path for e in entries]
                voice = tts.adapt(clips, transcripts=tsv, steps=self.budget.adapt_steps, lr=lr)
                path = voice.save(voices / method / f"{speaker}.safetensors")
                row = records.setdefault(speaker, {"clips": [str(c) for c in clips],
                                                   "clip_seconds": sum(e.seconds for e in entries),
                                                   "query": list(episode.query)})
                row[method] = {"pack": str(path.relative_to(self.out)), "pack_bytes": path.stat().st_size,
                               "tensor_bytes": voice.bytes, "support_loss": voice.losses,
                               "adapt_seconds": voice.seconds, "feature_seconds": voice.info["feature_seconds"],
                               "lr": voice.info["lr"], "used_clips": len(voice.clips.clips),
                               "skipped_clips": len(voice.clips.skipped)}
                self.log(f"  {method:8s} {speaker}: support loss {voice.losses[0]:.3f} -> {voice.losses[-1]:.3f} in "
                         f"{self.budget.adapt_steps} steps ({voice.seconds:.1f} s); pack {path.stat().st_size} bytes")
        outputs = [records[s][m]["pack"] for s in speakers for m in METHODS]
        mean_bytes = sum(records[s]["meta"]["pack_bytes"] for s in speakers) / len(speakers)
        return {"outputs": outputs, "speakers": records, "steps": self.budget.adapt_steps,
                "summary": f"{len(speakers)} held-out speakers x {len(METHODS)} models from "
                           f"{len(first[speakers[0]].support)} clips, {self.budget.adapt_steps} steps; voice packs "
                           f"{mean_bytes / 1024:.1f} KB"}

    # ---- 6 synthesize
    def stage_synthesize(self, resume: bool) -> dict:
        import soundfile as sf

        from metatts.api import load
        from metatts.features.store import FeatureStore
        from metatts.text.normalize import normalize_text

        self.state.claim("report")
        audio = self.state.clear("report/audio")
        adapt = self.state.stage("adapt")["speakers"]
        store = FeatureStore(self.out / "features")
        said = {e.text for e in store.entries}
        sentences = [s for s in NEW_SENTENCES if normalize_text(s) not in said][:self.budget.sentences]
        if not sentences:  # pragma: no cover - the corpus sentences never include these
            raise DemoError("every demo sentence is in the corpus")
        records: dict[str, dict] = {}
        vocoder_kind = ""
        rtf = []
        for method, checkpoint in self.checkpoints().items():
            tts = load(checkpoint, device="cpu", vocoder=self.vocoder_name)
            vocoder_kind = _vocoder_label(tts.vocoder)
            for speaker, info in adapt.items():
                row = records.setdefault(speaker, {})
                if "recorded" not in row:  # a real clip of the speaker (not one of the support clips), to compare
                    entry = store.by_id[info["query"][0]]
                    wave, rate = sf.read(entry.audio_path, dtype="float32")
                    path = audio / speaker / "recorded.wav"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sf.write(path, wave, rate, subtype="PCM_16")
                    row["recorded"] = {"wav": str(path.relative_to(self.out / "report")), "text": entry.text}
                for number, sentence in enumerate(sentences, start=1):
                    tick = time.perf_counter()
                    speech = tts.synthesize(sentence, voice=self.out / info[method]["pack"])
                    seconds = time.perf_counter() - tick
                    rtf.append(seconds / max(speech.seconds, 1e-6))
                    path = speech.save(audio / speaker / f"{method}-{number}.wav")
                    row.setdefault(method, []).append({"wav": str(path.relative_to(self.out / "report")),
                                                       "text": sentence, "seconds": speech.seconds})
                    if number == 1:
                        import torch

                        torch.save(speech.mels[0], audio / speaker / f"{method}-1.mel.pt")
        outputs = [f"report/{w['wav']}" for row in records.values() for m in METHODS for w in row[m]]
        return {"outputs": outputs, "speakers": records, "sentences": sentences, "vocoder": vocoder_kind,
                "real_time_factor": sum(rtf) / len(rtf),
                "summary": f"{len(outputs)} wavs of {len(sentences)} new sentences with {vocoder_kind}"}

    # ---- 7 evaluate
    def stage_evaluate(self, resume: bool) -> dict:
        folder = self.state.clear("eval")
        folder.mkdir(parents=True)
        record = self._evaluate_curve(folder)
        if self.harness:
            record["harness"] = self._evaluate_harness(folder)
            record["outputs"] += record["harness"].pop("outputs")
        return record

    def _evaluate_curve(self, folder: Path) -> dict:
        from metatts.episodes.tasks import episodes_digest
        from metatts.evaluation.curves import checkpoint_curve

        suite, store, episodes = self._episodes()
        grid = list(self.budget.eval_steps)
        curves = {}
        for method, checkpoint in self.checkpoints().items():
            lr = self.config.meta.inner_lr if method == "baseline" else None
            tick = time.perf_counter()
            curve = checkpoint_curve(checkpoint, episodes, store, grid, inner_lr=lr)
            curves[method] = {**curve.to_dict(), "seconds": time.perf_counter() - tick}
            self.log(f"  {method:8s} query mel L1 " + "  ".join(f"k={k}: {v:.4f}" for k, v in
                                                               zip(grid, curve.mean("mel"))))
        result = {"method": "curve", "suite": suite.name, "digest": episodes_digest(episodes),
                  "episodes": len(episodes), "speakers": sorted({e.speaker for e in episodes}),
                  "shots": suite.shots, "queries": suite.queries, "steps": grid,
                  "mel_l1": {m: dict(zip(grid, c["mean_mel"])) for m, c in curves.items()}, "curves": curves}
        (folder / "curves.json").write_text(json.dumps(result, indent=1))
        return {"outputs": ["eval/curves.json"], **{k: v for k, v in result.items() if k != "curves"},
                "summary": _comparison_summary(result["mel_l1"], grid)}

    def _evaluate_harness(self, folder: Path) -> dict:
        from metatts.evaluation.harness import run_evaluation

        grid = list(self.budget.eval_steps)
        suite = self._suite()
        ckpt = self.checkpoints()
        # The adapted speakers, one episode each: vocoding and embedding every query at every step is costly.
        speakers = sorted(self.state.stage("adapt").get("speakers", {})) or self.budget.adapt_speakers
        results = run_evaluation(ckpt["meta"], ckpt["baseline"], suite, folder, methods=("meta", "baseline", "none"),
                                 steps=grid, vocoder=self.vocoder_name, device="cpu", samples=1,
                                 progress=self.progress, log=self.log, speakers=speakers, tasks_per_speaker=1)
        data = results.to_json()
        mel = {m: dict(results.mean("mel_l1", m)) for m in results.methods}
        # The report shows the columns of `metatts evaluate`'s results.md: the tables as they are in results.json.
        keep = ("steps", "methods", "compute", "references", "baselines_tuned", "vocoder", *HARNESS_METRICS)
        return {"outputs": ["eval/results.json"], "method": "harness", "suite": suite.name, "steps": grid,
                "seconds": results.seconds, "shots": suite.shots, "queries": suite.queries,
                "episodes": len(results.episodes), "mel_l1": mel, "results": {k: data[k] for k in keep},
                "summary": _comparison_summary(mel, grid)}

    # ---- 8 report
    def stage_report(self, resume: bool) -> dict:
        from metatts.demo_report import write_report

        folder = self.out / "report"
        self.state.claim("report")
        path = write_report(self, folder)
        return {"outputs": [str(path.relative_to(self.out))], "summary": f"{path.relative_to(self.out)}"}


HARNESS_METRICS = ("gap_closed", "similarity", "eer", "cer", "wer", "dnsmos")  # the demo report's --harness tables


def harness_available() -> bool:
    """Whether metatts.evaluation.harness (speaker similarity, EER, ...) is importable with ``run_evaluation``."""
    try:
        from metatts.evaluation import harness
    except Exception:  # noqa: BLE001 - not there yet, or its optional dependencies are missing
        return False
    return callable(getattr(harness, "run_evaluation", None))


def _vocoder_label(vocoder) -> str:
    name = type(vocoder).__name__
    return "HiFi-GAN (universal V1)" if "HifiGan" in name else "Griffin-Lim" if "Griffin" in name else name


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _comparison_summary(mel: dict, grid: Sequence[int]) -> str:
    if "meta" not in mel or "baseline" not in mel:
        return "no comparison"
    parts = [f"k={k}: meta {mel['meta'][k]:.3f} vs baseline {mel['baseline'][k]:.3f}" for k in grid]
    return "query mel L1 " + ", ".join(parts)


def run_demo(out: str | os.PathLike, **kwargs) -> DemoResult:
    """Run (or resume, or reuse) the demo into ``out``; see the module docstring and ``Demo``."""
    return Demo(out, **kwargs).run()
