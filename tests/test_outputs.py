"""The output-path policy: folders are created or refused, files are never replaced unasked, temporary files never
outlive a write, and ids never become paths."""

from __future__ import annotations

import json
import os

import pytest

from metatts.runtime.outputs import (
    MARKER,
    OutputError,
    atomic_path,
    check_new_file,
    check_new_files,
    claim_folder,
    remove_outputs,
    safe_name,
)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_is_created_marked_and_accepted_again(tmp_path):
    folder = claim_folder(tmp_path / "a" / "store", "feature store")
    assert folder.path.is_dir() and not folder.existing
    assert json.loads((folder.path / MARKER).read_text()) == {"kind": "feature store"}
    (folder.path / "manifest.jsonl").write_text("x")
    assert claim_folder(folder.path, "feature store").existing  # a re-run of the same command
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not claim_folder(empty, "train run").existing


def test_foreign_folders_and_files_are_refused_unchanged(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    for name in ("config.yaml", "report.json", "stats.json"):
        (user / name).write_text(f"the user's own {name}")
    before = _snapshot(user)
    with pytest.raises(OutputError, match=r"holds files that are not a metatts feature store \(config.yaml, "
                                          r"report.json, stats.json; no .metatts-output\).*nothing was changed"):
        claim_folder(user, "feature store")
    assert _snapshot(user) == before and not (user / MARKER).exists()

    other = claim_folder(tmp_path / "run", "train run").path
    (other / "log.jsonl").write_text("{}")
    with pytest.raises(OutputError, match="is a metatts train run folder, not a evaluation"):
        claim_folder(other, "evaluation")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        claim_folder(tmp_path / "file", "evaluation")
    (user / MARKER).write_text("{not json")
    with pytest.raises(OutputError, match="damaged or not a metatts marker"):
        claim_folder(user, "feature store")


def test_older_folders_are_adopted_only_when_recognized(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text("{}")
    assert claim_folder(old, "feature store", adopt=lambda p: True).existing and (old / MARKER).is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(OutputError):
        claim_folder(tmp_path / "mine", "feature store", adopt=lambda p: False)


def test_an_unwritable_place_is_one_error(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/metatts-out"  # not even root can create files in /proc
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = str(locked / "out")
    with pytest.raises(OutputError, match="cannot create the folder|cannot write there"):
        claim_folder(target, "evaluation")
    with pytest.raises(OutputError, match="cannot"):
        check_new_files(target, ["0001.wav"])


def test_files_in_a_folder_are_checked_before_any_write(tmp_path):
    out = tmp_path / "wav"
    out.mkdir()
    (out / "0002.wav").write_bytes(b"the user's recording")
    (out / "mine.txt").write_text("kept")
    with pytest.raises(OutputError, match=r"already holds 0002.wav: pass --overwrite.*nothing was written"):
        check_new_files(out, ["0001.wav", "0002.wav", "0003.wav"])
    assert sorted(p.name for p in out.iterdir()) == ["0002.wav", "mine.txt"]
    assert [p.name for p in check_new_files(out, ["0001.wav", "0002.wav"], overwrite=True)] == ["0001.wav", "0002.wav"]
    (out / "0004.wav").mkdir()
    with pytest.raises(OutputError, match="0004.wav is a folder"):
        check_new_files(out, ["0004.wav"], overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_new_files(out / "mine.txt", ["0001.wav"])
    with pytest.raises(OutputError, match="folder separator"):
        check_new_files(out, ["../escape.wav"])


def test_a_single_file_is_replaced_only_when_asked_and_of_its_kind(tmp_path):
    target = tmp_path / "voice.safetensors"
    assert check_new_file(target) == target
    target.write_text("not a pack")
    with pytest.raises(OutputError, match="exists: pass --overwrite"):
        check_new_file(target)
    with pytest.raises(OutputError, match="is not a voice pack: it is never replaced"):
        check_new_file(target, overwrite=True, replaceable=lambda p: False, what="voice pack")
    assert check_new_file(target, overwrite=True, replaceable=lambda p: True) == target
    with pytest.raises(OutputError, match="is a folder"):
        check_new_file(tmp_path, overwrite=True)


def test_atomic_writes_leave_no_temporary_file_on_any_exit(tmp_path):
    target = tmp_path / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path  # writers that look at the suffix still work
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_remove_outputs_removes_only_the_named_entries(tmp_path):
    folder = claim_folder(tmp_path / "run", "train run")
    (folder.path / "checkpoint").mkdir()
    (folder.path / "checkpoint" / "meta.json").write_text("{}")
    (folder.path / "log.jsonl").write_text("{}")
    (folder.path / "notes.txt").write_text("the user's")
    remove_outputs(folder, ["checkpoint", "log.jsonl", "tb"])
    assert sorted(p.name for p in folder.path.iterdir()) == [MARKER, "notes.txt"]


@pytest.mark.parametrize("identifier", ["../../etc/passwd", "/abs/path", "..", ".", "a/b", "a\\b", "", ".hidden",
                                        "x\x00y", "\n", "~", "a" * 400])
def test_safe_name_never_leaves_the_folder(tmp_path, identifier):
    name = safe_name(identifier)
    assert name and "/" not in name and "\\" not in name and not name.startswith(".") and "\x00" not in name
    assert len(name) <= 120
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_name_keeps_ordinary_ids_and_is_injective():
    assert safe_name("p225_001") == "p225_001" and safe_name("103-1240-0000") == "103-1240-0000"
    assert safe_name("spk.utt.1") == "spk.utt.1" and safe_name("Zoë") == "Zoë"
    ids = ["a/b", "a_b", "a%2Fb", "a%b", "../x", "%2E%2E/x", "..%2Fx", ".", "%2E", "", "%"]
    assert len({safe_name(i) for i in ids}) == len(ids)
