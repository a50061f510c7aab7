"""Training throughput (forward + backward + AdamW step) of seqlab vs Hugging Face Llama, CPU.

Both models have the same shape and the same function: pre-norm RMSNorm blocks of softmax
attention with rotary positions and a SwiGLU MLP, tied input/output embeddings, float32.
seqlab trains through its own path (`Autoregressive.loss` + `build_optimizer`); Llama gets the
same token batch, the same cross-entropy and the same AdamW groups and hyper-parameters.

The run also measures the machine's float32 matmul peak (large square `torch.matmul` with the
same thread count) and reports model-FLOPs utilisation

    MFU = 3 · flops_per_token(T) · tokens/s / peak,

where `flops_per_token(T) = 2 · N_matmul + attention FLOPs` is seqlab's analytic forward count
(`Model.flops_per_token`); the same count is computed for Llama from its own Linear layers.
Timed windows of seqlab, Llama and the matmul peak are interleaved (the order alternates each
round) after a warm-up, and the table reports medians over the rounds (MFU/round divides each
round by the peak of the same round, which is steadier on a shared machine). Before timing,
seqlab's weights are copied into Llama and the logits compared, so both train the same function
from the same start; their losses are printed at the end as a check.

    PYTHONPATH=src python benchmarks/train_throughput.py            # defaults below
    PYTHONPATH=src python benchmarks/train_throughput.py --quick    # smoke test, seconds

Needs the `bench` extra (`pip install transformers`); it is imported only here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqlab.config import ModelConfig, TrainConfig
from seqlab.model import Model, build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.train.loop import build_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch.get_num_threads(), all available cores)",
    )
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument(
        "--kv-heads", type=int, default=None, help="grouped-query KV heads (default: heads)"
    )
    p.add_argument("--mlp-ratio", type=float, default=4.0, help="SwiGLU hidden = ratio x d_model")
    p.add_argument("--seq-len", type=int, default=256, help="T, positions trained per sequence")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--untied", action="store_true", help="untie input/output embeddings on both")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per timed window")
    p.add_argument("--repeats", type=int, default=7, help="timed windows per model (rounds)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n peak matmul")
    p.add_argument("--matmul-reps", type=int, default=5, help="matmuls per peak window")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check that both models compute the same logits",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 warm-up step, 2 steps x 2 rounds (the peak matmul keeps its "
        "size: a small one underestimates the peak and inflates MFU)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 2, 1
        args.matmul_reps = 3
    if min(args.steps, args.repeats, args.batch, args.seq_len) < 1 or args.warmup < 0:
        p.error("--steps, --repeats, --batch and --seq-len must be positive, --warmup >= 0")
    return args


# ----------------------------------------------------------------------------- models


def seqlab_model(args: argparse.Namespace) -> Model:
    return build_model(
        ModelConfig(
            mixer="attention",
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=args.heads,
            n_kv_heads=args.kv_heads,
            vocab_size=args.vocab,
            mlp_ratio=args.mlp_ratio,
            tie_embeddings=not args.untied,
            norm_eps=1e-5,
            rope_theta=10000.0,
        )
    )


def llama_model(args: argparse.Namespace) -> nn.Module:
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        sys.exit("this benchmark needs transformers: pip install 'seqlab[bench]'")
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=int(round(args.mlp_ratio * args.d_model)),
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=max(args.seq_len, 2048),
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=not args.untied,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).float()
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    if tied == args.untied:
        raise RuntimeError(f"Llama embeddings tied={tied}, expected tied={not args.untied}")
    return model


def matmul_params(model: nn.Module) -> int:
    """Weights that enter a matmul: every nn.Linear (a tied head counts once, as a matmul)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def llama_flops_per_token(model: nn.Module, args: argparse.Namespace) -> float:
    """The same analytic count as `seqlab.Model.flops_per_token`: 2 per matmul weight plus
    q·kᵀ and p·v, 4 · d_model FLOPs per attended key, averaged over a causal sequence."""
    context = (args.seq_len + 1) / 2
    return 2.0 * matmul_params(model) + args.layers * 4.0 * args.d_model * context


@torch.no_grad()
def check_same_function(ours: Model, llama: nn.Module, tokens: Tensor) -> float:
    """Copy seqlab's weights into Llama and return max |logits difference| (float32)."""
    d = ours.config.d_model
    kv = ours.blocks[0].mixer.n_kv_heads * ours.blocks[0].mixer.head_dim
    hidden = ours.blocks[0].mlp.down.weight.shape[1]
    llama.model.embed_tokens.weight.copy_(ours.embed.weight)
    if not ours.tied:
        llama.lm_head.weight.copy_(ours.head.weight)
    llama.model.norm.weight.copy_(ours.norm.weight)
    for block, layer in zip(ours.blocks, llama.model.layers, strict=True):
        q, k, v = block.mixer.qkv.weight.split([d, kv, kv], dim=0)
        att = layer.self_attn
        att.q_proj.weight.copy_(q)
        att.k_proj.weight.copy_(k)
        att.v_proj.weight.copy_(v)
        att.o_proj.weight.copy_(block.mixer.out.weight)
        gate, up = block.mlp.gate_up.weight.split([hidden, hidden], dim=0)
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(block.mlp.down.weight)
        layer.input_layernorm.weight.copy_(block.mixer_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.mlp_norm.weight)
    a, _ = ours(tokens)
    b = llama(input_ids=tokens).logits
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- timing


def seqlab_step(
    model: Model, opt: torch.optim.Optimizer, tokens: Tensor, losses: list[Tensor]
) -> Callable[[], None]:
    """One training step through seqlab's own path: the AR objective's loss, then AdamW."""
    objective, batch = Autoregressive(), Batch(tokens)

    def step() -> None:
        loss, _ = objective.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    return step


def llama_step(
    model: nn.Module, opt: torch.optim.Optimizer, tokens: Tensor, losses: list[Tensor]
) -> Callable[[], None]:
    """The same step for Llama: next-token cross-entropy on the same batch, then AdamW."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:].flatten()

    def step() -> None:
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    return step


def timed(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def matmul_window(n: int, reps: int) -> Callable[[], float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)

    def window() -> float:
        return 2.0 * n**3 * reps / timed(lambda: torch.matmul(a, b, out=c), reps)

    return window


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)

    ours = seqlab_model(args)
    llama = llama_model(args)
    for name, m in (("seqlab", ours), ("llama", llama)):
        dtypes = {p.dtype for p in m.parameters()}
        if dtypes != {torch.float32}:
            raise RuntimeError(f"{name} parameters are {dtypes}, expected float32")
    n_ours, n_llama = matmul_params(ours), matmul_params(llama)
    total_ours = sum(p.numel() for p in ours.parameters())
    total_llama = sum(p.numel() for p in llama.parameters())
    if (n_ours, total_ours) != (n_llama, total_llama):
        raise RuntimeError(
            f"shape mismatch: seqlab {n_ours}/{total_ours} matmul/total params, "
            f"llama {n_llama}/{total_llama}"
        )

    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1))
    if not args.no_check:
        diff = check_same_function(ours, llama, tokens[:, :-1])
        print(
            f"same function check: max |logits_seqlab - logits_llama| = {diff:.2e} "
            "(both now start from the same weights)"
        )

    train_config = TrainConfig()
    opt_ours, opt_llama = build_optimizer(ours, train_config), build_optimizer(llama, train_config)
    ours.train()
    llama.train()
    losses: dict[str, list[Tensor]] = {"seqlab": [], "hf-llama": []}
    steps = {
        "seqlab": seqlab_step(ours, opt_ours, tokens, losses["seqlab"]),
        "hf-llama": llama_step(llama, opt_llama, tokens, losses["hf-llama"]),
    }
    peak_window = matmul_window(args.matmul_size, args.matmul_reps)

    load_before = load_average()
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    peak_window()

    tokens_per_step = args.batch * args.seq_len
    rates: dict[str, list[float]] = {name: [] for name in steps}
    peaks: list[float] = []
    names = list(steps)
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        peaks.append(peak_window())
        for name in order:
            rates[name].append(tokens_per_step * args.steps / timed(steps[name], args.steps))
    load_after = load_average()

    peak = statistics.median(peaks)
    flops = {
        "seqlab": 3.0 * ours.flops_per_token(args.seq_len),
        "hf-llama": 3.0 * llama_flops_per_token(llama, args),
    }
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, python "
        f"{platform.python_version()}, {platform.machine()} {os.cpu_count()} logical CPUs, "
        f"{threads} torch threads"
    )
    print(
        f"shape: d_model {args.d_model}, layers {args.layers}, heads {args.heads}"
        f"/{args.kv_heads or args.heads} kv, SwiGLU hidden "
        f"{int(round(args.mlp_ratio * args.d_model))}, T {args.seq_len}, batch {args.batch}, "
        f"vocab {args.vocab}, {'untied' if args.untied else 'tied'} embeddings, float32; "
        f"{total_ours:,} params ({n_ours:,} in matmuls)"
    )
    print(
        f"AdamW lr {train_config.lr}, betas ({train_config.beta1}, {train_config.beta2}), "
        f"weight decay {train_config.weight_decay} on matrices; {args.warmup} warm-up steps, "
        f"{args.repeats} rounds x {args.steps} steps, interleaved"
    )
    print(f"load average (1/5/15 min): before {load_before}, after {load_after}")
    print(
        f"fp32 matmul peak ({args.matmul_size}^2, median of {args.repeats}): "
        f"{peak / 1e9:.1f} GFLOP/s (min {min(peaks) / 1e9:.1f}, max {max(peaks) / 1e9:.1f})"
    )
    print()
    header = (
        f"{'model':<10} {'tokens/s':>10} {'min':>9} {'max':>9} {'ms/step':>9} "
        f"{'train GFLOP/tok':>16} {'GFLOP/s':>8} {'MFU':>6} {'MFU/round':>10}"
    )
    print(header)
    print("-" * len(header))
    medians = {}
    for name in names:
        rate = statistics.median(rates[name])
        medians[name] = rate
        achieved = flops[name] * rate
        # each round against the peak measured in the same round, robust to load drifting
        mfu_round = statistics.median(
            [flops[name] * r / p for r, p in zip(rates[name], peaks, strict=True)]
        )
        print(
            f"{name:<10} {rate:>10,.0f} {min(rates[name]):>9,.0f} {max(rates[name]):>9,.0f} "
            f"{1e3 * tokens_per_step / rate:>9.1f} {flops[name] / 1e9:>16.4f} "
            f"{achieved / 1e9:>8.1f} {achieved / peak:>6.3f} {mfu_round:>10.3f}"
        )
    per_round = [a / b for a, b in zip(rates["seqlab"], rates["hf-llama"], strict=True)]
    print()
    print(
        f"ratio seqlab/HF (median tokens/s): {medians['seqlab'] / medians['hf-llama']:.3f}  "
        f"(per-round ratios: median {statistics.median(per_round):.3f}, "
        f"min {min(per_round):.3f}, max {max(per_round):.3f})"
    )
    print(
        f"loss after {len(losses['seqlab'])} steps on the repeated batch: "
        + ", ".join(f"{name} {float(losses[name][-1]):.4f}" for name in names)
        + ("" if args.no_check else " (same start and data: close, not bitwise)")
    )
    print(
        "MFU = train GFLOP/tok x tokens/s / median peak; MFU/round = median over rounds of "
        "the same with that round's peak"
    )


if __name__ == "__main__":
    main()
