"""Optional scorers: the packages of the ``eval`` extra, imported only when a scorer is built.

A scorer whose package is missing raises ``ScorerUnavailable``; its message is the one line a caller prints when it
skips that scorer ("... skipped: install metatts[eval] ..."), so every optional metric is reported the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class ScorerUnavailable(RuntimeError):
    """An optional scorer cannot run here (its package of the ``eval`` extra is not installed or is broken).

    ``scorer`` names the metric; ``str(error)`` is the full line to print when skipping it."""

    def __init__(self, scorer: str, detail: str):
        self.scorer = scorer
        self.detail = detail
        super().__init__(f"{scorer} skipped: install metatts[eval] ({detail})")


def require(module: str, scorer: str) -> ModuleType:
    """Import ``module`` for ``scorer``; ``ScorerUnavailable`` if it is missing or fails to import."""
    try:
        return importlib.import_module(module)
    except ImportError as error:  # ModuleNotFoundError included; a broken native library raises ImportError too
        raise ScorerUnavailable(scorer, f"cannot import {module}: {error}") from error
