"""Adversarial input, as a new user (or a shared file) would give it: every bad file here is made by the test itself.

- traversal: corpus ids with ``../`` never write outside the store or ``align --out``;
- voice packs: foreign tensors, undeclared or non-adaptable groups, absurd values and a flipped bit are refused;
- every writing command refuses a folder (or file) holding the user's own files, and leaves it byte for byte;
- every reader turns a truncated or mistyped file into one error naming the file;
- the CLI answers every failure with one line on stderr and a non-zero exit, never a traceback (in-process here,
  and in a real subprocess in the slow test).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from metatts.adapt.voicepack import VoicePack, VoicePackError, load_voice_pack, save_voice_pack
from metatts.api import load
from metatts.cli import main
from metatts.config import ConfigError, config_from_dict, load_config
from metatts.corpus.demo import espeak_synthesize
from metatts.corpus.splits import SpeakerSplits, SplitError
from metatts.episodes.tasks import TaskSuiteError, load_task_suite
from metatts.features.prepare import prepare
from metatts.features.store import FeatureStore, StoreError, read_features
from metatts.checkpoints import load_inner_lr
from metatts.runtime.checkpoint import CheckpointError, load_state, load_weights, read_meta
from metatts.runtime.outputs import safe_name
from metatts.text.chunks import MAX_CHUNK_CHARS
from metatts.text.symbols import SymbolTable
from metatts.train.common import build_model
from metatts.train.supervised import train
from tiny import TINY_MODEL, tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, log=lambda *_: None)
EVIL = ("../../escape_a", "../../escape_b", "..", "spk/../../../x")  # utterance ids of a hostile Kaldi wav.scp
SPEAKER = "../spk"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A Kaldi corpus whose ids are path traversals, its prepared store, a 1-step run on it, a tiny checkpoint."""
    root = tmp_path_factory.mktemp("bad")
    corpus = root / "corpus" / "deep" / "deeper"  # ids climbing out of it must still land inside the store
    (corpus / "audio").mkdir(parents=True)
    texts = ["The cat sat on the mat.", "We like green apples.", "Rain falls on the hill.", "Ships sail at dawn."]
    wav_scp, text, utt2spk = [], [], []
    for i, (utt, sentence) in enumerate(zip(EVIL, texts)):
        wave, rate = espeak_synthesize(sentence, "en-us+m3")
        sf.write(corpus / "audio" / f"{i}.wav", wave, rate)
        wav_scp.append(f"{utt} audio/{i}.wav")
        text.append(f"{utt} {sentence}")
        utt2spk.append(f"{utt} {SPEAKER}")
    for name, lines in (("wav.scp", wav_scp), ("text", text), ("utt2spk", utt2spk)):
        (corpus / name).write_text("\n".join(lines) + "\n")
    store = root / "store"
    config = config_from_dict({}, [f"data.corpus={corpus}", f"data.features={store}", "data.layout=kaldi",
                                   "data.workers=1", "data.val_speakers=0", "data.test_speakers=0",
                                   "data.min_utterances_per_speaker=2", "meta.shots=1", "meta.queries=1"])
    prepare(config, **QUIET)
    run = root / "run"
    train(config_from_dict({}, [f"data.features={store}", "train.steps=1", "train.batch_size=2",
                                "train.warmup_steps=1", "train.val_every=1000", "train.checkpoint_every=1000",
                                "data.min_utterances_per_speaker=2", "meta.shots=1", "meta.queries=1", *TINY_MODEL]),
          run, **QUIET)
    return {"root": root, "corpus": corpus, "store": store, "run": run,
            "checkpoint": tiny_checkpoint(root / "tiny", symbols=SymbolTable.from_json(
                (store / "symbols.json").read_text()))}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ traversal
def test_corpus_ids_with_traversal_stay_inside_the_store_and_align_out(world, tmp_path, capsys):
    store = FeatureStore(world["store"])
    assert sorted(e.id for e in store.entries) == sorted(EVIL)  # ids are data: kept as they are
    for entry in store.entries:
        assert (world["store"] / entry.path).resolve().is_relative_to(world["store"].resolve() / "utts")
    outside = {p for p in world["root"].rglob("*") if not p.is_relative_to(world["store"])}
    sandbox = tmp_path / "a" / "b" / "out"
    args = ["align", "--checkpoint", str(world["checkpoint"]), "--features", str(world["store"]), "--out",
            str(sandbox)]
    assert main(args + sum((["--utterance", utt] for utt in EVIL), [])) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert len(written) == len(EVIL)
    assert all(p.parent == sandbox and p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(p.name for p in written)  # nothing above
    assert {p for p in world["root"].rglob("*") if not p.is_relative_to(world["store"])} == outside


def test_a_hand_edited_manifest_path_cannot_leave_the_store(world, tmp_path):
    store = _copy(world["store"], tmp_path / "store")
    lines = (store / "manifest.jsonl").read_text().splitlines()
    entry = json.loads(lines[0])
    entry["path"] = "utts/../../../etc/passwd"
    (store / "manifest.jsonl").write_text("\n".join([json.dumps(entry), *lines[1:]]) + "\n")
    with pytest.raises(StoreError, match=r"manifest.jsonl:1: path .* is not a feature file inside the store"):
        FeatureStore(store)


# ------------------------------------------------------------------------------------------------ voice packs
@pytest.fixture(scope="module")
def tts(world):
    return load(world["checkpoint"], device="cpu", vocoder="griffinlim")


def _slot_pack(tts, groups=("speaker_embedding", "speaker_norms"), extra=None) -> VoicePack:
    named = dict(tts.model.named_parameters())
    params = {n: named[n].detach() + 0.1 for n in ("speaker.slot_embedding", "speaker.slot_norms")}
    params.update(extra or {})
    return VoicePack(params=params, base_checkpoint=tts.weights_digest, info={"groups": list(groups)})


def test_a_pack_with_foreign_tensors_is_refused_even_with_the_right_hash(tts, world, tmp_path):
    named = dict(tts.model.named_parameters())
    noise = {n: torch.randn_like(named[n]) * 10 for n in ("mel_head.weight", "mel_head.bias")}
    cases = [
        (VoicePack(noise, tts.weights_digest, {"groups": ["mel_head"]}),
         "declares mel_head, which a voice pack of .* may not hold"),
        (_slot_pack(tts, extra=noise), r"mel_head.(weight|bias) is not in the groups the pack declares"),
        (VoicePack({"speaker.slot_norms": named["speaker.slot_norms"].detach()}, tts.weights_digest,
                   {"groups": ["speaker_embedding", "speaker_norms"]}), "lacks speaker.slot_embedding"),
        (VoicePack({n: named[n].detach() * 0 + 1e6 for n in ("speaker.slot_embedding", "speaker.slot_norms")},
                   tts.weights_digest, {"groups": ["speaker_embedding", "speaker_norms"]}), "beyond any voice"),
    ]
    for number, (pack, message) in enumerate(cases):
        path = save_voice_pack(tmp_path / f"evil{number}.safetensors", pack)
        with pytest.raises(VoicePackError, match=message):
            load_voice_pack(path, world["checkpoint"], tts.model)
        with pytest.raises(VoicePackError, match=message):
            tts.synthesize("Hello.", voice=path)
    good = save_voice_pack(tmp_path / "good.safetensors", _slot_pack(tts))
    assert set(load_voice_pack(good, world["checkpoint"], tts.model).params) == {"speaker.slot_embedding",
                                                                                 "speaker.slot_norms"}


def test_a_bit_flip_in_a_pack_is_detected(tts, world, tmp_path):
    path = save_voice_pack(tmp_path / "v.safetensors", _slot_pack(tts))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a mantissa bit of the last tensor value: still a valid safetensors file
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(VoicePackError, match="does not match its checksum"):
        load_voice_pack(flipped, world["checkpoint"], tts.model)
    load_voice_pack(path, world["checkpoint"], tts.model)  # the original still loads


def test_a_pack_without_declared_groups_is_not_written(tts, tmp_path):
    with pytest.raises(VoicePackError, match="declares no parameter groups"):
        save_voice_pack(tmp_path / "v.safetensors", VoicePack(_slot_pack(tts).params, tts.weights_digest, {}))
    assert list(tmp_path.iterdir()) == []  # no temporary file either


# ------------------------------------------------------------------------------------------------ user files
def _user_folder(path: Path, names=("config.yaml", "report.json", "stats.json", "0001.wav", "results.md")) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_text(f"the user's own {name}\n")
    return path


WRITERS = {
    "prepare": lambda w, out: ["prepare", "--corpus", str(w["corpus"]), "--out", str(out)],
    "train": lambda w, out: ["train", "--features", str(w["store"]), "--out", str(out)],
    "meta-train": lambda w, out: ["meta-train", "--features", str(w["store"]), "--out", str(out)],
    "synthesize": lambda w, out: ["synthesize", "--checkpoint", str(w["checkpoint"]), "--text", "Hello.",
                                  "--out", str(out)],
    "align": lambda w, out: ["align", "--checkpoint", str(w["checkpoint"]), "--features", str(w["store"]),
                             "--utterance", "..", "--out", str(out)],
    "evaluate": lambda w, out: ["evaluate", "--baseline", str(w["checkpoint"]), "--task",
                                str(REPO / "tasks" / "demo.yaml"), "--features", str(w["store"]), "--out", str(out)],
    "bench": lambda w, out: ["bench", "--evaluation", str(out / "results.json"), "--checkpoint",
                             str(w["checkpoint"]), "--out", str(out)],
    "tasks": lambda w, out: ["tasks", str(REPO / "tasks" / "demo.yaml"), "--features", str(w["store"]), "--json",
                             str(out / "report.json")],
    "demo": lambda w, out: ["demo", "--out", str(out), "--budget", "smoke", "--quiet"],
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_every_writing_command_refuses_a_folder_of_user_files(world, tmp_path, capsys, command):
    out = _user_folder(tmp_path / "mine", names=("config.yaml", "report.json", "stats.json", "0001.wav",
                                                 f"{safe_name('..')}.png", "results.md",
                                                 f"adaptation-{datetime.date.today().isoformat()}.json"))
    before = _snapshot(out)
    assert main(WRITERS[command](world, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"metatts {command}: error:"), err
    assert str(out) in err and re.search(r"not a metatts|already holds|exists", err), err
    assert _snapshot(out) == before  # byte for byte, no marker, no temporary file


def test_adapt_never_replaces_a_file_that_is_not_a_pack(world, tmp_path, capsys):
    mine = tmp_path / "notes.safetensors"
    mine.write_text("my notes")
    base = ["adapt", "--checkpoint", str(world["checkpoint"]), "--clips", str(world["corpus"] / "audio")]
    assert main(base + ["--out", str(mine)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(base + ["--out", str(mine), "--overwrite"]) == 2
    assert "is not a voice pack: it is never replaced" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert mine.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.safetensors"]


def test_a_run_with_a_checkpoint_is_resumed_or_overwritten_only_when_asked(world, tmp_path, capsys):
    run = _copy(world["run"], tmp_path / "run")
    before = _snapshot(run)
    args = ["train", "--features", str(world["store"]), "--out", str(run), *sum((["--set", s] for s in [
        "train.steps=1", "train.batch_size=2", "train.warmup_steps=1", "train.val_every=1000",
        "data.min_utterances_per_speaker=2", "meta.shots=1", "meta.queries=1", *TINY_MODEL]), []),
        "--vocoder", "none", "--quiet"]
    assert main(args) == 2
    assert "holds a train run with a checkpoint: --resume continues it, --overwrite" in capsys.readouterr().err
    assert _snapshot(run) == before
    assert main(["meta-train", "--features", str(world["store"]), "--out", str(run)]) == 2
    assert re.search("not a (metatts )?meta-train run", capsys.readouterr().err)
    assert _snapshot(run) == before
    assert main(args + ["--overwrite"]) == 0
    lines = len((world["run"] / "log.jsonl").read_text().splitlines())
    assert (run / "checkpoint" / "meta.json").is_file()
    assert len((run / "log.jsonl").read_text().splitlines()) == lines  # started again, not appended to
    assert main(["meta-train", "--features", str(world["store"]), "--out", str(run)]) == 2  # now marked as a train run
    assert "is a metatts train run folder, not a meta-train run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ readers
def _meta_edit(checkpoint: Path, target: Path, **changes) -> Path:
    copy = _copy(checkpoint, target)
    meta = json.loads((copy / "meta.json").read_text())
    for key, value in changes.items():
        if key == "inner_lr":
            meta["extra"]["inner_lr"] = value
        else:
            meta[key] = value
    (copy / "meta.json").write_text(json.dumps(meta))
    return copy


def test_damaged_checkpoint_parts_are_one_error_naming_the_file(world, tmp_path):
    checkpoint = world["checkpoint"]
    model = build_model(config_from_dict(read_meta(checkpoint).config), len(SymbolTable.from_json(
        read_meta(checkpoint).symbols)), 2)
    weights = _copy(checkpoint, tmp_path / "weights")
    _truncate(weights / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors is damaged or not a safetensors weights file"):
        load_weights(weights, model)
    truncated_meta = _copy(checkpoint, tmp_path / "meta")
    _truncate(truncated_meta / "meta.json")
    with pytest.raises(CheckpointError, match=r"meta.json is damaged"):
        read_meta(truncated_meta)
    for number, (changes, message) in enumerate([
        ({"speakers": 3}, "field 'speakers' must be a list"),
        ({"speakers": ["a", "a"]}, "distinct speaker id"),
        ({"stats": "x"}, "field 'stats' must be an object"),
        ({"stats": {"log_f0_mean": "5"}}, "stats.log_f0_mean must be a finite number"),
        ({"step": "5"}, "field 'step' must be an integer"),
        ({"kind": "evil"}, "field 'kind' must be one of"),
        ({"symbols": "[]"}, "field 'symbols' is not a symbol table"),
        ({"config": {"model": {"hidden": "big"}}}, "its config is not valid: model.hidden"),
        ({"surprise": 1}, "unexpected fields: surprise"),
        ({"inner_lr": {"file": "../../secret.safetensors", "names": [], "parameterization": "log"}},
         "'../../secret.safetensors' is not a plain file name inside the checkpoint folder"),
        ({"inner_lr": {"file": 3}}, "extra.inner_lr must name a file"),
    ]):
        bad = _meta_edit(checkpoint, tmp_path / f"m{number}", **changes)
        with pytest.raises(CheckpointError, match=re.escape(str(bad / "meta.json")) + ".*" + message):
            read_meta(bad)
    escape = _meta_edit(checkpoint, tmp_path / "escape", inner_lr={"file": "../escape.safetensors",
                                                                   "names": ["speaker.slot_norms"],
                                                                   "parameterization": "log"})
    save_file({"raw.speaker__slot_norms": torch.zeros(3)}, str(tmp_path / "escape.safetensors"))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        load_inner_lr(escape)


def test_damaged_or_foreign_training_state_is_one_error(world, tmp_path):
    checkpoint = world["run"] / "checkpoint"
    assert load_state(checkpoint)["step"] == 1
    truncated = _copy(checkpoint, tmp_path / "truncated")
    _truncate(truncated / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt is damaged or not a metatts training state"):
        load_state(truncated)
    code = _copy(checkpoint, tmp_path / "code")
    torch.save({"step": 1, "evil": Path("/")}, code / "state.pt")  # a pickled class: weights_only refuses it
    with pytest.raises(CheckpointError, match=r"state.pt is damaged or not a metatts training state"):
        load_state(code)
    foreign = _copy(checkpoint, tmp_path / "foreign")
    torch.save({"epoch": 3, "model": {"w": torch.zeros(2)}}, foreign / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt is not a metatts training state \('optimizer'"):
        load_state(foreign)


def test_damaged_store_files_are_one_error_naming_the_file(world, tmp_path):
    for name, damage, message in [
        ("manifest.jsonl", _truncate, r"manifest.jsonl:\d+: not a JSON line"),
        ("stats.json", _truncate, r"stats.json: not valid JSON"),
        ("symbols.json", _truncate, r"symbols.json: (not valid JSON|unreadable)"),
        ("manifest.jsonl", lambda p: p.write_text('{"id": 3}\n'), r"manifest.jsonl:1: field 'id'"),
        ("stats.json", lambda p: p.write_bytes(b"\xff\xfe"), r"stats.json: unreadable"),
    ]:
        store = _copy(world["store"], tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}")
        damage(store / name)
        with pytest.raises(StoreError, match=re.escape(str(store / name)) + message.split(name)[1]):
            FeatureStore(store)
    feature = next((world["store"] / "utts").rglob("*.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(feature.read_bytes()[:200])
    with pytest.raises(StoreError, match=r"broken.safetensors: damaged or missing feature file"):
        read_features(broken)
    splits = tmp_path / "splits.json"
    splits.write_text((world["store"] / "splits.json").read_text()[:20])
    with pytest.raises(SplitError, match=r"splits.json: not valid JSON"):
        SpeakerSplits.load(splits)


def test_damaged_packs_configs_and_suites_are_one_error_naming_the_file(tts, world, tmp_path):
    pack = save_voice_pack(tmp_path / "v.safetensors", _slot_pack(tts))
    _truncate(pack)
    with pytest.raises(VoicePackError, match=r"v.safetensors is not a voice pack \(not a readable safetensors"):
        load_voice_pack(pack, world["checkpoint"], tts.model)
    config = tmp_path / "c.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text()[:-40] + "\n  bad: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not valid YAML: .*\(line \d+, column \d+\)$"):
        load_config(config)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20)))
    with pytest.raises(ConfigError, match=r"bomb.yaml: not valid YAML: aliases \(\*a\) are not allowed"):
        load_config(bomb)
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: x\nshots: [1\n")
    with pytest.raises(TaskSuiteError, match=r"suite.yaml: not valid YAML"):
        load_task_suite(suite)


@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "train.lr: expected a finite number"),
    ("train.lr=.nan", "train.lr: expected a finite number"),
    ("model.hidden=100000", "model.hidden: 100000 is beyond any sensible model"),
    ("model.encoder_layers=10000", "model.encoder_layers: 10000 is beyond"),
    ("train.lr=[1, 2", r"--set train.lr=\[1, 2: not valid YAML"),
    ("train.lr=!!python/object:os.system x", "--set .*: not valid YAML"),
    ("train.lr=*x", r"--set train.lr=\*x: not valid YAML"),
])
def test_config_values_that_cannot_be_right_fail_with_the_key_path(override, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, [override])


# ------------------------------------------------------------------------------------------------ the CLI
def _cli_cases(world: dict[str, Path], tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, regex the one error line must match): one per class of bad input."""
    tmp.mkdir(parents=True, exist_ok=True)
    ck = str(world["checkpoint"])
    weights = _copy(world["checkpoint"], tmp / "weights")
    _truncate(weights / "model.safetensors")
    meta_types = _meta_edit(world["checkpoint"], tmp / "meta-types", speakers={"a": 1})
    rates = _meta_edit(world["checkpoint"], tmp / "rates", kind="meta", inner_lr={
        "file": "../../../x.safetensors", "names": [], "parameterization": "log"})
    state = _copy(world["run"], tmp / "run-state")
    _truncate(state / "checkpoint" / "state.pt")
    store = _copy(world["store"], tmp / "store-truncated")
    _truncate(store / "manifest.jsonl")
    latin = tmp / "latin1.txt"
    latin.write_bytes("Caf\xe9 au lait.".encode("latin-1"))
    (tmp / "clips").mkdir()
    shutil.copy(world["corpus"] / "audio" / "0.wav", tmp / "clips" / "a.wav")
    (tmp / "clips" / "a.txt").write_bytes(b"\xff\xfe bad")
    (tmp / "clips" / "b.mp3").write_bytes(b"ID3")
    flip = save_voice_pack(tmp / "flip.safetensors", _slot_pack(load(ck, device="cpu")))
    data = bytearray(flip.read_bytes())
    data[-2] ^= 0x10
    flip.write_bytes(bytes(data))
    (tmp / "existing-file").write_text("x")
    synth = ["synthesize", "--checkpoint", ck, "--vocoder", "griffinlim"]
    fresh = str(tmp / "fresh-out")
    return [
        ("text-empty", [*synth, "--text", "", "--out", fresh], "--text is empty"),
        ("text-file-latin1", [*synth, "--text-file", str(latin), "--out", fresh], "latin1.txt is not UTF-8"),
        ("synth-out-file", [*synth, "--text", "Hi.", "--out", str(tmp / "existing-file")], "is a file, not a folder"),
        ("synth-out-unwritable", [*synth, "--text", "Hi.", "--out", "/proc/metatts-out"], "cannot"),
        ("weights-truncated", ["synthesize", "--checkpoint", str(weights), "--text", "Hi.", "--out", fresh],
         "weights/model.safetensors is damaged"),
        ("meta-types", ["synthesize", "--checkpoint", str(meta_types), "--text", "Hi.", "--out", fresh],
         "meta.json: field 'speakers' must be a list"),
        ("rates-escape", ["adapt", "--checkpoint", str(rates), "--clips", str(tmp / "clips"), "--out",
                          str(tmp / "v.safetensors")], "not a plain file name inside the checkpoint folder"),
        ("pack-bit-flip", [*synth, "--voice", str(flip), "--text", "Hi.", "--out", fresh], "checksum"),
        ("adapt-out-dir", ["adapt", "--checkpoint", ck, "--clips", str(tmp / "clips"), "--out", str(tmp)],
         "is a folder"),
        ("transcript-latin1", ["adapt", "--checkpoint", ck, "--clips", str(tmp / "clips"), "--out",
                               str(tmp / "v2.safetensors")], "a.txt is not UTF-8"),
        ("resume-truncated-state", ["train", "--features", str(world["store"]), "--out", str(state), "--resume",
                                    "--vocoder", "none", "--quiet", *sum((["--set", s] for s in [
                                        "data.min_utterances_per_speaker=2", "meta.shots=1", "meta.queries=1",
                                        *TINY_MODEL]), [])], "state.pt is damaged"),
        ("store-truncated", ["align", "--checkpoint", ck, "--features", str(store), "--out", fresh],
         "manifest.jsonl:\\d+: not a JSON line"),
        ("set-malformed", ["train", "--features", str(world["store"]), "--set", "train.lr=[1", "--out", fresh],
         "--set train.lr=\\[1: not valid YAML"),
        ("set-infinite", ["train", "--features", str(world["store"]), "--set", "train.lr=.inf", "--out", fresh],
         "train.lr: expected a finite number"),
        ("prepare-out-file", ["prepare", "--corpus", str(world["corpus"]), "--out", str(tmp / "existing-file")],
         "is a file, not a folder"),
        ("config-missing", ["train", "--config", str(tmp / "nope.yaml")], "nope.yaml does not exist"),
    ]


def test_every_cli_failure_is_one_line_and_a_non_zero_exit(world, tmp_path, capsys):
    for name, argv, message in _cli_cases(world, tmp_path / "cases"):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code != 0, name
        assert len(err.splitlines()) == 1 and err.startswith(f"metatts {argv[0]}: error:"), (name, err)
        assert re.search(message, err), (name, message, err)


@pytest.mark.slow
def test_no_cli_failure_prints_a_traceback_in_a_real_process(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("METATTS_DEBUG", None)
    cases = _cli_cases(world, tmp_path / "cases")

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "metatts.cli", *argv], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=600)

    # Each case is its own process (a real CLI start); most of their time is importing torch, so run a few at once.
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        results = list(pool.map(run, [argv for _, argv, _ in cases]))
    for (name, _, message), result in zip(cases, results):
        err = result.stderr.strip()
        assert result.returncode != 0 and "Traceback" not in err, (name, err)
        assert len(err.splitlines()) == 1 and re.search(message, err), (name, err)


def test_long_text_without_punctuation_is_synthesized_in_bounded_pieces(tts):
    words = " ".join(["green apples and rain"] * 250)  # 5,500 characters, no sentence or clause mark
    pieces, symbols = tts.phonemes(words)
    assert len(pieces) > 20 and max(len(p) for p in pieces) <= MAX_CHUNK_CHARS
    assert " ".join(pieces).split() == words.split() and len(symbols) == len(pieces)
