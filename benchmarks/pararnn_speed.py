"""ParaRNN training-step speed: Newton's parallel solve vs the same cell step by step vs torch's
fused GRU/LSTM (the `gru` and `lstm` mixers).

Prints, measured side by side in one run, the forward+backward seconds of one mixer call
(batch --batch, d_model --d-model, hidden = d_model for every cell, float32) at each T in
--lengths, and the Newton iterations each solve used (forward; the backward is one scan):

    python benchmarks/pararnn_speed.py --threads 1
    python benchmarks/pararnn_speed.py --lengths 512,2048 --max-loop-len 2048
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from seqlab.mixers.fused_rnn import GRU, LSTM
from seqlab.mixers.pararnn import ParaGRU, ParaLSTM, ParaRNN


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step(mixer: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def go() -> None:
        mixer.zero_grad(set_to_none=True)
        mixer(x)[0].sum().backward()

    return go


def bench(lengths: list[int], batch: int, d_model: int, max_loop_len: int, repeats: int) -> None:
    print(
        f"## ParaRNN: forward+backward seconds per mixer call (batch {batch}, d_model {d_model}, "
        "hidden = d_model, float32)\n"
    )
    print(
        "| cell | T | newton | iterations | sequential (same cell) | sequential / newton | "
        "torch fused | fused / newton |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for t in lengths:
        x = torch.randn(batch, t, d_model, requires_grad=True)
        for label, para_cls, fused_cls in (("gru", ParaGRU, GRU), ("lstm", ParaLSTM, LSTM)):
            torch.manual_seed(0)
            para: ParaRNN = para_cls(d_model, expand=1)
            newton = median_seconds(step(para, x), repeats)
            info = para.newton_info
            iterations = f"{info.iterations}" + ("" if info.converged else " (not converged)")
            loop_cells = "not run | –"  # past --max-loop-len
            if t <= max_loop_len:
                para.mode = "sequential"
                loop = median_seconds(step(para, x), repeats)
                loop_cells = f"{loop:.3f} | {loop / newton:.1f}x"
            fused = median_seconds(step(fused_cls(d_model), x), repeats)
            print(
                f"| {label} | {t} | {newton:.4f} | {iterations} | {loop_cells} | "
                f"{fused:.4f} | {fused / newton:.2f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--max-loop-len", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    lengths = [int(t) for t in args.lengths.split(",")]
    bench(lengths, args.batch, args.d_model, args.max_loop_len, args.repeats)


if __name__ == "__main__":
    main()
