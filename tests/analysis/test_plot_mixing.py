"""`seqlab plot-mixing`: heatmaps of a saved model's mixing matrices, and its user errors."""

from __future__ import annotations

import pytest

import seqlab
from seqlab.cli import main
from seqlab.config import ModelConfig
from seqlab.model import build_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A saved hybrid (byte tokenizer): gla, attention with grouped heads, and an LSTM."""
    config = ModelConfig(
        vocab_size=256, d_model=16, n_heads=2, n_kv_heads=1, layers=["gla", "attention", "lstm"]
    )
    directory = tmp_path_factory.mktemp("plot") / "model"
    seqlab.save(build_model(config), directory)
    return directory


def plot(capsys, *args):
    code = main(["plot-mixing", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_writes_one_png_of_every_layer_with_a_matrix(run, tmp_path, capsys):
    out = tmp_path / "maps.png"
    code, stdout, stderr = plot(capsys, run, "--text", "def f(x):", "--out", out)
    assert (code, stdout.strip(), stderr) == (0, str(out), "")
    assert out.read_bytes().startswith(PNG)
    long = tmp_path / "long.png"
    args = ("--layer", "0,1", "--heads", "all", "--log", "--out", long)
    assert plot(capsys, run, "--text", "x = 1\n" * 10, *args)[0] == 0
    assert long.read_bytes().startswith(PNG)


def test_an_existing_file_is_kept_unless_overwrite(run, tmp_path, capsys):
    out = tmp_path / "maps.png"
    out.write_bytes(b"mine")
    code, _, stderr = plot(capsys, run, "--text", "abc", "--out", out)
    assert code == 2 and stderr.startswith("seqlab: error:") and str(out) in stderr
    assert "--overwrite" in stderr and out.read_bytes() == b"mine"
    assert plot(capsys, run, "--text", "abc", "--out", out, "--overwrite")[0] == 0
    assert out.read_bytes().startswith(PNG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.png"]  # no temporaries left


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--layer", "3"], "layer 3 is outside 0 … 2"),
        (["--layer", "x"], "--layer takes 'all' or integers"),
        (["--layer", "2"], "'lstm' has no mixing matrix"),
        (["--heads", "2"], "head 2 is outside 0 … 1"),
        (["--text", ""], "--text must encode to 1 … 256 tokens"),
    ],
)
def test_user_errors_exit_2_with_one_line(run, tmp_path, capsys, args, fragment):
    out = tmp_path / "maps.png"
    args = ["--text", "abc", *args] if args[0] != "--text" else args
    code, _, stderr = plot(capsys, run, *args, "--out", out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("seqlab: error:") and fragment in stderr, stderr
    assert not out.exists()


def test_a_run_without_any_matrix_names_the_mixers_that_have_one(tmp_path, capsys):
    directory = tmp_path / "model"
    seqlab.save(build_model(ModelConfig(vocab_size=256, d_model=16, mixer="lstm")), directory)
    code, _, stderr = plot(capsys, directory, "--text", "abc", "--out", tmp_path / "m.png")
    assert code == 2 and "no layer of this run has a mixing matrix" in stderr
    assert "attention" in stderr
