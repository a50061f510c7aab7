"""A non-editable install carries everything the package reads at run time: the wheel built
from a clean copy of the source holds every module and every YAML file under src/seqlab, and
seqlab installed from it (not from src/) finds its presets and built-in experiments."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "seqlab"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a fresh copy of the project (no stale build/ from an earlier build), built
    offline with the setuptools already installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (built,) = out.glob("seqlab-*.whl")
    return built


def packaged_files(root: Path, pattern: str) -> set[str]:
    return {f"seqlab/{p.relative_to(root).as_posix()}" for p in root.rglob(pattern)}


def test_the_wheel_holds_every_module_and_every_yaml_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = packaged_files(PACKAGE, "*.yaml")
    assert {"seqlab/presets/default.yaml", "seqlab/experiments/quickstart.yaml"} <= yamls
    assert yamls <= names, sorted(yamls - names)
    modules = packaged_files(PACKAGE, "*.py")
    assert modules <= names, sorted(modules - names)


def test_an_installed_wheel_finds_its_presets_and_experiments(wheel, tmp_path):
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
        + ["--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    script = (
        "import json, seqlab\n"
        "from seqlab.harness.grid import list_experiments, load_compare_config\n"
        "config = load_compare_config('quickstart')\n"
        "print(json.dumps({'file': seqlab.__file__, 'presets': seqlab.list_presets(),\n"
        "    'experiments': list_experiments(), 'name': config.name}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["file"]).is_relative_to(site)  # the installed copy, not src/
    assert found["presets"] == sorted(p.stem for p in (PACKAGE / "presets").glob("*.yaml"))
    assert found["experiments"] == sorted(p.stem for p in (PACKAGE / "experiments").glob("*.yaml"))
    assert found["name"] == "quickstart"
