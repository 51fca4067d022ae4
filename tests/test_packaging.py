"""The package as a user installs it: a built wheel runs `metatts demo` from an empty folder (configs/ and tasks/
travel as package data), and the README's main set-up command gives the neural vocoder, not Griffin-Lim.

Both install into a fresh venv made with ``--system-site-packages`` (torch and the other dependencies are reused,
nothing is downloaded) and run it without this checkout on ``PYTHONPATH``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _venv(path: Path) -> Path:
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(path)
    return path / "bin"


def _run(command, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(command, str))
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_wheel_installed_without_the_repository_runs_the_demo(tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w",
          str(wheels)], cwd=tmp_path)
    (wheel,) = wheels.glob("metatts-*.whl")
    bin_ = _venv(tmp_path / "venv")
    _run([str(bin_ / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], cwd=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([str(bin_ / "python"), "-c", "import metatts.recipes as r; print(r.recipe_file('tasks', "
                  "'demo.yaml'))"], cwd=empty).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the wheel's copy, not this checkout's
    _run([str(bin_ / "metatts"), "demo", "--budget", "smoke", "--out", "out"], cwd=empty, timeout=1500)
    report = (empty / "out" / "report" / "README.md").read_text()
    assert "vocoder" in report.lower() or "Griffin-Lim" in report or "HiFi-GAN" in report


def _main_install_command() -> str:
    """The install part of the README's main set-up command (everything before `&& metatts demo`)."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("pip install") and "metatts demo" in line)
    return re.split(r"\s*&&\s*metatts demo", line)[0]


@pytest.mark.slow
def test_the_main_set_up_command_installs_the_neural_vocoder(tmp_path):
    command = _main_install_command()
    assert ".ci/vocoder.txt" in command  # the weights are part of what a user runs, not only the test command
    bin_ = _venv(tmp_path / "venv")
    copy = tmp_path / "checkout"
    _run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(copy)], cwd=tmp_path)
    for name in ("README.md", "pyproject.toml", "setup.py", "MANIFEST.in", ".ci/vocoder.txt", ".ci/no-deps.txt",
                 ".ci/constraints.txt"):  # the working tree's versions (the clone has the last commit's)
        if (ROOT / name).is_file():
            (copy / name).write_text((ROOT / name).read_text())
    _run(f"PATH={bin_}:$PATH {command} -q", cwd=copy)
    probe = ("from metatts.config import AudioConfig; from metatts.vocoder import load_vocoder; "
             "print(type(load_vocoder('hifigan', AudioConfig(), 'cpu')).__name__)")
    assert _run([str(bin_ / "python"), "-c", probe], cwd=tmp_path).stdout.strip() == "HifiGanVocoder"
