"""docs/extending.md's recipes, followed for real: each component is two files, written into a
copy of the package and its tests with no other edit, then found, listed and checked."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

RECIPE_FILE = re.compile(r"```python file=(\S+)\n(.*?)```", re.S)


def recipe_files() -> dict[str, str]:
    text = (ROOT / "docs" / "extending.md").read_text()
    return {path: body for path, body in RECIPE_FILE.findall(text)}


def test_every_recipe_is_two_files():
    files = recipe_files()
    modules = [p for p in files if p.startswith("src/")]
    tests = [p for p in files if p.startswith("tests/")]
    assert len(modules) == len(tests) == 3, sorted(files)


@pytest.fixture(scope="module")
def copy_with_recipes(tmp_path_factory):
    """This repository's package and the recipes' files, in a fresh folder."""
    root = tmp_path_factory.mktemp("recipes")
    shutil.copytree(
        ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for path, body in recipe_files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    for path in recipe_files():
        if path.startswith("tests/"):
            (root / path).parent.joinpath("__init__.py").touch()
    (root / "tests" / "__init__.py").touch()
    return root


def run(root, *args):
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=root, env=env, timeout=600
    )


def test_recipe_components_are_found_listed_and_pass_their_tests(copy_with_recipes):
    root = copy_with_recipes
    for kind, name, option in [
        ("mixers", "ema", "conv_size: int = 4"),
        ("objectives", "smoothed_ar", "smoothing: float = 0.1"),
        ("samplers", "epsilon", "epsilon: float = 0.0003"),
    ]:
        listed = run(root, "-m", "seqlab", "list", kind, "-v")
        assert listed.returncode == 0, listed.stderr
        assert re.search(rf"^{name}\s", listed.stdout, re.M), listed.stdout
        assert option in listed.stdout
    tests = [p for p in recipe_files() if p.startswith("tests/")]
    result = run(root, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(recipe_files()[path].count("\ndef test_") for path in tests)
    assert f"{count} passed" in result.stdout and "failed" not in result.stdout
