"""Training memory of a deep equilibrium model against the same block unrolled, CPU.

For a DEQ attention model (one weight-tied block f, `model.deq`) run for exactly N forward
iterations (tol 0) and the ordinary model with the same block unrolled N times, one training
step (forward, cross-entropy, backward) is measured three ways, each model in a fresh process:

- saved: bytes autograd keeps for the backward (every tensor packed by
  `torch.autograd.graph.saved_tensors_hooks`, each storage counted once): the activation
  memory, deterministic;
- peak: growth of the process's peak resident memory (`ru_maxrss`) over the first step, from
  the built model and batch (the gradients, of the size of the weights, included);
- time: the median wall time of a step.

N is the mean forward iteration count a trained DEQ uses (read it from its log,
`deq_iterations`), so that both models spend about the same forward FLOPs.

    PYTHONPATH=src python benchmarks/deq_memory.py --depth 6
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.model import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=6, help="N: DEQ iterations = unrolled layers")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def model_configs(args: argparse.Namespace) -> dict[str, ModelConfig]:
    shape = {"d_model": args.d_model, "n_heads": args.heads, "vocab_size": args.vocab}
    deq = {"layers": ["attention"], "solver": "fixed_point", "max_iter": args.depth, "tol": 0.0}
    return {
        f"unrolled x{args.depth}": ModelConfig(mixer="attention", n_layers=args.depth, **shape),
        "deq implicit": ModelConfig(deq={**deq, "backward": "implicit"}, **shape),
        "deq phantom (5 steps)": ModelConfig(deq={**deq, "backward": "phantom"}, **shape),
        "deq unrolled backward": ModelConfig(deq={**deq, "backward": "unrolled"}, **shape),
    }


def saved_bytes(step) -> int:
    """Bytes of the distinct storages autograd saves for the backward while `step` runs."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def measure(name: str, config: ModelConfig, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(args.threads)
    # tol 0 makes every solve run exactly N iterations and miss tol by design
    logging.getLogger("seqlab.implicit").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = build_model(config)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1))

    def forward() -> torch.Tensor:
        logits, _ = model(tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    def step() -> None:
        model.zero_grad(set_to_none=True)
        forward().backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    saved = saved_bytes(forward)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    params = model.num_params()
    queue.put((name, params, saved, peak * 1024, statistics.median(times)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    rows = []
    for name, config in model_configs(args).items():
        queue = context.Queue()
        process = context.Process(target=measure, args=(name, config, args, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    print(
        f"one training step, B {args.batch} x T {args.seq_len}, d_model {args.d_model}, "
        f"N = {args.depth}, threads {args.threads}"
    )
    print("| model | params | saved for backward (MiB) | peak RSS growth (MiB) | step (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, params, saved, peak, seconds in rows:
        print(f"| {name} | {params:,} | {saved / 2**20:.1f} | {peak / 2**20:.1f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
