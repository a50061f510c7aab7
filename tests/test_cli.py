"""The command line end to end on a tiny config, and every user-error path."""

import json

import pytest

from seqlab.cli import main, parse_overrides
from seqlab.errors import ConfigError
from tests.helpers import run_cli, tiny_config, write_config, write_corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(tmp / "corpus")
    config = write_config(
        tmp / "c.yaml",
        tiny_config(corpus, tmp / "cache", train={"steps": 6, "checkpoint_every": 3}),
    )
    run = tmp / "run"
    result = run_cli(
        "train",
        "--config",
        str(config),
        "--out",
        str(run),
        "--model.d_model",
        "48",
        "--train.lr=1e-3",
        check=True,
    )
    return tmp, config, run, json.loads(result.stdout.strip().splitlines()[-1])


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """Run `seqlab ARGS` in this process (fast); the subprocess path is covered separately."""

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seqlab: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_writes_resolved_config_and_applies_overrides(trained):
    _, _, run, summary = trained
    text = (run / "config.yaml").read_text()
    assert "d_model: 48" in text and "lr: 0.001" in text
    assert summary["steps"] == 6 and summary["params"] > 0
    assert (run / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()


def test_eval_prints_one_json_object(cli, trained):
    _, _, run, _ = trained
    result = cli("eval", str(run), "--split", "validation")
    metrics = json.loads(result.stdout)
    assert {"nll", "bits_per_byte", "tokens"} <= set(metrics)
    assert metrics["tokens"] > 0 and metrics["nll"] > 0


def test_sample_prints_prompt_and_continuation(cli, trained):
    _, _, run, _ = trained
    args = (
        "sample",
        run,
        "--prompt",
        "def f(",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.7",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    )
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("def f(")
    again = cli(*args)
    assert again.stdout == result.stdout


@pytest.mark.parametrize(
    "what,expected",
    [
        ("mixers", "attention"),
        ("objectives", "ar"),
        ("tasks", "text"),
        ("presets", "default"),
        ("samplers", "greedy"),
    ],
)
def test_list(cli, what, expected):
    assert expected in cli("list", what).stdout


def test_unknown_names_list_valid_ones(cli, trained):
    tmp, config, _, _ = trained
    out = str(tmp / "new")
    assert_user_error(
        cli("train", "--config", str(config), "--out", out, "--model.mixer", "nope"),
        "valid mixers:",
        "attention",
    )
    assert_user_error(
        cli("train", "--config", str(config), "--out", out, "--objective.name", "nope"),
        "valid objectives:",
        "ar",
    )
    assert_user_error(
        cli("train", "--config", str(config), "--out", out, "--task.name", "nope"),
        "valid tasks:",
        "text",
    )
    assert_user_error(
        cli("train", "--config", str(config), "--out", out, "--train.stpes", "3"), "train.steps"
    )
    assert_user_error(cli("train", "--config", "nope.yaml", "--out", out), "presets:")


def test_existing_run_and_missing_checkpoints_are_user_errors(cli, trained):
    tmp, config, run, _ = trained
    assert_user_error(cli("train", "--config", str(config), "--out", str(run)), "--resume")
    assert_user_error(
        cli("train", "--config", str(config), "--out", str(tmp / "x"), "--resume"), "no checkpoint"
    )
    assert_user_error(cli("eval", str(tmp / "missing")), "no config.yaml")
    assert_user_error(cli("eval", str(run), "--split", "tset"), "valid splits")


def test_corrupt_model_file_is_a_user_error(cli, trained, tmp_path):
    _, _, run, _ = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((run / "config.yaml").read_text())
    data = (run / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    assert_user_error(cli("eval", str(broken)), "corrupt")
    (broken / "model.safetensors").unlink()
    assert_user_error(cli("sample", str(broken), "--prompt", "x"), "not found")


def test_user_error_exits_2_from_a_real_process(trained):
    tmp, config, _, _ = trained
    assert_user_error(
        run_cli("train", "--config", str(config), "--out", str(tmp / "y"), "--model.mixer", "nope"),
        "valid mixers:",
    )


def test_bad_override_syntax():
    assert parse_overrides(["--model.d_model", "8", "--train.lr=0.5"]) == {
        "model.d_model": 8,
        "train.lr": 0.5,
    }
    with pytest.raises(ConfigError, match="overrides look like"):
        parse_overrides(["--steps", "3"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--train.steps"])


@pytest.mark.parametrize("mixer", ["attention", "gated_deltanet"])
def test_diffusion_run_trains_evaluates_as_bound_and_samples(cli, tmp_path, mixer):
    corpus = write_corpus(tmp_path / "corpus", files=6, lines=20)
    config = tiny_config(
        corpus,
        tmp_path / "cache",
        train={"steps": 4, "checkpoint_every": 4},
        objective={"name": "block_diffusion", "block_size": 4},
    )
    config["model"]["mixer"] = mixer
    config = write_config(tmp_path / "c.yaml", config)
    run = tmp_path / "run"
    assert cli("train", "--config", config, "--out", run).returncode == 0
    metrics = json.loads(cli("eval", run, "--split", "validation").stdout)
    assert metrics["bound"] is True and metrics["nll"] > 0
    for sampler, flags in (
        ("confidence", ["--threshold", "0.5"]),
        ("ancestral", ["--steps", "4", "--block-size", "4"]),
    ):
        result = cli(
            "sample", run, "--prompt", "def ", "--max-new-tokens", "8", "--sampler", sampler, *flags
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("def ")


def test_eval_scores_a_run_on_an_overridden_task_setting(cli, tmp_path):
    """`seqlab eval RUN --task.KEY VALUE` scores the trained model on another setting of its
    task (here longer test rows) and prints what `Task.evaluate` gives for that setting."""
    import torch

    from seqlab.config import load_config
    from seqlab.data.tasks import build_task
    from seqlab.io import load
    from seqlab.objectives import build_objective

    config = tiny_config(
        tmp_path / "unused",
        tmp_path / "cache",
        train={"steps": 3, "checkpoint_every": 3, "eval_tokens": 2048},
        task={"name": "selective_copy", "seq_len": 24, "num_tokens": 4, "eval_examples": 16},
    )
    config["model"]["mixer"] = "mamba"
    run = tmp_path / "run"
    assert (
        cli("train", "--config", write_config(tmp_path / "c.yaml", config), "--out", run).returncode
        == 0
    )
    plain = json.loads(cli("eval", run).stdout)
    longer = json.loads(cli("eval", run, "--task.test_seq_len", "96").stdout)
    assert plain["tokens"] == longer["tokens"] == 16 * 4
    overridden = load_config(run / "config.yaml", {"task.test_seq_len": 96})
    task = build_task(overridden)
    assert task.seq_len == 97
    objective = build_objective("ar", task.vocab_size)
    with torch.no_grad():
        expected = task.evaluate(load(run), objective, split="test")
    assert longer["nll"] == pytest.approx(expected["nll"], rel=1e-6)
    assert longer["accuracy"] == pytest.approx(expected["accuracy"])
    assert longer["nll"] != pytest.approx(plain["nll"], rel=1e-6), "the rows did change"

    assert_user_error(cli("eval", run, "--model.d_model", "8"), "only --task.*", "--model.d_model")
    assert_user_error(cli("eval", run, "--task.alphabet_size", "5"), "vocab_size 8", "19")
    assert_user_error(cli("eval", run, "--task.test_seq_len", "10"), "test_seq_len must be")
    assert_user_error(cli("eval", run, "--dynamic", "lr=1e-3"), "--dynamic", "not text")


def test_eval_dynamic_prints_static_and_dynamic_scores_and_leaves_the_run(cli, trained):
    """`seqlab eval RUN --dynamic ...` scores the split as one sequence, static and adapted,
    with the gain in bits per byte; lr 0 gains exactly nothing; the run is only read."""
    _, _, run, _ = trained
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ("eval", run, "--split", "validation", "--max-tokens", "200")
    result = cli(*args, "--dynamic", "lr=1e-4,decay=0.01,segment=16,ms_batches=2")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["tokens"] == 200 and metrics["segment"] == 16 and metrics["lr"] == 1e-4
    assert metrics["context"] == 32 - 16  # the run's seq_len minus one segment
    assert metrics["static_bits_per_byte"] > 0 and metrics["dynamic_bits_per_byte"] > 0
    assert metrics["gain_bits_per_byte"] == pytest.approx(
        metrics["static_bits_per_byte"] - metrics["dynamic_bits_per_byte"]
    )
    assert metrics["gain_bits_per_byte"] != 0
    frozen = json.loads(cli(*args, "--dynamic", "lr=0,decay=0.01,segment=16").stdout)
    assert frozen["gain_bits_per_byte"] == 0
    assert frozen["static_bits_per_byte"] == metrics["static_bits_per_byte"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_version_prints_the_installed_version(cli, capsys):
    import seqlab

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"seqlab {seqlab.__version__}"


def test_train_help_lists_every_config_key_with_default_and_doc(capsys):
    from seqlab.config import config_keys

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    keys = config_keys()
    assert len(keys) > 40
    for key in keys:
        assert key.doc, f"{key.key} has no doc line in its dataclass's Keys: section"
        line = next(line for line in text.splitlines() if line.split()[:1] == [f"--{key.key}"])
        assert repr(key.default) in line and key.doc.split()[0] in line


def test_print_config_prints_the_resolved_config_and_trains_nothing(cli, tmp_path):
    import yaml

    result = cli("train", "--print-config", "--model.mixer", "gla", "--train.steps", "7")
    assert result.returncode == 0
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["mixer"] == "gla" and printed["train"]["steps"] == 7
    assert not list(tmp_path.iterdir())
    assert_user_error(cli("train", "--model.mixer", "gla"), "needs --out")


def test_list_verbose_shows_each_components_options_with_defaults(cli):
    result = cli("list", "mixers", "-v")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    gla = lines.index(next(line for line in lines if line.startswith("gla ")))
    options = []
    for line in lines[gla + 1 :]:
        if not line.startswith(" "):
            break
        options.append(line.strip())
    assert "heads: int = model.n_heads" in options and "gate_rank: int = 16" in options
    objectives = cli("list", "objectives", "-v").stdout
    assert "block_size: int = 16" in objectives
