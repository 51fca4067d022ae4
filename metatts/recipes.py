"""The shipped recipes: ``configs/*.yaml`` (one per recipe) and ``tasks/*.yaml`` (the few-shot task suites).

They live at the top of the repository, where users read and copy them; a wheel carries copies under
``metatts/recipes/`` (``setup.py`` copies them at build time), found here through ``importlib.resources``, so an
installed ``metatts demo`` runs without the repository. A source checkout or editable install reads the
repository's own folders.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

KINDS = ("configs", "tasks")
_SOURCE_TREE = Path(__file__).resolve().parents[1]


def recipe_file(kind: str, name: str) -> Path:
    """The path of a shipped recipe file, e.g. ``recipe_file("configs", "demo.yaml")``."""
    if kind not in KINDS:
        raise ValueError(f"recipe kind must be one of {', '.join(KINDS)}, got {kind!r}")
    packaged = resources.files("metatts").joinpath("recipes", kind, name)
    if packaged.is_file():
        return Path(str(packaged))
    source = _SOURCE_TREE / kind / name
    if source.is_file():
        return source
    raise FileNotFoundError(f"metatts ships no {kind}/{name} (looked in the installed package and in {_SOURCE_TREE})")
