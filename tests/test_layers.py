"""The package's layers, read from the imports (``ast``: top-level and in-function imports alike): a module may import
its own layer and the layers below it, never one above. The README's architecture section shows the same list.

Inference -- ``checkpoints``, ``adapt``, ``evaluation``, ``api`` -- therefore imports no training code: ``train``
and the training parts of ``meta`` (outer loop, meta-step, distributed) sit above them. ``meta.inner_loop`` and
``meta.inner_lr`` are the pure functions both sides share (parameters in, parameters out; no I/O), so they count
with the model.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "metatts"

# Lowest first. A name is a package (every module under it) or a module; the longest matching name wins.
LAYERS = [
    ["config", "runtime", "recipes"],
    ["corpus", "text", "features", "align"],
    ["model", "vocoder", "meta.inner_loop", "meta.inner_lr"],
    ["episodes"],
    ["checkpoints"],
    ["adapt"],
    ["evaluation"],
    ["meta", "train"],
    ["api"],
    ["cli", "demo", "demo_report", "bench", "serve", "__main__", "__init__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
INFERENCE = ("checkpoints", "adapt", "evaluation", "api")
TRAINING = ("train", "meta")


def layer_name(module: str) -> str:
    """The LAYERS entry of a dotted module name relative to the package (``meta.step`` -> ``meta``)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    raise AssertionError(f"metatts.{module} is in no layer: add it to LAYERS here and to the README's list")


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every ``metatts.*`` import, both relative to the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.startswith("metatts."):
                    name = target.removeprefix("metatts.")
                    # `from metatts.meta import distributed`: the submodule when it exists, else the package.
                    if (PACKAGE / Path(*name.split("."))).with_suffix(".py").is_file() or \
                            (PACKAGE / Path(*name.split("."))).is_dir() or target == getattr(node, "module", None):
                        found.append((module, name, node.lineno))
    return found


def test_every_import_points_to_the_same_layer_or_below():
    upward = [f"metatts.{src} (line {line}) imports metatts.{dst}: {layer_name(src)} is below {layer_name(dst)}"
              for src, dst, line in imports() if RANK[layer_name(dst)] > RANK[layer_name(src)]]
    assert not upward, "\n".join(upward)


def test_inference_imports_no_training_module():
    offending = [f"metatts.{src} (line {line}) imports metatts.{dst}" for src, dst, line in imports()
                 if src.split(".")[0] in INFERENCE and layer_name(dst).split(".")[0] in TRAINING
                 and layer_name(dst) not in ("meta.inner_loop", "meta.inner_lr")]
    assert not offending, "\n".join(offending)


def test_the_checker_sees_a_violation(tmp_path):
    # The test above would pass on an empty import list: make sure a real upward import is read and ranked.
    found = {(src, dst) for src, dst, _ in imports()}
    assert ("meta.outer_loop", "checkpoints") in found and ("api", "checkpoints") in found
    assert RANK[layer_name("meta.step")] > RANK[layer_name("evaluation.curves")]
    assert layer_name("meta.inner_loop") == "meta.inner_loop" and layer_name("meta.step") == "meta"
