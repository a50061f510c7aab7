"""Sequence parallelism on CPU: peak memory per rank and tokens/s against sequence length for
N = 1, 2, 4 ranks (gloo, one thread each), forward + backward of a small model: two layers
of `--mixer`, or the `--layers` given (attention and hybrids run `--attention` ring,
ring_bidirectional or ulysses).

    PYTHONPATH=src python benchmarks/sequence_parallel.py --lengths 1024 4096 --ranks 1 2 4
    PYTHONPATH=src python benchmarks/sequence_parallel.py --layers gla attention --attention ring

Peak memory is each rank's peak resident set (`resource` ru_maxrss) during two steps, less its
resident set before them (model, imports): the activations, gradients and buffers of a step. On CPU
the memory curve is the point; the ranks share the machine's cores, so time is honest but
not a speed-up measurement unless each rank has its own core.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seqlab.config import ModelConfig
from seqlab.model import build_model
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.sequence_parallel import SequenceShard, check_model


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rank(
    rank: int, size: int, length: int, layers: list[str], attention: str, repeats: int, queue
) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    if size > 1:
        dist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(0)
    config = ModelConfig(layers=layers, d_model=64, n_heads=4, vocab_size=256)
    model, objective = build_model(config), Autoregressive()
    tokens = torch.randint(0, 256, (1, length + 1), generator=torch.Generator().manual_seed(0))
    batch = Batch(tokens=tokens)
    shard = None
    if size > 1:
        shard = SequenceShard(dist.group.WORLD, rank, size, attention=attention)
        check_model(model, shard)

    def step() -> None:
        if shard is None:
            loss, _ = objective.loss(model, batch)
        else:
            loss, _ = objective.sharded_loss(model, batch, shard)
        loss.backward()
        model.zero_grad(set_to_none=True)

    before = resident_bytes()
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    if size > 1:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    queue.put((rank, peak, seconds))
    if size > 1:
        dist.destroy_process_group()


def measure(
    size: int, length: int, layers: list[str], attention: str, repeats: int
) -> tuple[float, float]:
    """(the largest peak MiB over the ranks, tokens/s of the whole sequence)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    queue = mp.get_context("spawn").SimpleQueue()
    args = (size, length, layers, attention, repeats, queue)
    mp.spawn(_rank, args=args, nprocs=size, join=True)
    results = [queue.get() for _ in range(size)]
    peak = max(r[1] for r in results) / 2**20
    seconds = max(r[2] for r in results)
    return peak, length / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mixer", default="gla")
    parser.add_argument("--layers", nargs="+", help="the model's layers (default: 2 x --mixer)")
    parser.add_argument("--attention", default="ring", help="ring | ring_bidirectional | ulysses")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    layers = args.layers or [args.mixer] * 2
    header = "".join(f"  N={n}: peak MiB/rank, tok/s".ljust(32) for n in args.ranks)
    uses_attention = "attention" in layers
    scheme = f" (attention: {args.attention})" if uses_attention else ""
    print(f"layers {layers}{scheme}, d_model 64, batch 1, forward + backward")
    print("length" + header)
    for length in args.lengths:
        cells = []
        for size in args.ranks:
            peak, rate = measure(size, length, layers, args.attention, args.repeats)
            cells.append(f"  {peak:10.1f} {rate:12.0f}".ljust(32))
        print(f"{length:<6}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
