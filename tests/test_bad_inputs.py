"""Every user error is one line `seqlab: error: ...` and exit code 2 (the CLI), or one of
seqlab's own error classes (the Python API), and leaves what is on disk untouched.

Each row of the table is one bad input. The CLI rows run `seqlab.cli.main` in-process next to
a run trained once for the module; the run directory is hashed before and after every row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import seqlab
from seqlab.cli import main
from seqlab.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from seqlab.errors import CheckpointError, ConfigError, SeqlabError, ShapeError
from seqlab.layout import Layout, LayoutKind
from seqlab.model import build_model
from seqlab.registry import MIXERS
from seqlab.sampling import generate
from tests.helpers import tiny_config, write_config, write_corpus

RUN = "{run}"
CONFIG = "{config}"
FRESH = "{fresh}"
BASE = "{base}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny trained run, its config file, and bad config files beside it."""
    base = tmp_path_factory.mktemp("bad_inputs")
    corpus = write_corpus(base / "corpus", files=4, lines=20)
    config = tiny_config(corpus, base / "cache", train={"steps": 2, "eval_every": 2})
    config_path = write_config(base / "config.yaml", config)
    run = base / "run"
    assert main(["train", "--config", str(config_path), "--out", str(run)]) == 0
    (base / "syntax.yaml").write_text("model: [1, 2\ntrain: {steps: 3}\n")
    (base / "list.yaml").write_text("- 1\n- 2\n")
    (base / "section.yaml").write_text("model: 3\n")
    (base / "section_list.yaml").write_text("train: [1, 2]\n")
    (base / "options.yaml").write_text("objective: {name: ar, options: 5}\n")
    (base / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (base / "tabs.yaml").write_text("model:\n\td_model: 3\n")
    (base / "a_dir.yaml").mkdir()
    return base, run, config_path


def tree_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def bad(values: dict[str, list[object]]) -> list[list[str]]:
    """`train` rows overriding one key with each bad value."""
    return [
        ["train", "--config", CONFIG, "--out", FRESH, f"--{key}", str(value)]
        for key, options in values.items()
        for value in options
    ]


TRAIN_ROWS = (
    bad(
        {
            "train.lr": [0, -1, "nan", "inf", "-inf", "abc", "[1]"],
            "train.beta1": [1, 1.5, -0.1, "nan"],
            "train.beta2": [1.0, -1, "nan", "x"],
            "train.min_lr_ratio": [-0.1, 1.01, "nan"],
            "train.grad_clip": [-1, "nan", "inf"],
            "train.weight_decay": [-0.5, "nan"],
            "train.threads": [0, -2, 1.5],
            "train.spike_guard": [-1, 0.5, 1, "nan", "inf"],
            "train.eval_tokens": [0, 5, 31],
            "train.steps": [0, -1, 1.5, "many", "true"],
            "train.batch_size": [0, -3],
            "train.grad_accum": [0],
            "train.warmup": [-1],
            "train.eval_every": [0],
            "train.checkpoint_every": [0],
            "train.keep_checkpoints": [0],
            "train.log_every": [0],
            "train.seed": ["abc", 0.5],
            "model.d_model": [0, -8, 33.5, "wide", 2**21],
            "model.n_layers": [0, 1025, 100000],
            "model.n_heads": [0, 3],
            "model.n_kv_heads": [0, 3],
            "model.vocab_size": [1, 0],
            "model.mlp_ratio": [-1, "nan", "inf"],
            "model.norm_eps": [0, -1e-5, "nan"],
            "model.rope_theta": [0, "inf"],
            "model.init_std": [0, "nan"],
            "model.window": [0, -4],
            "model.tie_embeddings": ["maybe", 2],
            "model.layers": ["[]", "[gla, 3]", "attention"],
            "model.mixer": ["nosuch", "[1]", "nosuch.module:Thing"],
            "model.mixer_options": ["3", "[1]", "{gla: {}}", "{attention: 4}"],
            "model.mixer_options.attention.qk_norm": ["maybe", 1, 0.0],
            "model.mixer_options.attention.nosuch": [1],
            "model.mixer_options.mamba.d_state": [4],
            "model.mlp": ["3", "{kind: dense}", "{kind: moe, experts: 2, top_k: 3}"],
            "model.mlp.experts": [4, 0],
            "data.seq_len": [0, -1, 2.5],
            "data.vocab_size": [0],
            "objective.name": ["nosuch"],
            "objective.options": [5],
            "task.data": [5],
            "task.name": ["nosuch"],
            "model": [3, "[1]"],
            "train": ["x"],
            "nosuch.key": [1],
            "train.nosuch": [1],
        }
    )
    + [
        [
            "train",
            "--config",
            CONFIG,
            "--out",
            FRESH,
            "--objective.name",
            name,
            f"--objective.{key}",
            v,
        ]
        for name, key, v in (
            ("masked_diffusion", "eval_samples", "x"),
            ("masked_diffusion", "eval_samples", "2.5"),
            ("block_diffusion", "block_size", "abc"),
            ("block_diffusion", "clip", "5"),
            ("any_order", "eval_orders", "x"),
        )
    ]
    # an objective whose layout the mixer lacks: AR on the bidirectional-only hydra
    + [["train", "--config", CONFIG, "--out", FRESH, "--model.mixer", "hydra"]]
    + [
        ["train", "--config", CONFIG, "--out", FRESH, "--model.mixer", "mamba", *option]
        for option in (
            ["--model.mixer_options.mamba.d_state", "2.5"],
            ["--model.mixer_options.mamba.d_state", "many"],
            ["--model.mixer_options.mamba.mimetic", "maybe"],
            ["--model.mixer_options.mamba.dt_min", "small"],
            ["--model.mixer_options.mamba.expand", "[2]"],
        )
    ]
)

CONFIG_FILE_ROWS = [
    ["train", "--config", f"{{base}}/{name}", "--out", FRESH]
    for name in (
        "syntax.yaml",
        "list.yaml",
        "section.yaml",
        "section_list.yaml",
        "options.yaml",
        "binary.yaml",
        "tabs.yaml",
        "a_dir.yaml",
        "missing.yaml",
    )
] + [
    ["train", "--config", CONFIG],
    ["train", "--config", CONFIG, "--out", FRESH, "--model.d_model"],
    ["train", "--config", CONFIG, "--out", FRESH, "stray"],
    ["train", "--config", CONFIG, "--out", FRESH, "--nodot", "1"],
    ["train", "--config", CONFIG, "--out", RUN],
]

EVAL_ROWS = (
    [["eval", RUN, "--max-tokens", value] for value in ("0", "-5", "abc", "1.5", "1", "31")]
    + [
        ["eval", RUN, "--split", "nosuch"],
        ["eval", RUN, "--model.d_model", "8"],
        ["eval", RUN, "--seed", "x"],
        ["eval", "{base}/nosuch"],
        ["eval", "{base}/corpus"],
        ["eval", RUN, "--dynamic"],
    ]
    + [
        ["eval", RUN, "--dynamic", value]
        for value in (
            "",
            "lr",
            "lr=",
            "1e-3",
            "lr=1e-3;decay=0.1",
            "lr=1e-3,lr=2e-3",
            "decay=0.1",
            "lr=1e-3,nosuch=1",
            "lr=abc",
            "lr=-1",
            "lr=inf",
            "lr=1e-3,decay=-1",
            "lr=1e-3,segment=0",
            "lr=1e-3,segment=1.5",
            "lr=1e-3,ms_batches=0",
            "lr=1e-3,eps=0",
            "lr=1e-3,context=-2",
        )
    ]
)

SAMPLE_FLAG_ROWS = [
    ["sample", RUN, "--prompt", "def", *flag]
    for flag in (
        ["--temperature", "-1"],
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--temperature", "hot"],
        ["--top-p", "0"],
        ["--top-p", "1.5"],
        ["--top-p", "-0.5"],
        ["--top-p", "nan"],
        ["--top-k", "0"],
        ["--top-k", "-3"],
        ["--top-k", "abc"],
        ["--min-p", "2"],
        ["--min-p", "-0.1"],
        ["--typical-p", "0"],
        ["--typical-p", "1.2"],
        ["--repetition-penalty", "0"],
        ["--repetition-penalty", "-1"],
        ["--repetition-penalty", "inf"],
        ["--num-beams", "0"],
        ["--num-beams", "-2"],
        ["--num-groups", "0"],
        ["--draft", RUN, "--num-draft-tokens", "0"],
        ["--stop", ""],
        ["--max-new-tokens", "-1"],
        ["--max-new-tokens", "many"],
        ["--max-new-tokens", "100000000000"],
        ["--sampler", "nosuch"],
        ["--sampler", "ancestral"],
        ["--sampler", "confidence"],
        ["--sampler", "remask"],
        ["--sampler", "ancestral", "--steps", "2"],  # a diffusion sampler on an AR run
        ["--sampler.temperature", "abc"],
        ["--sampler.temperature", "-2"],
        ["--sampler.top_k", "2.5"],
        ["--sampler.top_k", "many"],
        ["--sampler.seed", "abc"],
        ["--sampler.seed", "[1, 2]"],
        ["--sampler.stop_strings", "['']"],
        ["--sampler.stop_tokens", "[-1]"],
        ["--sampler.nosuch", "1"],
        ["--sampler.pad_id", "x"],
        ["--sampler", "beam", "--sampler.num_beams", "0"],
        ["--sampler", "beam", "--sampler.num_beams", "abc"],
        ["--sampler", "beam", "--sampler.early_stopping", "maybe"],
        ["--sampler", "beam", "--sampler.length_penalty", "long"],
        ["--draft", "{base}/nosuch"],
        ["--seed", "x"],
        ["--condition", "x"],
    )
] + [
    ["sample", RUN],
    ["sample", RUN, "--prompt", ""],
    ["sample", "{base}/nosuch", "--prompt", "x"],
    ["sample", RUN, "--prompt", "x", "--model.d_model", "8"],
]

OTHER_ROWS = [
    ["bench", "--mixers", "attention", *flags]
    for flags in (
        ["--lengths", "0"],
        ["--lengths", "8,-1"],
        ["--lengths", "a,b"],
        ["--lengths", ""],
        ["--lengths", "8", "--threads", "0"],
        ["--lengths", "8", "--d-model", "0"],
        ["--lengths", "8", "--layers", "0"],
        ["--lengths", "8", "--layers", "5000"],
        ["--lengths", "8", "--batch-size", "0"],
        ["--lengths", "8", "--batch-size", "many"],
    )
] + [
    ["bench", "--mixers", "nosuch", "--lengths", "8"],
    ["check", "nosuch"],
    ["check", "attention", "--option", "qk_norm=maybe"],
    ["check", "attention", "--option", "nosuch=1"],
    ["check", "attention", "--option", "novalue"],
    ["check", "attention", "--option", "only=x"],
    ["check", "mamba", "--option", "d_state=2.5"],
    ["check", "nosuch", "--kind", "sampler"],
    ["check", "attention", "--kind", "nosuch"],
    ["list", "nothing"],
    ["list"],
    ["list", "mixers", "--model.d_model", "3"],
    ["nosuchcommand"],
    [],
    ["compare", "nosuch_experiment"],
]

CLI_ROWS = TRAIN_ROWS + CONFIG_FILE_ROWS + EVAL_ROWS + SAMPLE_FLAG_ROWS + OTHER_ROWS


@pytest.mark.parametrize("argv", CLI_ROWS, ids=lambda argv: " ".join(argv)[:80])
def test_cli_user_error_is_one_line_and_exit_code_2(argv, setup, capsys, tmp_path):
    base, run, config_path = setup
    fresh = tmp_path / "fresh-run"
    places = {RUN: str(run), CONFIG: str(config_path), FRESH: str(fresh), BASE: str(base)}
    args = []
    for arg in argv:
        for place, value in places.items():
            arg = arg.replace(place, value)
        args.append(arg)
    before = tree_hashes(run)
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, (args, captured.err)
    assert len(lines) == 1 and lines[0].startswith("seqlab: error: "), lines
    assert "Traceback" not in captured.err + captured.out
    assert tree_hashes(run) == before
    assert not fresh.exists() or not any(fresh.rglob("*.safetensors"))


# --- the Python API ------------------------------------------------------------------------


def tiny_model(**fields):
    return build_model(ModelConfig(d_model=16, n_heads=2, n_layers=2, vocab_size=11, **fields))


def model_call(tokens_fn, state_fn=None, **fields):
    def call():
        model = tiny_model(**fields)
        state = None if state_fn is None else state_fn(model)
        model(tokens_fn(), state)

    return call


def generate_call(prompt=((1, 2, 3),), **options):
    def call():
        generate(tiny_model(), [list(p) for p in prompt], **{"max_new_tokens": 2, **options})

    return call


def save_onto_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    try:
        seqlab.save(tiny_model(), target)
    finally:
        assert target.read_text() == "keep me"


def save_under_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    try:
        seqlab.save(tiny_model(), target / "model")
    finally:
        assert target.read_text() == "keep me"


API_ROWS = [
    (ConfigError, lambda: TrainConfig(lr=float("nan"))),
    (ConfigError, lambda: TrainConfig(lr="fast")),
    (ConfigError, lambda: TrainConfig(beta1=1.0)),
    (ConfigError, lambda: TrainConfig(beta2=-0.5)),
    (ConfigError, lambda: TrainConfig(min_lr_ratio=1.5)),
    (ConfigError, lambda: TrainConfig(grad_clip=float("inf"))),
    (ConfigError, lambda: TrainConfig(threads=0)),
    (ConfigError, lambda: TrainConfig(steps="10")),
    (ConfigError, lambda: TrainConfig(steps=True)),
    (ConfigError, lambda: ModelConfig(d_model="wide")),
    (ConfigError, lambda: ModelConfig(n_layers=2000)),
    (ConfigError, lambda: ModelConfig(tie_embeddings="yes")),
    (ConfigError, lambda: ModelConfig(mixer_options={"gla": {}})),
    (ConfigError, lambda: ModelConfig(mixer_options={"attention": 3})),
    (ConfigError, lambda: DataConfig(seq_len=0)),
    (ConfigError, lambda: ExperimentConfig(model={"d_model": 8})),
    (ConfigError, lambda: ExperimentConfig(train=TrainConfig(eval_tokens=8))),
    (ConfigError, lambda: tiny_model(mixer_options={"attention": {"qk_norm": "yes"}})),
    (ConfigError, lambda: tiny_model(mixer_options={"attention": {"qk_norm": 1}})),
    (ConfigError, lambda: tiny_model(mixer="mamba", mixer_options={"mamba": {"d_state": 2.5}})),
    (ConfigError, lambda: tiny_model(mixer="gla", mixer_options={"gla": {"chunk_size": "64"}})),
    (SeqlabError, lambda: build_model(ModelConfig(d_model=2**20, n_heads=1))),
    (SeqlabError, lambda: build_model(ModelConfig(vocab_size=2**40, d_model=64))),
    (ShapeError, model_call(lambda: torch.tensor([[1.0, 2.0]]))),
    (ShapeError, model_call(lambda: [[1, 2]])),
    (ShapeError, model_call(lambda: "abc")),
    (ShapeError, model_call(lambda: torch.tensor([[True, False]]))),
    (ShapeError, model_call(lambda: torch.zeros(2, 0, dtype=torch.long))),
    (ShapeError, model_call(lambda: torch.tensor([[1, 11]]))),
    (ShapeError, model_call(lambda: torch.tensor([1, 2]))),
    (ShapeError, model_call(lambda: torch.ones(3, 2, dtype=torch.long), lambda m: m.init_state(2))),
    (ShapeError, model_call(lambda: torch.ones(1, 2, dtype=torch.long), lambda m: ())),
    (ShapeError, model_call(lambda: torch.ones(1, 1, dtype=torch.long), lambda m: "state")),
    (
        SeqlabError,
        model_call(lambda: torch.ones(1, 1, dtype=torch.long).expand(2**20, 2**12)),
    ),
    (SeqlabError, generate_call(max_new_tokens=-1)),
    (SeqlabError, generate_call(max_new_tokens=10**12)),
    (SeqlabError, generate_call(max_new_tokens=2.5)),
    (ConfigError, generate_call(sampler="sample", temperature=-1.0)),
    (ConfigError, generate_call(sampler="sample", temperature=float("nan"))),
    (ConfigError, generate_call(sampler="sample", temperature="hot")),
    (ConfigError, generate_call(sampler="sample", top_p=0.0)),
    (ConfigError, generate_call(sampler="sample", top_k=0)),
    (ConfigError, generate_call(sampler="sample", top_k=1.5)),
    (ConfigError, generate_call(sampler="sample", seed="abc")),
    (ConfigError, generate_call(sampler="greedy", stop_strings=[""], decode_fn=str)),
    (ConfigError, generate_call(sampler="beam", num_beams=0)),
    (ConfigError, generate_call(sampler="beam", num_beams="four")),
    (ConfigError, generate_call(sampler="ancestral", objective="ar")),  # paradigm mismatch
    (ConfigError, generate_call(sampler="ancestral", objective="masked_diffusion", steps=0)),
    (SeqlabError, generate_call(sampler="ancestral", objective="ar")),
    (ConfigError, generate_call(sampler="ancestral", steps=0)),
    (SeqlabError, generate_call(sampler="nosuch")),
    (ShapeError, generate_call(prompt=((),))),
    (ShapeError, generate_call(prompt=())),
]


@pytest.mark.parametrize(("error", "call"), API_ROWS, ids=[str(i) for i in range(len(API_ROWS))])
def test_api_raises_seqlab_errors(error, call):
    with pytest.raises(error) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("save", [save_onto_file, save_under_file])
def test_save_onto_an_existing_file_is_refused(save, tmp_path):
    with pytest.raises(CheckpointError, match="existing file"):
        save(tmp_path)


@pytest.mark.parametrize("name", MIXERS.names())
def test_an_empty_sequence_is_a_shape_error_for_every_mixer(name):
    model = tiny_model(mixer=name)
    mixer = model.blocks[0].mixer
    if LayoutKind.CAUSAL not in mixer.layouts:  # a non-causal mixer has no decode state
        with pytest.raises(ShapeError, match="T >= 1"):
            mixer(torch.zeros(2, 0, 16), layout=Layout.BIDIRECTIONAL)
        with pytest.raises(ShapeError, match="T >= 1"):
            model(torch.zeros(2, 0, dtype=torch.long), layout=Layout.BIDIRECTIONAL)
        return
    for state in (None, mixer.init_state(2)):
        with pytest.raises(ShapeError, match="T >= 1"):
            mixer(torch.zeros(2, 0, 16), state)
    with pytest.raises(ShapeError, match="T >= 1"):
        model(torch.zeros(2, 0, dtype=torch.long), model.init_state(2))


def test_save_onto_a_saved_model_is_refused_and_leaves_it_unchanged(tmp_path):
    first, second = tiny_model(), tiny_model(mixer="gla")
    seqlab.save(first, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(CheckpointError, match="already holds a saved model"):
        seqlab.save(second, tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    seqlab.save(second, tmp_path / "m", overwrite=True)
    assert seqlab.load(tmp_path / "m").config.mixer == "gla"


def test_a_non_finite_model_writes_nothing(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.embed.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        seqlab.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
