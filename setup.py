"""Build step that pyproject.toml cannot express: the wheel carries configs/*.yaml and tasks/*.yaml (kept at the top
of the repository for users) as package data under metatts/recipes/, where ``metatts.recipes`` finds them."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithRecipes(build_py):
    def run(self):
        super().run()
        for kind in ("configs", "tasks"):
            target = Path(self.build_lib) / "metatts" / "recipes" / kind
            self.mkpath(str(target))
            for source in sorted((ROOT / kind).glob("*.yaml")):
                self.copy_file(str(source), str(target / source.name))


setup(cmdclass={"build_py": BuildWithRecipes})
