"""Registries read the code: discovery, options from signatures, import paths, entry points."""

import subprocess
import sys
import textwrap

import pytest
import torch

from seqlab import ModelConfig, build_model, generate
from seqlab.errors import ConfigError, UnknownNameError
from seqlab.layout import ALL_LAYOUTS
from seqlab.mixers.base import Mixer
from seqlab.objectives import build_objective
from seqlab.objectives.ar import Autoregressive
from seqlab.registry import MIXERS, OBJECTIVES, SAMPLERS, TASKS, Registry
from tests.helpers import ROOT


def test_every_module_of_a_package_is_discovered_without_being_listed():
    assert {"attention", "gla", "mamba", "lstm", "s4d"} <= set(MIXERS.names())
    assert {"ar", "block_diffusion"} <= set(OBJECTIVES.names())
    assert {"greedy", "remask"} <= set(SAMPLERS.names())
    assert {"mqar", "text"} <= set(TASKS.names())


def test_a_new_module_in_the_package_is_found_with_no_other_edit(tmp_path, monkeypatch):
    package = tmp_path / "newpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "extra.py").write_text(
        textwrap.dedent(
            """
            from tests.test_registry import LOCAL
            @LOCAL.register("found")
            def found(model, prompt, max_new_tokens, *, width: int = 3):
                '''A sampler found by walking the package.'''
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(
        "sampler", "newpkg", "newpkg", positional=3, declarations={"paradigm": "ar"}
    )
    globals()["LOCAL"] = registry
    try:
        assert registry.names() == ["found"]
        entry = registry.get("found")
        assert entry.options() == {"width": 3}
        assert entry.description == "A sampler found by walking the package."
        assert entry.declared("paradigm") == "ar"
    finally:
        del globals()["LOCAL"]


def test_declarations_are_class_attributes():
    gla = MIXERS.get("gla")
    assert gla.declared("layouts") == ALL_LAYOUTS == gla.target.layouts
    assert MIXERS.get("attention").declared("state_kind") == "kv_cache"
    assert SAMPLERS.get("remask").declared("paradigm") == "diffusion"
    with pytest.raises(TypeError, match="declare only"):
        MIXERS.register("x", family="ssm")


def test_options_are_read_from_the_constructor_signature():
    options = MIXERS.get("gla").options()
    assert repr(options["heads"]) == "model.n_heads"
    assert options["gate_rank"] == 16 and "d_model" not in options
    assert OBJECTIVES.get("block_diffusion").options()["block_size"] == 16
    assert "data" not in TASKS.get("text").options()


def test_unknown_names_and_bad_import_paths_are_one_line_config_errors():
    with pytest.raises(UnknownNameError, match="valid mixers: attention"):
        MIXERS.get("atention")
    for path, fragment in [
        ("no_such_module_xyz:Mixer", "does not import"),
        ("seqlab.model:NoSuchName", "has no 'NoSuchName'"),
        ("seqlab.model:Model", "is not a seqlab.mixers.base.Mixer subclass"),
        ("seqlab.model:", "must look like package.module:Name"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as error:
            MIXERS.get(path)
        assert "\n" not in str(error.value)


class Doubling(Mixer):
    """A test mixer outside the registry: y = 2 x (causal, no state)."""

    def __init__(self, d_model: int, *, scale: float = 2.0) -> None:
        super().__init__()
        self.d_model, self.scale = d_model, scale

    def forward(self, x, state=None, *, layout=None, positions=None):
        return self.scale * x, state

    def init_state(self, batch_size, *, device=None, dtype=None):
        return None

    def state_size(self, seq_len):
        return 0


def test_an_unregistered_mixer_class_is_used_by_import_path():
    path = "tests.test_registry:Doubling"
    model = build_model(
        ModelConfig(mixer=path, d_model=8, n_heads=2, vocab_size=11, mixer_options={path: {}})
    )
    assert isinstance(model.blocks[0].mixer, Doubling)
    assert model.layouts == {"causal"}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['scal'\].*valid options: scale"):
        build_model(ModelConfig(mixer=path, d_model=8, mixer_options={path: {"scal": 1.0}}))


def test_installed_entry_points_are_discovered(tmp_path):
    """A package that declares `[project.entry-points."seqlab.mixers"]` is found by name."""
    dist = tmp_path / "plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[seqlab.mixers]\ndoubling = tests.test_registry:Doubling\n"
        "missing = no_such_plugin_module:Mixer\nwrong = seqlab.model:Model\n"
    )
    script = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        from seqlab.errors import ConfigError
        from seqlab.registry import MIXERS
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = MIXERS.names()
        print(MIXERS.get("doubling").target.__name__, "doubling" in names, "gla" in names)
        print(len(caught), "missing" in names or "wrong" in names)
        for name in ("missing", "wrong"):
            try:
                MIXERS.get(name)
            except ConfigError as error:
                print(error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    found, warned, missing, wrong = result.stdout.splitlines()
    assert found.split() == ["Doubling", "True", "True"]
    assert warned.split() == ["2", "False"]  # broken plugins are set aside, the rest works
    assert missing.startswith("mixer 'missing' (entry point no_such_plugin_module:Mixer")
    assert "ModuleNotFoundError" in missing
    assert "is not a seqlab.mixers.base.Mixer subclass" in wrong


def test_importing_the_config_does_not_import_the_model():
    script = (
        "import sys, seqlab.config; print(sorted(m for m in sys.modules if m.startswith('seqlab')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = eval(result.stdout)
    assert "seqlab.model" not in loaded and "seqlab.mixers" not in loaded, loaded


def test_no_circular_imports_in_any_module():
    """Every module imports on its own in a fresh interpreter (a cycle fails one of them)."""
    modules = sorted(
        ".".join(p.relative_to(ROOT / "src").with_suffix("").parts)
        for p in (ROOT / "src" / "seqlab").rglob("*.py")
        if p.name != "__main__.py"
    )
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n"
    script += (
        "    for m in [k for k in sys.modules if k.startswith('seqlab')]: del sys.modules[m]\n"
    )
    script += "    importlib.import_module(name.removesuffix('.__init__'))\n"
    subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, check=True)


def test_classes_are_named_by_the_registry_not_by_restating_it():
    assert OBJECTIVES.get("block_diffusion").target.name == "block_diffusion"
    assert TASKS.get("selective_copy").target.name == "selective_copy"
    assert MIXERS.get("gla").target.name == "gla"
    assert MIXERS.get("tests.test_registry:Doubling").target.name == "tests.test_registry:Doubling"


def test_decoders_and_the_config_import_no_mixer_module():
    """Decoders work on any state through `seqlab.state`; configs name components lazily."""
    import ast

    for path in [
        *(ROOT / "src" / "seqlab" / "sampling").glob("*.py"),
        ROOT / "src/seqlab/config.py",
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("seqlab.mixers"), (path, node.module)


class ScaledAR(Autoregressive):
    """A test objective outside the registry: the AR loss times `weight`."""

    def __init__(self, *, weight: float = 1.0) -> None:
        self.weight = weight

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        return self.weight * loss, metrics


def test_objectives_and_samplers_are_also_used_by_import_path():
    path = "tests.test_registry:ScaledAR"
    objective = build_objective(path, 16, weight=2.0)
    assert isinstance(objective, ScaledAR) and objective.name == path
    with pytest.raises(ConfigError, match=r"\['weigth'\].*valid options: weight"):
        build_objective(path, 16, weigth=2.0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, vocab_size=16))
    out = generate(model, [[1, 2]], max_new_tokens=3, sampler="seqlab.sampling.ar:greedy")
    assert torch.equal(out.tokens, generate(model, [[1, 2]], max_new_tokens=3).tokens)
