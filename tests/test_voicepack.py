"""Voice packs: round trip, synthesis with a pack, and refusal of foreign or malformed packs with a clear message.

The checkpoints here are untrained tiny models saved directly (no corpus needed): a pack only has to fit them.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from metatts.adapt.fast import Voice
from metatts.adapt.voicepack import VoicePack, VoicePackError, load_voice_pack, save_voice_pack
from metatts.api import TTS, SynthesisError, load
from metatts.runtime.checkpoint import weights_digest
from tiny import tiny_checkpoint

SLOT = ("speaker.slot_embedding", "speaker.slot_norms")
GROUPS = ("speaker_embedding", "speaker_norms")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("packs")
    return tiny_checkpoint(root / "one", seed=1), tiny_checkpoint(root / "other", seed=2)


@pytest.fixture(scope="module")
def tts(checkpoints) -> TTS:
    return load(checkpoints[0], device="cpu", vocoder="griffinlim")


def _pack(tts: TTS, shift: float = 0.5) -> VoicePack:
    named = dict(tts.model.named_parameters())
    params = {n: named[n].detach() + shift * torch.randn_like(named[n]) for n in SLOT}
    info = {"steps": 3, "support_loss": [2.0, 1.5], "groups": list(GROUPS)}
    return VoicePack(params=params, base_checkpoint=tts.weights_digest, info=info)


def test_round_trip_keeps_tensors_and_metadata_and_changes_the_voice(tts, checkpoints, tmp_path):
    pack = _pack(tts)
    path = save_voice_pack(tmp_path / "v.safetensors", pack)
    loaded = load_voice_pack(path, checkpoints[0], tts.model)
    assert set(loaded.params) == set(SLOT)
    assert all(torch.equal(loaded.params[n], pack.params[n]) for n in SLOT)
    assert loaded.base_checkpoint == weights_digest(checkpoints[0]) == tts.weights_digest
    assert loaded.info == pack.info
    assert loaded.bytes == sum(t.numel() * 4 for t in pack.params.values()) < path.stat().st_size < 32 * 1024

    plain = tts.mels("The cat sat on the mat.")[1][0]
    with_pack = tts.mels("The cat sat on the mat.", voice=pack)[1][0]
    from_file = tts.mels("The cat sat on the mat.", voice=path)[1][0]
    from_voice = tts.mels("The cat sat on the mat.", voice=Voice.load(path, checkpoints[0], tts.model))[1][0]
    assert plain.shape != with_pack.shape or not torch.allclose(plain, with_pack)
    assert torch.equal(with_pack, from_file) and torch.equal(with_pack, from_voice)
    # The pack is applied for the call only: the model's own slot is untouched.
    assert torch.equal(tts.mels("The cat sat on the mat.")[1][0], plain)
    speech = tts.synthesize("The cat sat.", Voice(pack))  # positional voice, as in the README
    assert speech.wave.size > 0


def test_a_pack_from_another_checkpoint_is_refused(tts, checkpoints, tmp_path):
    other = load(checkpoints[1], device="cpu")
    path = save_voice_pack(tmp_path / "other.safetensors", _pack(other))
    with pytest.raises(VoicePackError, match="adapted from another checkpoint.*adapt the voice again"):
        load_voice_pack(path, checkpoints[0], tts.model)
    with pytest.raises(VoicePackError, match="another checkpoint"):
        tts.synthesize("Hello.", voice=path)
    with pytest.raises(VoicePackError, match="other weights"):
        tts.synthesize("Hello.", voice=_pack(other))


@pytest.mark.parametrize("damage, message", [
    (lambda p: {**p, SLOT[1]: p[SLOT[1]][:-1]}, r"speaker.slot_norms has shape \(\d+,\), the model expects"),
    (lambda p: {**p, SLOT[0]: p[SLOT[0]].double()}, r"speaker.slot_embedding is torch.float64, the model expects "
                                                    r"torch.float32"),
    (lambda p: {**p, SLOT[0]: torch.full_like(p[SLOT[0]], float("nan"))}, "speaker.slot_embedding holds non-finite"),
    (lambda p: {**p, "decoder.nope": torch.zeros(3)}, "'decoder.nope' is not a parameter of this model"),
    (lambda p: {}, "holds no tensors"),
], ids=["shape", "dtype", "nan", "unknown-name", "empty"])
def test_malformed_packs_are_refused_with_the_reason(tts, checkpoints, tmp_path, damage, message):
    pack = _pack(tts)
    path = save_voice_pack(tmp_path / "bad.safetensors", VoicePack(damage(pack.params), pack.base_checkpoint,
                                                                   pack.info))
    with pytest.raises(VoicePackError, match=message):
        load_voice_pack(path, checkpoints[0], tts.model)
    with pytest.raises(VoicePackError, match=message):
        tts.synthesize("Hello.", voice=path)


def test_files_that_are_not_packs_are_refused(tts, checkpoints, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"RIFF....WAVEfmt this is not a safetensors file" * 10)
    with pytest.raises(VoicePackError, match="not a voice pack"):
        load_voice_pack(junk, checkpoints[0], tts.model)
    with pytest.raises(VoicePackError, match="does not exist"):
        load_voice_pack(tmp_path / "missing.safetensors", checkpoints[0], tts.model)
    plain = tmp_path / "plain.safetensors"  # a valid safetensors file without the pack metadata
    save_file({SLOT[0]: torch.zeros(16)}, str(plain))
    with pytest.raises(VoicePackError, match="not a metatts voice pack"):
        load_voice_pack(plain, checkpoints[0], tts.model)


def test_voices_need_a_model_loaded_from_its_checkpoint(tts, checkpoints, tmp_path):
    bare = TTS(tts.model, tts.meta, torch.device("cpu"))  # built by hand: no checkpoint, no weights hash
    with pytest.raises(SynthesisError, match="load the model from its checkpoint folder"):
        bare.synthesize("Hello.", voice=_pack(tts))
    with pytest.raises(SynthesisError, match="not both"):
        tts.synthesize("Hello.", speaker="a", voice=_pack(tts))
    # A checkpoint folder rewritten after loading (a training run saving over it) is reported as such.
    copy = shutil.copytree(checkpoints[0], tmp_path / "copy")
    loaded = load(copy, device="cpu")
    path = save_voice_pack(tmp_path / "v.safetensors", _pack(loaded))
    shutil.copy(checkpoints[1] / "model.safetensors", copy / "model.safetensors")
    with pytest.raises(VoicePackError, match="rewritten since this model was loaded"):
        loaded.synthesize("Hello.", voice=path)


def test_threads_synthesizing_different_voices_get_the_single_threaded_result_and_leave_the_model(tts):
    # One TTS shared by threads, each synthesizing several voices (packs and the un-adapted slot) in turn: with the
    # voice's tensors swapped into the shared model, one thread would synthesize with another's voice.
    voices = [_pack(tts, shift) for shift in (0.3, 0.6, 0.9)] + [None]
    text = "The cat sat on the mat. We like green apples."
    before = {n: p.detach().clone() for n, p in tts.model.named_parameters()}
    expected = [tts.mels(text, voice=v)[1] for v in voices]
    assert not torch.equal(expected[0][0], expected[1][0])  # the voices differ, so a mix-up would show
    results: dict[tuple[int, int, int], list[torch.Tensor]] = {}
    errors = []

    def work(thread: int) -> None:
        try:
            for round_ in range(3):
                for index in (list(range(len(voices))) if thread % 2 else reversed(range(len(voices)))):
                    results[thread, round_, index] = tts.mels(text, voice=voices[index])[1]
        except Exception as error:  # noqa: BLE001 - reported below with the thread's number
            errors.append((thread, error))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 6 * 3 * len(voices)
    for (_, _, index), mels in results.items():
        assert len(mels) == len(expected[index])
        for got, want in zip(mels, expected[index]):
            assert torch.equal(got, want)
    assert all(torch.equal(before[n], p) for n, p in tts.model.named_parameters())
