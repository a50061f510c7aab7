"""Kernel and backbone speed for the linear-recurrent, state-space and long-convolution
families (issues 3 and 23).

Prints, measured side by side in one run:
1. forward+backward time of each chunked/parallel kernel vs its step-by-step reference loop
   and vs causal softmax attention of the same shape (B=1, H=4, D=64), at T in --lengths;
2. decode time per token at context 512 vs 8192 (--contexts) for every mixer that decodes
   (declares the causal layout), the two contexts timed interleaved in one process: ratio ~1
   (flat) for the fixed-state ones, growing for those whose state grows (attention, hyena,
   mega without `chunk`);
3. training tokens/s of the seqlab `mamba2` model vs Hugging Face `Mamba2ForCausalLM` of the
   same shape (needs `pip install transformers`; skipped with a message otherwise).

    python benchmarks/kernel_speed.py                     # everything
    python benchmarks/kernel_speed.py --only kernels --lengths 512,2048
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from seqlab.mixers.gateloop import gateloop_attention, gateloop_decay, gateloop_scan_loop
from seqlab.mixers.lightnet import lightnet_attention
from seqlab.mixers.longhorn import longhorn_scan
from seqlab.mixers.s4 import NPLRSSM, nplr_kernel_reference
from seqlab.ops.delta_rule import delta_rule, gated_delta_rule
from seqlab.ops.ema import damped_ema
from seqlab.ops.fftconv import causal_fft_conv, fft_conv
from seqlab.ops.generalized_delta_rule import generalized_delta_rule
from seqlab.ops.linear_attention import gated_linear_attention
from seqlab.ops.prefix_linear_attention import prefix_linear_attention
from seqlab.ops.scan import diagonal_scan
from seqlab.ops.selective_scan import selective_scan


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_cases(t: int, b: int = 1, h: int = 4, d: int = 64) -> dict[str, Callable]:
    """Each case maps mode -> a closure running forward + backward once."""

    def inputs():
        q = torch.randn(b, t, h, d, requires_grad=True)
        k = F.normalize(torch.randn(b, t, h, d), dim=-1).requires_grad_()
        v = torch.randn(b, t, h, d, requires_grad=True)
        return q, k, v

    q, k, v = inputs()
    g_key = F.logsigmoid(torch.randn(b, t, h, d) + 4).requires_grad_()
    g_head = F.logsigmoid(torch.randn(b, t, h) + 4).requires_grad_()
    beta = torch.rand(b, t, h).requires_grad_()
    removal = F.normalize(torch.randn(b, t, h, d), dim=-1)
    iclr = torch.rand(b, t, h, d)
    dplr_a, dplr_b = (-removal).requires_grad_(), (removal * iclr).requires_grad_()
    g_rwkv = (-0.6 * torch.rand(b, t, h, d)).requires_grad_()
    a = torch.rand(b, t, h * d).requires_grad_()
    x = torch.randn(b, t, h * d, requires_grad=True)
    s6_a = (-torch.rand(h * d, 16) - 0.1).requires_grad_()
    s6_bc = torch.randn(b, t, 16, requires_grad=True)
    magnitude = (torch.randn(b, t, h, d) + 4).requires_grad_()
    phase = (0.1 * torch.randn(b, t, h, d)).requires_grad_()
    beta_channel = torch.rand(b, t, h * d).requires_grad_()
    prefix = t // 2
    long_filter = (torch.randn(t, h * d) / t).requires_grad_()
    ema_decay = torch.empty(h * d, 16).uniform_(0.5, 0.99).requires_grad_()
    ema_gain, ema_readout = (torch.randn(h * d, 16, requires_grad=True) for _ in range(2))
    s4 = NPLRSSM(h * d, 64, init="legs", discretization="bilinear", dt_min=1e-3, dt_max=1e-1)

    def gateloop(mode: str):
        if mode == "chunk":
            return gateloop_attention(q, k, v, magnitude, phase)
        return gateloop_scan_loop(q, k, v, gateloop_decay(magnitude, phase))

    def run(op):
        def make(mode: str):
            def go():
                out = op(mode)
                (out[0] if isinstance(out, tuple) else out).sum().backward()

            return go

        return make

    return {
        "linear_attention": run(lambda m: gated_linear_attention(q, k, v, mode=m)),
        "gla (per-key decay)": run(lambda m: gated_linear_attention(q, k, v, g_key, mode=m)),
        "retnet/mamba2 (scalar decay)": run(
            lambda m: gated_linear_attention(q, k, v, g_head, mode=m)
        ),
        "delta_rule": run(lambda m: delta_rule(q, k, v, beta, mode=m)),
        "gated_delta_rule": run(lambda m: gated_delta_rule(q, k, v, g_head, beta, mode=m)),
        "rwkv7 (generalized delta rule)": run(
            lambda m: generalized_delta_rule(q, k, v, g_rwkv, dplr_a, dplr_b, scale=1.0, mode=m)
        ),
        "lightnet (logcumsumexp keys)": run(lambda m: lightnet_attention(q, k, v, mode=m)),
        "gateloop (complex decay)": run(gateloop),
        "longhorn (N=16)": run(
            lambda m: longhorn_scan(
                x, beta_channel, s6_bc, s6_bc, mode="fused" if m == "chunk" else "loop"
            )
        ),
        "longhorn (N=16, diagonal_scan form)": run(
            lambda m: longhorn_scan(
                x, beta_channel, s6_bc, s6_bc, mode="chunked" if m == "chunk" else "loop"
            )
        ),
        "diagonal_scan": run(
            lambda m: diagonal_scan(a, x, mode="parallel" if m == "chunk" else "recurrent")
        ),
        "selective_scan (mamba S6, N=16)": run(
            lambda m: selective_scan(
                x, a, s6_a, s6_bc, s6_bc, mode="fused" if m == "chunk" else "loop"
            )
        ),
        "s4 kernel (Cauchy/Woodbury vs powers of A, N=64)": run(
            lambda m: s4.cauchy_kernel(t) if m == "chunk" else nplr_kernel_reference(s4, t)
        ),
        "hyena long conv (blocked causal FFT)": run(
            lambda m: (
                causal_fft_conv(x, long_filter)
                if m == "chunk"
                else fft_conv(x, long_filter, mode="direct")
            )
        ),
        "long conv (one FFT, causal up to rounding)": run(
            lambda m: fft_conv(x, long_filter, mode="fft" if m == "chunk" else "direct")
        ),
        "mega EMA (N=16, chunked)": run(
            lambda m: damped_ema(
                x, ema_decay, ema_gain, ema_readout, mode="chunked" if m == "chunk" else m
            )
        ),
        "mega EMA (N=16, fft)": run(
            lambda m: damped_ema(
                x, ema_decay, ema_gain, ema_readout, mode="fft" if m == "chunk" else "recurrent"
            )
        ),
        "jrt prefix linear attention (M=T/2)": run(
            lambda m: prefix_linear_attention(q, k, v, k[:, :prefix], v[:, :prefix], mode=m)
        ),
    }


def attention_time(t: int, repeats: int, b: int = 1, h: int = 4, d: int = 64) -> float:
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))

    def go():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    return median_seconds(go, repeats)


def bench_kernels(lengths: list[int], max_loop_len: int, repeats: int) -> None:
    print("## Kernels: forward+backward seconds (B=1, H=4, D=64, float32)\n")
    print(
        "| kernel | T | chunk/parallel | loop | loop / chunk | softmax attention | "
        "attention / chunk |"
    )
    print("|---|---|---|---|---|---|---|")
    for t in lengths:
        attention = attention_time(t, repeats)
        for name, make in kernel_cases(t).items():
            fast = median_seconds(make("chunk"), repeats)
            loop_cells = "not run | –"  # past --max-loop-len
            if t <= max_loop_len:
                loop = median_seconds(make("recurrent"), repeats)
                loop_cells = f"{loop:.3f} | {loop / fast:.1f}x"
            print(
                f"| {name} | {t} | {fast:.4f} | {loop_cells} | "
                f"{attention:.4f} | {attention / fast:.1f}x |",
                flush=True,
            )


def decode_backbones() -> list[tuple[str, str, dict]]:
    """(label, mixer, mixer options) of every mixer that decodes (declares the causal layout):
    the fixed-state ones first, then those whose state grows with the context."""
    from seqlab.mixers.base import LayoutKind
    from seqlab.registry import MIXERS

    causal = [n for n in MIXERS.names() if LayoutKind.CAUSAL in MIXERS.get(n).declared("layouts")]
    fixed = [n for n in causal if MIXERS.get(n).declared("state_kind") == "fixed"]
    growing = [n for n in causal if n not in fixed]
    rows = [(n, n, {}) for n in fixed]
    if "mega" in growing:  # Mega-chunk keeps c − 1 cached keys: fixed state by an option
        rows.append(("mega (chunk 128)", "mega", {"chunk": 128}))
    return rows + [(n, n, {}) for n in growing]


def bench_decode(contexts: tuple[int, int], d_model: int, steps: int, repeats: int) -> None:
    import seqlab
    from seqlab.config import ModelConfig
    from seqlab.harness.bench import interleaved_decode_rates

    print(
        f"\n## Decode: ms per token after a context of {contexts[0]} vs {contexts[1]} "
        f"(d_model {d_model}, 2 layers, batch 1; {repeats} interleaved rounds of {steps} "
        "greedy steps, medians; non-causal mixers cannot decode and are left out)\n"
    )
    print(f"| backbone | state | ms/token @{contexts[0]} | ms/token @{contexts[1]} | ratio |")
    print("|---|---|---|---|---|")
    for label, name, options in decode_backbones():
        torch.manual_seed(0)
        config = ModelConfig(
            mixer=name,
            d_model=d_model,
            n_layers=2,
            n_heads=4,
            vocab_size=256,
            mixer_options={name: options} if options else {},
        )
        model = seqlab.build_model(config).eval()
        kind = model.blocks[0].mixer.state_kind
        state = "fixed" if kind == "fixed" else "grows"
        short, long = (
            1000 / rate for rate in interleaved_decode_rates(model, list(contexts), steps, repeats)
        )
        print(f"| {label} | {state} | {short:.3f} | {long:.3f} | {long / short:.2f} |", flush=True)


def bench_mamba2_vs_hf(steps: int, seq_len: int, batch: int, d_model: int, layers: int) -> None:
    try:
        from transformers import Mamba2Config, Mamba2ForCausalLM
    except ImportError:
        print("\n(transformers is not installed: pip install 'seqlab[bench]' for the HF row)")
        return
    from seqlab.config import ModelConfig
    from seqlab.model import build_model

    head_dim = 64
    expand = 2
    heads = expand * d_model // head_dim
    seqlab_model = build_model(
        ModelConfig(
            mixer="mamba2",
            d_model=d_model,
            n_layers=layers,
            n_heads=heads,
            vocab_size=256,
            mlp_ratio=0.0,
        )
    )
    hf = Mamba2ForCausalLM(
        Mamba2Config(
            vocab_size=256,
            hidden_size=d_model,
            num_hidden_layers=layers,
            num_heads=heads,
            head_dim=head_dim,
            expand=expand,
            state_size=64,
            n_groups=1,
            conv_kernel=4,
            chunk_size=64,
            tie_word_embeddings=True,
        )
    )
    tokens = torch.randint(0, 256, (batch, seq_len + 1))

    def trainer(model, forward):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            logits = forward(model, tokens[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    ours = trainer(seqlab_model, lambda m, x: m(x)[0])
    theirs = trainer(hf, lambda m, x: m(input_ids=x).logits)
    times = {"seqlab": [], "hf": []}
    ours()
    theirs()
    for _ in range(steps):
        for name, fn in (("seqlab", ours), ("hf", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: batch * seq_len / statistics.median(v) for k, v in times.items()}
    print(
        f"\n## mamba2 training tokens/s vs HF Mamba2ForCausalLM (d_model {d_model}, "
        f"{layers} layers, T {seq_len}, batch {batch}; seqlab params "
        f"{seqlab_model.num_params():,}, HF params {sum(p.numel() for p in hf.parameters()):,})\n"
    )
    print(
        f"seqlab {rate['seqlab']:.0f} tok/s, HF {rate['hf']:.0f} tok/s, ratio "
        f"{rate['seqlab'] / rate['hf']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["kernels", "decode", "mamba2"])
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--max-loop-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--contexts", default="512,8192", help="the two decode contexts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if args.only in (None, "kernels"):
        bench_kernels([int(t) for t in args.lengths.split(",")], args.max_loop_len, args.repeats)
    if args.only in (None, "decode"):
        short, long = (int(c) for c in args.contexts.split(","))
        bench_decode((short, long), d_model=128, steps=32, repeats=max(args.repeats, 7))
    if args.only in (None, "mamba2"):
        bench_mamba2_vs_hf(steps=5, seq_len=256, batch=8, d_model=256, layers=4)


if __name__ == "__main__":
    main()
