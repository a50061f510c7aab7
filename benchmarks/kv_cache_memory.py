"""Long-context recall at bounded memory: accuracy against the numbers kept per sequence, for
each bounded KV cache policy of attention (`seqlab.ops.kv_cache`) beside fixed-state
recurrent backbones, at contexts `--multipliers` times the training length (1: the training
length itself).

Every run directory (`seqlab train` output) is evaluated on its own task (mqar or needle)
with `seq_len` multiplied, on the test split's first `--examples` rows. Attention runs are
scored once with the exact cache and once per (policy, budget): the whole row runs through
the bounded state (the prompt in chunks of `--chunk` tokens inside each attention layer, 1:
exactly as decoding token by token), and the argmax at every scored position counts. Other
runs (fixed-state recurrences) are scored with their own state, whose size is their memory.
Memory is `numbers` per sequence: every number the state keeps, all layers (`cache_numbers`:
keys, values, positions, counts and scores of the kept entries, and InfLLM's block memory,
which grows O(T) and is also printed apart as `memory`); a recurrent model's `state_size`.
`ceiling` is the exact cache's accuracy at the same context (what a bounded cache can reach).

    PYTHONPATH=src python benchmarks/kv_cache_memory.py --runs runs/needle-attention \\
        runs/needle-gla runs/needle-mamba2 --multipliers 4 8 16 32 --budgets 16 32 64 128
    PYTHONPATH=src python benchmarks/kv_cache_memory.py --quick   # untrained smoke test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from seqlab.cli.args import run_config
from seqlab.config import ModelConfig
from seqlab.files import atomic_write_text
from seqlab.io import load
from seqlab.model import Model, build_model
from seqlab.ops.kv_cache import cache_numbers, init_bounded_state, memory_numbers
from seqlab.ops.kv_cache.base import bounded_layers
from seqlab.registry import TASKS

POLICIES = ["window", "sink", "h2o", "cluster", "infllm"]


def policy_spec(policy: str, budget: int, chunk: int) -> dict | None:
    """The kv_cache option of `policy` at `budget` (InfLLM's blocks sized to the budget),
    None when the budget cannot hold the policy's fixed parts."""
    spec: dict = {"policy": policy, "budget": budget, "chunk": chunk}
    if policy == "sink":
        spec["sinks"] = min(4, budget // 4)
        return spec if budget >= 2 else None
    if policy == "cluster":
        return spec if budget >= 2 else None
    if policy == "infllm":
        block = max(1, budget // 16)
        spec.update(
            sinks=min(4, budget // 16), block_size=block, top_k=4, representatives=min(4, block)
        )
        return spec if budget > spec["sinks"] + 5 * block else None
    return spec


@torch.no_grad()
def accuracy(
    model: Model, tokens: torch.Tensor, scored: torch.Tensor, spec: dict | None, batch: int
) -> float:
    """Argmax accuracy at the scored positions, rows in batches through the bounded state
    (the parallel form for the exact cache and for states without a policy)."""
    hits = total = 0
    for start in range(0, len(tokens), batch):
        rows = tokens[start : start + batch]
        state = None if spec is None else init_bounded_state(model, len(rows), spec)
        logits, _ = model(rows[:, :-1], state)
        mask = scored[start : start + batch, 1:]
        hits += int(((logits.argmax(-1) == rows[:, 1:]) & mask).sum())
        total += int(mask.sum())
    return hits / max(total, 1)


def evaluate(label: str, model: Model, task_name: str, options: dict, args) -> list[dict]:
    model.eval()
    length = int(options.get("seq_len", TASKS.get(task_name).options()["seq_len"]))
    attention = bool(bounded_layers(model))
    rows = []
    for multiplier in args.multipliers:
        task = TASKS.build(
            task_name, **{**options, "seq_len": multiplier * length, "eval_examples": args.examples}
        )
        data = task.eval_set("test")
        tokens, scored = data.tokens.to(model.device), data.mask.to(model.device)
        context = tokens.shape[1] - 1
        cells = [("exact" if attention else "state", None)]
        if attention:
            cells += [
                (f"{p} {b}", s)
                for p in args.policies
                for b in args.budgets
                if (s := policy_spec(p, b, args.chunk)) is not None
            ]
        ceiling = None
        for name, spec in cells:
            row = {
                "run": label,
                "task": task_name,
                "context": context,
                "multiplier": multiplier,
                "cache": name,
                "numbers": cache_numbers(model, spec, context),
                "memory": memory_numbers(model, spec, context),
                "accuracy": accuracy(model, tokens, scored, spec, args.batch),
            }
            if attention:
                ceiling = row["accuracy"] if ceiling is None else ceiling  # exact comes first
                row["ceiling"] = ceiling
            rows.append(row)
            print(
                f"| {label} | {task_name} | {context} ({multiplier}x) | {name} | "
                f"{row['numbers']} | {row['memory']} | {row['accuracy']:.3f} | "
                f"{'' if ceiling is None else f'{ceiling:.3f}'} |",
                flush=True,
            )
    return rows


def quick_models() -> list[tuple[str, Model, str, dict]]:
    """Two untrained tiny models on the needle task (a smoke test of the code path)."""
    torch.manual_seed(0)
    options = {"seq_len": 16, "vocab_size": 16}
    models = []
    for mixer in ("attention", "gla"):
        config = ModelConfig(mixer=mixer, d_model=16, n_layers=2, n_heads=2, vocab_size=16)
        models.append((mixer, build_model(config), "needle", options))
    return models


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="run directories (mqar, needle)")
    parser.add_argument("--multipliers", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    parser.add_argument("--examples", type=int, default=128, help="test rows per context")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=1, help="prompt chunk of the policies")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON lines")
    parser.add_argument("--quick", action="store_true", help="untrained tiny models, tiny sizes")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; choose a new file (nothing is overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.multipliers, args.budgets, args.examples, args.batch = [1, 4], [8], 4, 4
        models = quick_models()
    else:
        models = []
        for run in args.runs:
            config = run_config(Path(run))
            models.append(
                (
                    Path(run).name,
                    load(run, args.device),
                    config.task.name,
                    dict(config.task.options),
                )
            )
    print(
        "| run | task | context | cache | numbers/seq | of which block memory | accuracy | "
        "exact cache's accuracy |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [
        row
        for label, model, task, options in models
        for row in evaluate(label, model, task, options, args)
    ]
    if args.out is not None:
        atomic_write_text(args.out, "".join(json.dumps(row) + "\n" for row in rows))
    return rows


if __name__ == "__main__":
    main()
