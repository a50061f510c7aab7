"""SeqlabForCausalLM: seqlab's logits behind the Hugging Face interface, loading through the
Auto classes (also in a fresh process), and HF `generate` on seqlab's decode state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from seqlab.config import ExperimentConfig, ModelConfig, ObjectiveConfig
from seqlab.errors import ShapeError
from seqlab.interop.hf_model import AUTO_MAP, SeqlabConfig, SeqlabForCausalLM, write_shim
from seqlab.layout import Layout, LayoutKind
from seqlab.model import build_model
from seqlab.registry import MIXERS
from seqlab.sampling import generate
from tests.helpers import ROOT

VOCAB = 40
BACKBONES = {
    "attention": {"mixer": "attention"},
    "gated_deltanet": {"mixer": "gated_deltanet"},
    "hybrid": {"layers": ["gated_deltanet", "attention"]},
}


def tiny(backbone: str, **extra) -> torch.nn.Module:
    # a wide init makes greedy continuations vary from step to step
    config = ModelConfig(
        d_model=32,
        n_layers=2,
        n_heads=2,
        vocab_size=VOCAB,
        init_std=0.3,
        **BACKBONES[backbone],
        **extra,
    )
    return build_model(config).eval()


def exported(model, tmp_path, experiment=None):
    hf = SeqlabForCausalLM.from_seqlab(model, experiment)
    hf.config.auto_map = dict(AUTO_MAP)
    hf.save_pretrained(tmp_path / "hf")
    write_shim(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("tied", [True, False])
def test_auto_classes_load_an_export_with_equal_logits(backbone, tied, tmp_path):
    model = tiny(backbone, tie_embeddings=tied)
    out = exported(model, tmp_path)
    assert json.loads((out / "config.json").read_text())["model_type"] == "seqlab"
    assert isinstance(AutoConfig.from_pretrained(out), SeqlabConfig)
    back = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(back, SeqlabForCausalLM) and back.model.tied == tied
    tokens = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        expected = model(tokens)[0]
        got = back(input_ids=tokens).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert back.config.experiment().model == model.config


def test_forward_uses_the_objective_layout_and_labels_give_the_ar_loss():
    model = tiny("attention")
    masked = ExperimentConfig(
        model=model.config, objective=ObjectiveConfig(name="masked_diffusion")
    )
    tokens = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        bidirectional = SeqlabForCausalLM.from_seqlab(model, masked)(input_ids=tokens).logits
        assert torch.equal(bidirectional, model(tokens, layout=Layout.BIDIRECTIONAL)[0])
        out = SeqlabForCausalLM.from_seqlab(model)(input_ids=tokens, labels=tokens)
    expected = torch.nn.functional.cross_entropy(
        model(tokens)[0][:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
    )
    assert torch.allclose(out.loss, expected.detach(), atol=1e-6)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_greedy_generate_equals_seqlab_greedy_and_decodes_one_token_per_step(backbone):
    model = tiny(backbone)
    hf = SeqlabForCausalLM.from_seqlab(model)
    prompt = torch.randint(0, VOCAB, (3, 5))
    lengths = []
    hook = model.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
    got = hf.generate(prompt, max_new_tokens=8, do_sample=False)
    hook.remove()
    assert lengths == [5] + [1] * 7  # one prefill, then seqlab's state carries the prefix
    expected = generate(model, prompt, max_new_tokens=8, sampler="greedy").tokens
    assert torch.equal(got, expected)
    assert len(set(got[:, 5:].flatten().tolist())) > 2  # a continuation that varies
    recomputed = hf.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(recomputed, expected)


CAUSAL_MIXERS = [n for n in MIXERS.names() if LayoutKind.CAUSAL in MIXERS.get(n).target.layouts]


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_greedy_generate_equals_seqlab_greedy_for_every_causal_mixer(mixer):
    config = ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2, vocab_size=VOCAB)
    model = build_model(config).eval()
    prompt = torch.randint(0, VOCAB, (2, 17))  # past jrt's non-causal prefix of 16
    got = SeqlabForCausalLM.from_seqlab(model).generate(prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, generate(model, prompt, max_new_tokens=4, sampler="greedy").tokens)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_sampling_with_a_seed_reproduces(backbone):
    hf = SeqlabForCausalLM.from_seqlab(tiny(backbone))
    prompt = torch.randint(0, VOCAB, (2, 4))
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(hf.generate(prompt, max_new_tokens=6, do_sample=True, top_k=10))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (2, 10)
    assert torch.equal(runs[0][:, :4], prompt) and int(runs[0].max()) < VOCAB


def test_beam_search_reorders_seqlab_state():
    model = tiny("hybrid")
    hf = SeqlabForCausalLM.from_seqlab(model)
    prompt = torch.randint(0, VOCAB, (1, 4))
    cached = hf.generate(prompt, max_new_tokens=5, num_beams=3, do_sample=False)
    recomputed = hf.generate(
        prompt, max_new_tokens=5, num_beams=3, do_sample=False, use_cache=False
    )
    assert torch.equal(cached, recomputed)


def test_padding_and_missing_input_ids_are_shape_errors():
    hf = SeqlabForCausalLM.from_seqlab(tiny("attention"))
    assert issubclass(ShapeError, ValueError)  # what transformers' callers catch
    with pytest.raises(ShapeError, match="no padding mask"):
        hf(
            input_ids=torch.ones(2, 3, dtype=torch.long),
            attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
        )
    with pytest.raises(ShapeError, match="needs input_ids"):
        hf(inputs_embeds=torch.zeros(1, 3, 32))


FRESH = """
import sys, torch
from transformers import AutoModelForCausalLM
out, tokens = sys.argv[1], torch.load(sys.argv[2])
assert "seqlab.interop.hf_model" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
torch.save(model(input_ids=tokens).logits.detach(), sys.argv[3])
print(type(model).__name__)
"""


def test_a_fresh_process_loads_the_export_through_auto_map(tmp_path):
    model = tiny("hybrid")
    out = exported(model, tmp_path)
    tokens = torch.randint(0, VOCAB, (1, 7))
    torch.save(tokens, tmp_path / "tokens.pt")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH,
            str(out),
            str(tmp_path / "tokens.pt"),
            str(tmp_path / "l.pt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "SeqlabForCausalLM"
    with torch.no_grad():
        expected = model(tokens)[0]
    assert torch.allclose(torch.load(tmp_path / "l.pt"), expected, atol=1e-5, rtol=0)
