"""Where commands write: one policy for every output folder and file, so nothing the user has is overwritten.

Three kinds of output, three rules:

- **A folder a command owns** (a feature store, a training run, an evaluation, the demo): created when missing or
  empty, and marked with a small JSON file naming its kind (``.metatts-output`` here; the demo's state file plays
  that part for the demo). Later runs of the same kind accept it (re-runs resume or reuse); a file, a folder of
  another kind, or a folder holding anything else is refused before any work, with what is there, and nothing is
  changed. Folders written by an older metatts (before the marker) are recognized by their own files (``adopt``).
- **Files a command adds to a folder** (``synthesize``'s wavs, ``align``'s PNGs, ``bench``'s JSON): the folder may
  hold anything; every target name is checked before the first write, and one that exists is refused unless the
  command was given ``--overwrite``.
- **One file** (``adapt``'s voice pack): refused when it exists, unless ``--overwrite`` and the existing file is of
  the same kind (``replaceable``); a folder in its place is always refused.

Every write goes to a temporary name beside its target and is renamed into place (:func:`atomic_path`); the
temporary file is removed on every exit path, so a failed or killed write never leaves a half file or litter.
Ids from corpora become file names only through :func:`safe_name`: they are data, never paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MARKER = ".metatts-output"  # JSON {"kind": ...} in a folder a command owns
MAX_NAME_CHARS = 120  # longer ids are shortened and given a hash suffix (file systems allow 255 bytes)


class OutputError(ValueError):
    """An output path would overwrite something that is not this command's output, or cannot be written."""


@dataclass
class OutputFolder:
    """A folder claimed by a command: ``existing`` when it already held output of the same kind (a re-run)."""

    path: Path
    kind: str
    existing: bool


def _listing(path: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_marker(path: str | os.PathLike, marker: str = MARKER) -> dict | None:
    """The marker of ``path`` (a dict with at least ``kind``), or None when it has none or it is unreadable."""
    file = Path(path) / marker
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def check_writable(folder: Path, flag: str = "--out") -> None:
    """Raise ``OutputError`` unless a file can be created in ``folder`` (an existing directory)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".metatts-probe-", dir=folder)
    except OSError as error:
        raise OutputError(f"{flag} {folder}: cannot write there ({error.strerror or error})") from None
    os.close(handle)
    os.unlink(probe)


def _make_folder(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{flag} {path}: cannot create the folder ({error.strerror or error})") from None


def claim_folder(path: str | os.PathLike, kind: str, *, flag: str = "--out", marker: str = MARKER,
                 write_marker: bool = True, adopt: Callable[[Path], bool] | None = None,
                 label: str | None = None) -> OutputFolder:
    """Make ``path`` an output folder of ``kind``, or accept it when it already is one (see the module docstring).

    ``adopt(path)`` recognizes a folder of this kind written before markers existed; it is marked and accepted.
    ``write_marker=False``: the caller writes ``marker`` itself (the demo's state file), this only checks it.
    ``label`` names the kind in messages (default: ``kind``).
    """
    path = Path(path)
    label = label or kind
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    existing = False
    if path.is_dir() and any(path.iterdir()):
        found = read_marker(path, marker)
        if found is not None and found["kind"] != kind:
            raise OutputError(f"{flag} {path} is a metatts {found['kind']} folder, not a {label}: choose another "
                              f"{flag} (nothing was changed)")
        if found is None and (path / marker).exists():
            raise OutputError(f"{flag} {path}: {path / marker} is damaged or not a metatts marker: choose another "
                              f"{flag} (nothing was changed)")
        if found is None and not (adopt is not None and adopt(path)):
            raise OutputError(f"{flag} {path} holds files that are not a metatts {label} ({_listing(path)}; no "
                              f"{marker}): choose another {flag} (nothing was changed)")
        existing = True
    _make_folder(path, flag)
    check_writable(path, flag)
    if write_marker and read_marker(path, marker) is None:
        with atomic_path(path / marker) as tmp:
            tmp.write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    return OutputFolder(path=path, kind=kind, existing=existing)


def check_new_files(folder: str | os.PathLike, names: Iterable[str], *, overwrite: bool = False,
                    flag: str = "--out") -> list[Path]:
    """Paths ``folder/name`` a command may write: ``folder`` is created (or is an existing folder) and writable,
    and no target exists, unless ``overwrite`` (then existing files may be replaced; folders never are)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder: choose another {flag}")
    paths = [folder / name for name in names]
    for path in paths:
        if path.name != Path(path.name).name or path.parent != folder:
            raise OutputError(f"{path}: an output name must not contain a folder separator")
    taken = [p for p in paths if p.exists() and (p.is_dir() or not overwrite)]
    if taken:
        folders = [p for p in taken if p.is_dir()]
        if folders:
            raise OutputError(f"{flag} {folder}: {folders[0].name} is a folder where a file is to be written: choose "
                              f"another {flag}")
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise OutputError(f"{flag} {folder} already holds {taken[0].name}{more}: pass --overwrite to replace, or "
                          f"choose another {flag} (nothing was written)")
    _make_folder(folder, flag)
    check_writable(folder, flag)
    return paths


def check_new_file(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out",
                   replaceable: Callable[[Path], bool] | None = None, what: str = "file") -> Path:
    """A single output file: refused when it is a folder; when it exists, refused unless ``overwrite`` and
    ``replaceable(path)`` says it is a ``what`` this command may replace. Its folder is created and checked."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder: give the {what} a file name (inside it, if you like)")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputError(f"{flag} {path} exists: pass --overwrite to replace it, or choose another name "
                              f"(nothing was written)")
        if replaceable is not None and not replaceable(path):
            raise OutputError(f"{flag} {path} exists and is not a {what}: it is never replaced; choose another name")
    _make_folder(path.parent, flag)
    check_writable(path.parent, flag)
    return path


def remove_outputs(folder: OutputFolder, names: Iterable[str]) -> None:
    """Remove the named entries (files or folders) of a claimed folder, so a run starts again (``--overwrite``).
    Only names the command itself writes are passed here; anything else in the folder stays."""
    import shutil

    for name in names:
        path = folder.path / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that look at it pick the format); renamed onto
    ``path`` when the block succeeds and removed when it fails, however it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def safe_name(identifier: str) -> str:
    """A file name for an id from a corpus or manifest: letters, digits, ``-``, ``_`` and inner dots are kept;
    everything else (separators, a leading dot, control characters) is %-escaped. Distinct ids give distinct
    names, and none can leave the folder it is joined to. Long ids are cut and suffixed with a hash."""
    out = []
    for index, char in enumerate(str(identifier)):
        if (char.isalnum() and char.isprintable()) or char in "-_" or (char == "." and index > 0):
            out.append(char)
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8")))
    name = "".join(out) or "%"
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.blake2b(str(identifier).encode("utf-8"), digest_size=8).hexdigest()
        name = f"{name[:MAX_NAME_CHARS - 17]}~{digest}"
    return name
