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


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    from seqlab.config import ExperimentConfig, ObjectiveConfig

    model = tiny(vocab=257, layers=1)  # bytes and the mask
    run = tmp_path_factory.mktemp("diffusion") / "run"
    objective = ObjectiveConfig(name="masked_diffusion")
    seqlab.save(model, run, ExperimentConfig(model=model.config, objective=objective))
    return run


def test_sampler_options_pass_through_to_the_sampler(runs, capsys, diffusion_run):
    """`--sampler.KEY VALUE` reaches any option of any sampler, flags or not."""
    from seqlab.data.tokenizers import load_tokenizer
    from seqlab.objectives import build_objective

    flag, _ = sample(runs, capsys, "--top-k", "3", "--seed", "1")
    option, _ = sample(runs, capsys, "--sampler.top_k", "3", "--seed", "1")
    assert option == flag
    beams, _ = sample(runs, capsys, "--num-beams", "3", "--sampler.early_stopping=false")
    assert beams.startswith("def f")
    args = ["--sampler", "remask", "--sampler.eta", "0.3", "--sampler.strategy=rescale"]
    code = main(["sample", str(diffusion_run), "--prompt", "ab", "--max-new-tokens", "5", *args])
    text = capsys.readouterr().out.rstrip("\n")
    assert code == 0
    tokenizer = load_tokenizer("byte", diffusion_run)
    model = seqlab.load(diffusion_run)
    expected = seqlab.generate(
        model,
        [tokenizer.encode("ab")],
        max_new_tokens=5,
        sampler="remask",
        objective=build_objective("masked_diffusion", tokenizer.vocab_size),
        eta=0.3,
        strategy="rescale",
        temperature=1.0,
        seed=0,
    )
    assert text == tokenizer.decode(expected.tokens[0].tolist())


def _error(capsys, *args):
    code = main(["sample", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("seqlab: error:"), err
    return err[0]


def test_unknown_or_missing_sampler_options_are_one_line_errors(runs, capsys, diffusion_run):
    line = _error(
        capsys, str(diffusion_run), "--prompt", "a", "--sampler", "remask", "--sampler.etta", "0.1"
    )
    assert "etta" in line and "valid options" in line and "eta" in line and "strategy" in line
    line = _error(capsys, str(runs / "target"), "--prompt", "a", "--sampler", "speculative")
    assert "--sampler.draft_model" in line and "--draft" in line
    line = _error(capsys, str(runs / "target"), "--prompt", "a", "--sampler.top_k")
    assert "needs a value" in line


def test_sample_help_and_list_show_every_samplers_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "remask (diffusion)" in out and "eta: float = 0.04" in out
    assert "strategy: str = 'cap'" in out
    assert "draft_model: Model (required)" in out and "num_draft_tokens: int = 4" in out
    assert main(["list", "samplers", "-v"]) == 0
    out = capsys.readouterr().out
    assert "    strategy: str = 'cap'" in out and "    draft_model: Model (required)" in out


def test_cli_kv_cache_policy_bounds_the_cache(runs, capsys):
    greedy, _ = sample(runs, capsys, "--temperature", "0")
    unlimited, _ = sample(
        runs, capsys, "--temperature", "0", "--kv-cache", "{policy: cluster, budget: 64}"
    )
    assert unlimited == greedy
    for args in (
        ["--kv-cache", "{policy: sink, budget: 3, sinks: 1}"],
        ["--sampler.kv_cache", "{policy: h2o, budget: 4}", "--top-k", "3"],
    ):
        text, err = sample(runs, capsys, *args)
        assert text.startswith("def f") and "tokens/s" in err
    code = main(["sample", str(runs / "target"), "--prompt", "x", "--kv-cache", "{policy: lru}"])
    err = capsys.readouterr().err
    assert code == 2 and "kv_cache policy must be one of exact" in err
