"""`seqlab check`: the report on stdout, exit 0 / 1 / 2, one-line user errors."""

from __future__ import annotations

import pytest

from seqlab.cli import main

PLUGINS = "tests.testing.test_kit"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_conforming_mixer_exits_zero_with_the_report(capsys):
    code, out, err = run(capsys, f"{PLUGINS}:ConvDecay", "--option", "width=3")
    assert code == 0, out + err
    assert out.startswith(f"mixer '{PLUGINS}:ConvDecay': 11 passed, 0 failed, 0 skipped")
    assert "PASS  causality" in out and not err


def test_a_failing_mixer_exits_one_naming_the_failures(capsys):
    code, out, _ = run(capsys, f"{PLUGINS}:LiesAboutItsState")
    assert code == 1
    assert "1 failed" in out.splitlines()[0] and "FAIL  state_size" in out
    assert out.count("PASS") == 10


def test_objectives_and_samplers(capsys):
    code, out, _ = run(capsys, "block_diffusion", "--kind", "objective", "--option", "shift=true")
    assert code == 0 and "PASS  block_size_one_is_ar" in out
    code, out, _ = run(capsys, f"{PLUGINS}:MisscaledLoss", "--kind", "objective")
    assert code == 1 and "FAIL  nll_matches_loss" in out
    code, out, _ = run(
        capsys, "sample", "--kind", "sampler", "--option", "temperature=0.5", "--option=top_k=4"
    )
    assert code == 0 and out.startswith("sampler 'sample': 3 passed")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no_such_mixer"], "unknown mixer 'no_such_mixer'; valid mixers:"),
        (["no_such_pkg.mod:Mixer"], "does not import"),
        (["seqlab.model:Model"], "is not a seqlab.mixers.base.Mixer subclass"),
        (["gla", "--option", "bogus=1"], "unknown option(s) ['bogus']"),
        (["gla", "--option", "expand_k"], "--option takes KEY=VALUE"),
        (["gla", "--option", "only=causality"], "is not an option of the mixer"),
        (["nope", "--kind", "objective"], "unknown objective 'nope'"),
        (["nope", "--kind", "sampler"], "unknown sampler 'nope'"),
    ],
)
def test_user_errors_exit_two_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.startswith("seqlab: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_an_unknown_kind_is_a_one_line_error(capsys):
    code, out, err = run(capsys, "gla", "--kind", "tokenizer")
    assert code == 2 and not out
    assert err.startswith("seqlab: error: argument --kind: invalid choice: 'tokenizer'")
    assert len(err.strip().splitlines()) == 1
