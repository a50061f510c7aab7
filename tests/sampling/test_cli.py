import pytest

import seqlab
from seqlab.cli import main
from tests.sampling.helpers import noisy_copy, tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    target = tiny(vocab=256, layers=1)
    seqlab.save(target, root / "target")
    seqlab.save(noisy_copy(target, 0.05), root / "draft")
    return root


def sample(runs, capsys, *args):
    code = main(
        ["sample", str(runs / "target"), "--prompt", "def f", "--max-new-tokens", "6", *args]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.rstrip("\n"), captured.err


def test_cli_sample_options_run(runs, capsys):
    greedy, _ = sample(runs, capsys, "--temperature", "0")
    assert greedy.startswith("def f")
    for args in (
        ["--top-k", "5", "--top-p", "0.9", "--min-p", "0.05", "--typical-p", "0.9"],
        ["--repetition-penalty", "1.3", "--sampler", "greedy"],
        ["--num-beams", "3", "--length-penalty", "0.5"],
        ["--num-beams", "4", "--num-groups", "2", "--diversity-penalty", "1.0"],
        ["--draft", str(runs / "draft"), "--num-draft-tokens", "3", "--top-k", "4"],
    ):
        text, err = sample(runs, capsys, *args)
        assert text.startswith("def f") and "tokens/s" in err


def test_cli_speculative_greedy_equals_greedy_and_streams(runs, capsys):
    greedy, _ = sample(runs, capsys, "--temperature", "0")
    spec, err = sample(runs, capsys, "--temperature", "0", "--draft", str(runs / "draft"))
    assert spec == greedy and "acceptance" in err
    streamed, _ = sample(runs, capsys, "--temperature", "0", "--stream")
    assert streamed == greedy


def test_cli_stop_string_cuts_the_text(runs, capsys):
    greedy, _ = sample(runs, capsys, "--temperature", "0")
    stop = greedy[-3:-1]
    text, _ = sample(runs, capsys, "--temperature", "0", "--stop", stop)
    assert text == greedy[: greedy.index(stop, 5) + len(stop)] and len(text) < len(greedy)


def test_cli_batch_of_prompts_equals_each_alone(runs, capsys):
    one, _ = sample(runs, capsys, "--temperature", "0")
    code = main(
        [
            "sample",
            str(runs / "target"),
            "--prompt",
            "x = 1",
            "--max-new-tokens",
            "6",
            "--temperature",
            "0",
        ]
    )
    other = capsys.readouterr().out.rstrip("\n")
    assert code == 0
    both, err = sample(runs, capsys, "--temperature", "0", "--prompt", "x = 1")
    assert both == one + "\n\n" + other and "12 tokens" in err
