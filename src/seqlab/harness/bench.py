"""`seqlab bench`: backbones x sequence lengths -> training tokens/s, decode tokens/s and
peak memory, as a table, a CSV and a plot of cost per token against length.

Each (backbone, length) cell runs in a fresh process so that its peak memory is its own:
peak resident memory (CPU) or peak allocated memory (CUDA) above what the process held
after building the model.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seqlab.config import ModelConfig
from seqlab.harness.report import pyplot
from seqlab.model import build_model


@dataclass(frozen=True)
class BenchCell:
    mixer: str
    seq_len: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    batch_size: int = 1
    train_steps: int = 5
    decode_steps: int = 32
    device: str = "cpu"
    threads: int | None = None


@torch.no_grad()
def interleaved_decode_rates(
    model: Any, contexts: list[int], steps: int, repeats: int
) -> list[float]:
    """Greedy decode tokens/s of `model` after each context length, timed interleaved.

    Each context is prefilled once from random tokens; then `repeats` rounds time `steps`
    one-token steps from every context's state in turn, so that load on the machine hits all
    contexts alike. Returns the median rate per context.
    """
    runs = []
    for context in contexts:
        prompt = torch.randint(0, model.config.vocab_size, (1, context))
        _, state0 = model(prompt, model.init_state(1))

        def run(state: Any = state0, token: torch.Tensor = prompt[:, -1:]) -> float:
            start = time.perf_counter()
            for _ in range(steps):
                logits, state = model(token, state)
                token = logits[:, -1:].argmax(-1)
            return time.perf_counter() - start

        run()
        runs.append(run)
    times = [[run() for run in runs] for _ in range(repeats)]
    return [steps / statistics.median(column) for column in zip(*times, strict=True)]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cell: BenchCell) -> dict[str, Any]:
    """Median time of `train_steps` AdamW steps on [batch, seq_len] (skipped when 0) and of
    `decode_steps` one-token steps after a `seq_len` prefill; throughput and peak memory."""
    if cell.threads:
        torch.set_num_threads(cell.threads)
    device = torch.device(cell.device)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            mixer=cell.mixer,
            d_model=cell.d_model,
            n_layers=cell.n_layers,
            n_heads=cell.n_heads,
            vocab_size=256,
        )
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (cell.batch_size, cell.seq_len + 1), device=device)
    baseline = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step() -> None:
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn: Any, repeats: int) -> float:
        """Median seconds of `fn` over `repeats` calls (robust to a busy machine)."""
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    train_seconds = math.nan
    if cell.train_steps > 0:
        train_step()
        train_seconds = timed(train_step, cell.train_steps)

    model.eval()
    with torch.no_grad():
        _, state = model(tokens[:1, :-1], model.init_state(1))
        step_token = tokens[:1, -1:]
        _, state = model(step_token, state)
        holder = [state]

        def decode_step() -> None:
            holder[0] = model(step_token, holder[0])[1]

        decode_seconds = timed(decode_step, cell.decode_steps)
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else max(_peak_rss_mb() - baseline, 0.0)
    )
    return {
        **asdict(cell),
        "params": model.num_params(),
        "state_size": model.state_size(cell.seq_len),
        "train_tokens_per_s": cell.batch_size * cell.seq_len / train_seconds,
        "train_ms_per_token": 1e3 * train_seconds / (cell.batch_size * cell.seq_len),
        "decode_tokens_per_s": 1.0 / decode_seconds,
        "decode_ms_per_token": 1e3 * decode_seconds,
        "peak_mb": round(peak, 1),
    }


def run_bench(
    cells: list[BenchCell], *, isolate: bool = True, progress: bool | None = None
) -> list[dict[str, Any]]:
    rows = []
    bar = tqdm(cells, desc="bench", disable=None if progress is None else not progress)
    if not isolate:
        return [measure(cell) for cell in bar]
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        for cell in bar:
            bar.set_postfix_str(f"{cell.mixer} T={cell.seq_len}")
            rows.append(pool.apply(measure, (cell,)))
    return rows


def bench_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "backbone",
        "T",
        "train tok/s",
        "decode tok/s",
        "decode ms/tok",
        "peak MB",
        "state size",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['mixer']} | {r['seq_len']} | {r['train_tokens_per_s']:.0f} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['decode_ms_per_token']:.2f} | "
            f"{r['peak_mb']:.0f} | {r['state_size']} |"
        )
    return "\n".join(lines) + "\n"


def growth_summary(rows: list[dict[str, Any]]) -> str:
    """Cost ratio between the longest and shortest length per backbone (1 = flat)."""
    lines = []
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        mine = sorted((r for r in rows if r["mixer"] == mixer), key=lambda r: r["seq_len"])
        if len(mine) < 2:
            continue
        short, long = mine[0], mine[-1]
        lines.append(
            f"{mixer}: T {short['seq_len']} -> {long['seq_len']}: train ms/token x"
            f"{long['train_ms_per_token'] / short['train_ms_per_token']:.2f}, decode ms/token x"
            f"{long['decode_ms_per_token'] / short['decode_ms_per_token']:.2f}"
        )
    return "\n".join(lines)


def plot_bench(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        mine = sorted((r for r in rows if r["mixer"] == mixer), key=lambda r: r["seq_len"])
        xs = [r["seq_len"] for r in mine]
        axes[0].plot(xs, [r["train_ms_per_token"] for r in mine], marker="o", label=mixer)
        axes[1].plot(xs, [r["decode_ms_per_token"] for r in mine], marker="o", label=mixer)
    for ax, title in zip(
        axes, ("training ms per token", "decode ms per token (after T)"), strict=True
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
