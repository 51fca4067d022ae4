"""`metatts train` and synthesis on a tiny model: resume exactness, checkpoint round trip, audio length, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metatts.api import SynthesisError, load
from metatts.cli import main
from metatts.config import config_from_dict
from metatts.runtime.checkpoint import CheckpointError
from metatts.train.common import SPEAKER_TABLES, RunData, build_model, warm_start
from metatts.train.supervised import train
from tiny import TEXTS, TINY_MODEL, tiny_store

TINY = [*TINY_MODEL, "train.batch_size=4", "train.warmup_steps=2",
        "train.log_every=1", "train.val_every=3", "train.checkpoint_every=3", "train.threads=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    tiny_store(root, ("m1", "f2", "m3"), TEXTS[:4])
    return root / "store"


def _config(store: Path, steps: int, *extra: str):
    return config_from_dict({}, [f"data.features={store}", f"train.steps={steps}", "data.min_utterances_per_speaker=2",
                                 "meta.shots=1", "meta.queries=1", *TINY, *extra])


def test_resume_continues_exactly_like_an_uninterrupted_run(store, tmp_path):
    whole = train(_config(store, 6), tmp_path / "whole", progress=False, log=lambda *_: None)
    train(_config(store, 3), tmp_path / "split", progress=False, log=lambda *_: None)
    resumed = train(_config(store, 6), tmp_path / "split", resume=True, progress=False, log=lambda *_: None)
    assert [r["total"] for r in resumed.train_losses] == [r["total"] for r in whole.train_losses[3:]]
    a = load_file(str(tmp_path / "whole/checkpoint/model.safetensors"))
    b = load_file(str(tmp_path / "split/checkpoint/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss_and_resume_needs_state(store, tmp_path):
    result = train(_config(store, 40, "train.lr=3e-3", "train.val_every=40"), tmp_path / "run", progress=False,
                   log=lambda *_: None)
    first, last = result.train_losses[0]["mel"], np.mean([r["mel"] for r in result.train_losses[-3:]])
    assert last < 0.75 * first, (first, last)
    (tmp_path / "run/checkpoint/state.pt").unlink()
    with pytest.raises(CheckpointError, match="--init-from"):
        train(_config(store, 41), tmp_path / "run", resume=True, progress=False, log=lambda *_: None)


def test_init_from_a_checkpoint_of_another_config_is_refused(store, tmp_path):
    train(_config(store, 1), tmp_path / "a", progress=False, log=lambda *_: None)
    with pytest.raises(CheckpointError, match="does not fit"):
        train(_config(store, 1, "model.hidden=48"), tmp_path / "b", init_from=tmp_path / "a/checkpoint",
              progress=False, log=lambda *_: None)


def test_init_from_another_corpus_keeps_everything_but_its_speaker_table(store, tmp_path):
    """Pre-training on one corpus (the generated demo corpus), then training on another with other speakers."""
    train(_config(store, 2), tmp_path / "pre", progress=False, log=lambda *_: None)
    tiny_store(tmp_path, ("f4", "m5"), TEXTS[:3])
    config = _config(tmp_path / "store", 1)
    data = RunData.load(config)
    model = build_model(config, len(data.symbols), len(data.speakers))
    fresh_table = model.speaker.table_embedding.detach().clone()
    assert warm_start(tmp_path / "pre/checkpoint", model) == list(SPEAKER_TABLES)
    pre = load_file(str(tmp_path / "pre/checkpoint/model.safetensors"))
    own = model.state_dict()
    assert all(torch.equal(own[n], t) for n, t in pre.items() if n not in SPEAKER_TABLES)  # slot included
    assert torch.equal(model.speaker.table_embedding, fresh_table) and fresh_table.shape[0] == 2
    logs = []
    train(config, tmp_path / "fine", init_from=tmp_path / "pre/checkpoint", progress=False, log=logs.append)
    assert any("another corpus" in line for line in logs)


def test_init_from_leaves_out_or_keeps_fresh_the_reference_encoder_only(store, tmp_path):
    """The speechocean762 recipe pre-trains with configs/demo.yaml, which meta-trains with an amortized start (so its
    checkpoints carry a reference encoder), then trains on with a config that has none -- and the other way round."""
    with_encoder = ("meta.amortized_start=true", "meta.reference_channels=8")
    train(_config(store, 2, *with_encoder), tmp_path / "pre", progress=False, log=lambda *_: None)
    pre = load_file(str(tmp_path / "pre/checkpoint/model.safetensors"))
    assert any(n.startswith("reference_encoder.") for n in pre)
    tiny_store(tmp_path, ("f4", "m5"), TEXTS[:3])
    for other in (tmp_path / "store", store):  # another corpus (its speaker table kept fresh), then the same one
        config = _config(other, 1)
        data = RunData.load(config)
        model = build_model(config, len(data.symbols), len(data.speakers))
        warm_start(tmp_path / "pre/checkpoint", model)
        own = model.state_dict()
        assert not any(n.startswith("reference_encoder.") for n in own)
        assert all(torch.equal(own[n], t) for n, t in pre.items() if n in own and own[n].shape == t.shape)
    # A checkpoint without an encoder into a model with one: the encoder keeps its own values, the rest is loaded.
    train(_config(store, 1), tmp_path / "plain", progress=False, log=lambda *_: None)
    plain = load_file(str(tmp_path / "plain/checkpoint/model.safetensors"))
    config = _config(store, 1, *with_encoder)
    data = RunData.load(config)
    model = build_model(config, len(data.symbols), len(data.speakers))
    encoder = {n: t.clone() for n, t in model.state_dict().items() if n.startswith("reference_encoder.")}
    assert encoder and warm_start(tmp_path / "plain/checkpoint", model) == []
    own = model.state_dict()
    assert all(torch.equal(own[n], t) for n, t in encoder.items())
    assert all(torch.equal(own[n], t) for n, t in plain.items())
    # Any other tensor that does not fit is still refused.
    with pytest.raises(CheckpointError, match="does not fit"):
        warm_start(tmp_path / "pre/checkpoint", build_model(_config(store, 1, "model.hidden=48"),
                                                            len(data.symbols), len(data.speakers)))


def test_synthesized_audio_length_matches_the_predicted_durations(store, tmp_path):
    train(_config(store, 2), tmp_path / "run", progress=False, log=lambda *_: None)
    tts = load(tmp_path / "run/checkpoint", vocoder="griffinlim")
    speech = tts.synthesize("The cat sat. We like apples!", speaker="f2")
    assert len(speech.sentences) == 2
    hop = tts.config.audio.hop_length
    gap = int(0.15 * tts.sample_rate)
    assert len(speech.wave) == sum(m.shape[-1] * hop for m in speech.mels) + gap
    # The checkpoint reproduces the trained model: same mel from the loaded weights twice.
    again = load(tmp_path / "run/checkpoint", vocoder="griffinlim").mels("The cat sat.", "f2")[1][0]
    assert torch.allclose(again, tts.mels("The cat sat.", "f2")[1][0])
    with pytest.raises(SynthesisError, match="unknown speaker 'nobody'.*m1"):
        tts.synthesize("Hello.", speaker="nobody")
    with pytest.raises(SynthesisError, match="empty"):
        tts.synthesize("   ", speaker="m1")


def test_cli_synthesize_from_a_text_file_and_errors_exit_2(store, tmp_path, capsys):
    train(_config(store, 1), tmp_path / "run", progress=False, log=lambda *_: None)
    lines = tmp_path / "lines.txt"
    lines.write_text("Hello there.\n\n...\nGood night.\n")
    checkpoint = str(tmp_path / "run/checkpoint")
    args = ["synthesize", "--checkpoint", checkpoint, "--vocoder", "griffinlim", "--out", str(tmp_path / "wav")]
    assert main(args + ["--text-file", str(lines), "--speaker", "m1"]) == 0
    assert sorted(p.name for p in (tmp_path / "wav").glob("*.wav")) == ["0001.wav", "0003.wav"]
    assert "line 2: skipped" in capsys.readouterr().err
    # The wavs are there now: a second run refuses to replace them before any work, unless --overwrite.
    assert main(args + ["--text", "hi", "--speaker", "m1"]) == 2
    assert "already holds 0001.wav: pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--text", "hi", "--speaker", "ghost", "--overwrite"]) == 2
    assert "unknown speaker" in capsys.readouterr().err
    assert main(["synthesize", "--checkpoint", str(tmp_path), "--text", "hi", "--out", str(tmp_path)]) == 2
    assert "not a metatts checkpoint" in capsys.readouterr().err
    torch.save({"generator": {"conv_pre.weight": torch.zeros(3)}}, tmp_path / "vocoder.pt")
    bad_vocoder = ["synthesize", "--checkpoint", checkpoint, "--vocoder", str(tmp_path / "vocoder.pt"),
                   "--text", "hi", "--speaker", "m1", "--out", str(tmp_path / "wav"), "--overwrite"]
    assert main(bad_vocoder) == 1
    assert "conv_pre.weight" in capsys.readouterr().err  # names what does not fit, no traceback


def test_cli_align_writes_a_png_per_utterance(store, tmp_path, capsys):
    train(_config(store, 1), tmp_path / "run", progress=False, log=lambda *_: None)
    args = ["align", "--checkpoint", str(tmp_path / "run/checkpoint"), "--features", str(store),
            "--out", str(tmp_path / "png")]
    assert main(args + ["--utterance", "m1_0", "--utterance", "f2_1"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == ["f2_1.png", "m1_0.png"]
    assert (tmp_path / "png/m1_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args + ["--utterance", "nobody_9"]) == 2
    assert "nobody_9" in capsys.readouterr().err
