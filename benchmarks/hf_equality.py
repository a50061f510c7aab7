"""How exactly do seqlab models and Hugging Face models agree? Max |Δ logit| in float32.

For every Hugging Face family seqlab maps onto (Llama, Mistral, Qwen2, Mamba, Mamba2), a
small randomly initialised `transformers` model (every weight moved off its init, so a
misplaced weight shows) is saved with `save_pretrained`, imported with `seqlab import-hf`'s
`import_hf`, and compared: seqlab's full forward and seqlab's token-by-token decode against
the Hugging Face logits. The other way, a seqlab run of each exporting kind (attention,
mamba, mamba2, and gated_deltanet and a hybrid as `SeqlabForCausalLM`) is saved, exported
with `export_hf` and reloaded with `AutoModelForCausalLM.from_pretrained`. Prints one row per
case: the largest absolute logit difference and the logits' scale.

    python benchmarks/hf_equality.py [--seq-len 37]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers
from torch import nn

from seqlab import io
from seqlab.config import ExperimentConfig, ModelConfig
from seqlab.interop.export import export_hf
from seqlab.interop.hf_model import SeqlabForCausalLM  # noqa: F401 - registers the Auto classes
from seqlab.interop.import_hf import import_hf
from seqlab.model import Model, build_model

VOCAB = 97
BASE = {"vocab_size": VOCAB, "num_hidden_layers": 2}
LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
IMPORTS = {
    "llama, tied": (transformers.LlamaConfig, {**LLAMA, "tie_word_embeddings": True}),
    "llama, untied": (transformers.LlamaConfig, {**LLAMA, "tie_word_embeddings": False}),
    "mistral, window 8": (transformers.MistralConfig, {**LLAMA, "sliding_window": 8}),
    "qwen2, q/k/v bias": (transformers.Qwen2Config, LLAMA),
    "mamba": (transformers.MambaConfig, {"hidden_size": 64, "state_size": 8}),
    "mamba2, 2 groups": (
        transformers.Mamba2Config,
        {"hidden_size": 64, "state_size": 8, "num_heads": 8, "head_dim": 16, "n_groups": 2,
         "chunk_size": 16},
    ),
}  # fmt: skip
EXPORTS = {
    "attention -> Llama": {"mixer": "attention", "n_kv_heads": 2},
    "mamba -> Mamba": {"mixer": "mamba", "mlp_ratio": 0},
    "mamba2 -> Mamba2": {"mixer": "mamba2", "mlp_ratio": 0},
    "gated_deltanet -> SeqlabForCausalLM": {"mixer": "gated_deltanet"},
    "gdn+attention -> SeqlabForCausalLM": {"layers": ["gated_deltanet", "attention"]},
}


def perturbed(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                p.uniform_(-1.0, 1.0)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return module.eval()


def decode_logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    """seqlab's logits one token at a time from its decode state."""
    state, outs = model.init_state(x.shape[0]), []
    for t in range(x.shape[1]):
        logits, state = model(x[:, t : t + 1], state)
        outs.append(logits)
    return torch.cat(outs, dim=1)


@torch.no_grad()
def import_rows(x: torch.Tensor, root: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for name, (config_class, options) in IMPORTS.items():
        torch.manual_seed(0)
        hf_config = config_class(**BASE, **options)
        hf = perturbed(transformers.AutoModelForCausalLM.from_config(hf_config))
        source = root / f"hf-{len(rows)}"
        hf.save_pretrained(source)
        import_hf(source, root / f"imported-{len(rows)}")
        model = io.load(root / f"imported-{len(rows)}").eval()
        reference = hf(x).logits
        full = (model(x)[0] - reference).abs().max().item()
        step = (decode_logits(model, x) - reference).abs().max().item()
        rows.append((name, full, step, reference.abs().max().item()))
    return rows


@torch.no_grad()
def export_rows(x: torch.Tensor, root: Path) -> list[tuple[str, float, float]]:
    rows = []
    for name, options in EXPORTS.items():
        torch.manual_seed(0)
        config = ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=VOCAB, **options)
        model = perturbed(build_model(config))
        run = root / f"run-{len(rows)}"
        io.save(model, run, ExperimentConfig(model=config))
        out = root / f"export-{len(rows)}"
        kind = export_hf(run, out)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        reference = model(x)[0]
        rows.append((f"{name} ({kind})", (hf(x).logits - reference).abs().max().item(),
                     reference.abs().max().item()))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=37)
    args = parser.parse_args()
    torch.manual_seed(1)
    x = torch.randint(0, VOCAB, (2, args.seq_len))
    with tempfile.TemporaryDirectory() as tmp:
        print(f"import (Hugging Face -> seqlab), float32, B 2, T {args.seq_len}\n")
        print("| model | max abs Δ, full forward | max abs Δ, token by token | max abs logit |")
        print("|---|---|---|---|")
        for name, full, step, scale in import_rows(x, Path(tmp)):
            print(f"| {name} | {full:.1e} | {step:.1e} | {scale:.2f} |")
        print(f"\nexport (seqlab -> Hugging Face), float32, B 2, T {args.seq_len}\n")
        print("| model | max abs Δ | max abs logit |")
        print("|---|---|---|")
        for name, diff, scale in export_rows(x, Path(tmp)):
            print(f"| {name} | {diff:.1e} | {scale:.2f} |")


if __name__ == "__main__":
    main()
