"""`seqlab export RUN --format hf OUT` and `seqlab import-hf DIR --out RUN` end to end through
the CLI: equal logits both ways, tokenizers carried, family dispatch, refusals (exit 2)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import seqlab
from seqlab.cli import main
from seqlab.config import ExperimentConfig, ModelConfig, ObjectiveConfig, load_config
from seqlab.data.tokenizers import load_tokenizer
from seqlab.files import load_tensors, save_tensors, write_checksum
from seqlab.interop import families as families_module
from seqlab.interop.export import export_hf
from seqlab.interop.families import Family
from seqlab.interop.hf_model import AUTO_MAP
from seqlab.interop.import_hf import import_hf
from seqlab.io import load
from seqlab.model import build_model
from tests.data.test_hf_tokenizer import TEXTS, make_tokenizer
from tests.helpers import tiny_config, write_config, write_corpus

TRAIN = {"steps": 2, "checkpoint_every": 2, "eval_every": 2, "eval_tokens": 64}


def train(tmp, name, corpus, **data):
    config = tiny_config(corpus, tmp / "cache", train=TRAIN, data=data)
    config["model"]["layers"] = ["gated_deltanet", "attention"]
    run = tmp / name
    assert (
        main(
            [
                "train",
                "--config",
                str(write_config(tmp / f"{name}.yaml", config)),
                "--out",
                str(run),
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    tokenizer = make_tokenizer(tmp / "tok", config_eos="<|eod|>")
    words = tmp / "words"
    words.mkdir()
    (words / "text.txt").write_text("\n".join(TEXTS * 40))
    byte = train(tmp, "byte", write_corpus(tmp / "corpus", files=4, lines=10))
    return tmp, byte, train(tmp, "hf", words, tokenizer=f"hf:{tokenizer}", seq_len=8)


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


def listing(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_export_then_import_round_trips_logits_and_the_byte_tokenizer(runs, capsys):
    tmp, run, _ = runs
    out, back = tmp / "byte-hf", tmp / "byte-back"
    assert main(["export", str(run), "--format", "hf", str(out)]) == 0
    assert "(seqlab)" in capsys.readouterr().out
    names = set(listing(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_seqlab.py"} <= names
    assert json.loads((out / "config.json").read_text())["auto_map"] == AUTO_MAP
    model = load(run).eval()
    tokens = torch.randint(0, 256, (2, 9))
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(
        hf(input_ids=tokens).logits.detach(), logits(model, tokens), atol=1e-5, rtol=0
    )
    text = "héllo, wörld\n"
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == list(text.encode())
    assert hf_tokenizer.decode(list(text.encode())) == text

    assert main(["import-hf", str(out), "--out", str(back)]) == 0
    assert torch.equal(logits(load(back), tokens), logits(model, tokens))
    assert load_config(back / "config.yaml") == load_config(run / "config.yaml")
    sample = ["sample", "--prompt", "def f", "--max-new-tokens", "6", "--temperature", "0"]
    capsys.readouterr()
    assert main([*sample[:1], str(run), *sample[1:]]) == 0
    original = capsys.readouterr().out
    assert main([*sample[:1], str(back), *sample[1:]]) == 0
    assert capsys.readouterr().out == original


def test_an_hf_tokenizer_travels_both_ways(runs, capsys):
    tmp, _, run = runs
    out, back = tmp / "hf-hf", tmp / "hf-back"
    assert main(["export", str(run), "--format", "hf", str(out), "--as", "seqlab"]) == 0
    assert (out / "tokenizer.json").read_bytes() == (run / "tokenizer.json").read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|eod|>"
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    seqlab_tokenizer = load_tokenizer(load_config(run / "config.yaml").data.tokenizer, run)
    assert hf_tokenizer.encode("the cat sat", add_special_tokens=False) == seqlab_tokenizer.encode(
        "the cat sat"
    )
    assert hf_tokenizer.eos_token == "<|eod|>"
    assert main(["import-hf", str(out), "--out", str(back)]) == 0
    tokenizer = load_tokenizer(load_config(back / "config.yaml").data.tokenizer, back)
    assert tokenizer.eos_token == "<|eod|>" and tokenizer.vocab_size == seqlab_tokenizer.vocab_size
    capsys.readouterr()
    assert main(["sample", str(back), "--prompt", "the cat", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


def test_nothing_written_is_overwritten(runs, capsys):
    tmp, run, _ = runs
    out = tmp / "once"
    assert main(["export", str(run), str(out)]) == 0
    before = listing(out)
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert listing(out) == before
    assert main(["import-hf", str(out), "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not any(p.name.startswith(".") for p in tmp.iterdir())  # no temporary left


def test_user_errors_exit_2(runs, tmp_path, capsys):
    _, run, _ = runs
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["import-hf", str(tmp_path / "bert"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'bert'" in err and "seqlab" in err
    assert main(["import-hf", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["export", str(run), str(tmp_path / "z"), "--as", "nope"]) == 2
    assert "auto" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "z")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def gpt2_family() -> Family:
    """A stand-in family (the real ones live in seqlab.interop.llama / mamba): attention-only
    models go out as GPT-2, and GPT-2 checkpoints come in as a fixed seqlab model."""

    def export_reason(config: ModelConfig) -> str | None:
        return None if config.layers is None and config.mixer == "attention" else "not attention"

    def to_hf(model):
        config = GPT2Config(vocab_size=model.config.vocab_size, n_embd=16, n_layer=1, n_head=2)
        return GPT2LMHeadModel(config)

    def from_hf(hf_model):
        config = ModelConfig(vocab_size=hf_model.config.vocab_size, d_model=16, n_heads=2)
        torch.manual_seed(0)
        return config, {
            k: v for k, v in build_model(config).state_dict().items() if k != "head.weight"
        }

    return Family("gpt2", ("gpt2",), export_reason, to_hf, from_hf)


def test_export_and_import_dispatch_to_families(runs, tmp_path, monkeypatch, capsys):
    _, run, _ = runs
    monkeypatch.setattr(families_module, "FAMILY_MODULES", ())
    monkeypatch.setattr(families_module, "_FAMILIES", {"gpt2": gpt2_family()})
    # the run is a hybrid: auto falls back to seqlab, the named family refuses with its reason
    assert export_hf(run, tmp_path / "auto") == "seqlab"
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "g"), "--as", "gpt2"]) == 2
    assert "not attention" in capsys.readouterr().err
    hf_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        hf_dir
    )
    make_tokenizer(hf_dir)
    assert import_hf(hf_dir, tmp_path / "in") == "gpt2"
    config = load_config(tmp_path / "in" / "config.yaml")
    assert config.model.d_model == 16 and config.data.tokenizer == f"hf:{hf_dir.resolve()}"
    assert (tmp_path / "in" / "tokenizer.json").is_file()
    assert load_tokenizer(config.data.tokenizer, tmp_path / "in").eos_token == "</s>"


def test_without_transformers_the_commands_say_what_to_install(monkeypatch, tmp_path, capsys):
    import sys

    for name in [m for m in sys.modules if m.startswith(("seqlab.interop.", "transformers"))]:
        if name != "seqlab.interop.families":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["import-hf", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'seqlab[interop]'" in capsys.readouterr().err


@pytest.mark.parametrize("tied", [True, False])
def test_a_real_llama_checkpoint_imports_through_the_cli(tmp_path, capsys, tied):
    """The llama family end to end: save_pretrained → `seqlab import-hf` → seqlab.io.load, the
    logits equal (a tied model's repeated head is accepted once, checked equal)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    hf = LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    model = load(tmp_path / "run").eval()
    assert model.config.tie_embeddings is tied
    tokens = torch.randint(0, 61, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], hf(tokens).logits, atol=1e-5, rtol=1e-5)


def save_tiny(directory, objective="ar", **model):
    config = ModelConfig(d_model=16, n_layers=1, n_heads=2, vocab_size=260, **model)
    experiment = ExperimentConfig(model=config, objective=ObjectiveConfig(name=objective))
    seqlab.save(build_model(config), directory, experiment)
    return directory


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path, capsys):
    run = save_tiny(tmp_path / "run")
    weights = load_tensors(run / "model.safetensors")
    weights["blocks.0.mixer.qkv.weight"][0, 0] = float("nan")
    save_tensors(weights, run / "model.safetensors", {"format": "seqlab"})
    write_checksum(run / "model.safetensors")
    assert main(["export", str(run), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blocks.0.mixer.qkv.weight" in err and "non-finite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("objective", ["masked_diffusion", "block_diffusion"])
def test_only_causal_runs_go_out_as_a_family(tmp_path, capsys, objective):
    assert export_hf(save_tiny(tmp_path / "ar"), tmp_path / "ar-hf") == "llama"
    run = save_tiny(tmp_path / objective, objective)
    assert export_hf(run, tmp_path / "auto") == "seqlab"
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "named"), "--as", "llama"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"objective {objective}" in err and "causal" in err
    assert not (tmp_path / "named").exists()


def _imported_llama(tmp_path, name, hidden, layers):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / f"hf-{name}")
    import_hf(tmp_path / f"hf-{name}", tmp_path / name)
    return tmp_path / name


def test_seqlab_decoders_and_paradigms_run_on_an_imported_checkpoint(tmp_path):
    """An imported pretrained model is an ordinary seqlab model: speculative decoding with an
    imported smaller draft gives exactly its greedy output, diverse beam search runs on it,
    and it starts a block-diffusion run (the AR-to-block conversion with `shift`)."""
    import seqlab
    from seqlab.config import ExperimentConfig, from_dict
    from seqlab.train import train
    from tests.helpers import tiny_config, write_corpus

    torch.manual_seed(0)
    target = load(_imported_llama(tmp_path, "target", 32, 2)).eval()
    draft = load(_imported_llama(tmp_path, "draft", 16, 1)).eval()
    prompt = torch.randint(0, 256, (1, 7))
    greedy = seqlab.generate(target, prompt, max_new_tokens=12)
    drafted = seqlab.generate(target, prompt, max_new_tokens=12, assistant_model=draft)
    assert torch.equal(drafted.tokens, greedy.tokens) and drafted.acceptance is not None
    beams = seqlab.generate(target, prompt, max_new_tokens=6, num_beams=4, num_beam_groups=2)
    assert beams.sequences.shape[:2] == (1, 4)
    corpus = write_corpus(tmp_path / "corpus")
    config = tiny_config(
        corpus,
        tmp_path / "cache",
        model={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "mlp_ratio": 4.0,
            "tie_embeddings": False,
        },
        objective={"name": "block_diffusion", "block_size": 4, "shift": True},
        train={"steps": 2, "eval_every": 2, "init_from": str(tmp_path / "target")},
    )
    summary = train(from_dict(ExperimentConfig, config), tmp_path / "converted", progress=False)
    assert math.isfinite(summary["final_loss"])


def test_a_checkpoint_folder_without_weights_is_a_one_line_error(tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the Hugging Face model" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_model_with_a_value_head_is_exported_as_nothing(tmp_path, capsys):
    run = save_tiny(tmp_path / "run", value_head="gaussian")
    for format in ("auto", "seqlab", "llama"):
        out = tmp_path / format
        assert main(["export", str(run), str(out), "--as", format]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a value head (model.value_head) has no" in err, err
        assert not out.exists()
