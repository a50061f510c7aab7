"""Decoding speed: KV cache vs recompute, recurrent state vs context, speculative decoding,
prompt lookup decoding.

Four measurements, each compared within one run (interleaved repeats, medians):

1. attention decode tokens/s with the KV cache vs recomputing the whole context every step,
   at a `--context` token context (default 1024);
2. decode tokens/s of recurrent backbones (and attention for contrast) after contexts of
   512 and 8192 tokens: a fixed-size state should not slow down with context;
3. greedy speculative decoding of a trained target with a draft 4x smaller (same width, a
   quarter of the layers), both trained on the same corpus: tokens/s against the target's
   plain greedy decoding, acceptance rate, and a check that the outputs are identical;
4. greedy prompt lookup decoding (`prompt_lookup`: drafts copied from the context) of the same
   target against its plain greedy decoding, after `--lookup-prompt-len` tokens of Python
   source (the stdlib corpus's test split) and of English prose (the text paragraphs of
   Python's own documentation, `pydoc_data.topics`), with the adaptive and the fixed draft
   length: tokens per forward pass, acceptance, tokens/s and a check that the outputs are
   identical.

Models are trained here on the built-in corpus (a short run of the `default` preset) unless
`--target DIR --draft DIR` name existing run directories. Run from the repository root:

    PYTHONPATH=src python benchmarks/decoding.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import seqlab
from seqlab.config import ModelConfig, load_config
from seqlab.harness.bench import interleaved_decode_rates


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def kv_vs_recompute(model, context: int, steps: int, repeats: int) -> tuple[float, float]:
    """Tokens/s of `steps` greedy decode steps after `context` tokens, both ways."""
    prompt = torch.randint(0, model.config.vocab_size, (1, context))
    _, state0 = model(prompt, model.init_state(1))

    def cached():
        state, tok = state0, prompt[:, -1:]
        for _ in range(steps):
            logits, state = model(tok, state)
            tok = logits[:, -1:].argmax(-1)

    def recompute():
        tokens = prompt
        for _ in range(steps):
            logits, _ = model(tokens)
            tokens = torch.cat([tokens, logits[:, -1:].argmax(-1)], dim=1)

    cached()
    recompute()
    kv, full = [], []
    for _ in range(repeats):
        kv.append(median_seconds(cached, 1))
        full.append(median_seconds(recompute, 1))
    return steps / statistics.median(kv), steps / statistics.median(full)


def train_run(out: Path, steps: int, overrides: dict) -> Path:
    from seqlab.train import train

    if (out / "summary.json").is_file():
        return out
    config = load_config("default", {"train.steps": steps, "train.eval_every": steps, **overrides})
    summary = train(config, out, progress=False)
    print(
        f"  trained {out.name}: {summary.get('params', '?')} params, "
        f"final metrics { ({k: v for k, v in summary.items() if 'loss' in k or 'bpb' in k}) }"
    )
    return out


def speculative_bench(args) -> None:
    from seqlab.data.corpora import load_corpus

    root = Path(args.runs)
    target_dir = Path(args.target) if args.target else train_run(root / "target", args.steps, {})
    draft_dir = (
        Path(args.draft)
        if args.draft
        else train_run(root / "draft", args.steps, {"model.n_layers": args.draft_layers})
    )
    target, draft = seqlab.load(target_dir).eval(), seqlab.load(draft_dir).eval()
    print(
        f"  target {target.num_params(embeddings=False):,} non-embedding params "
        f"({target.config.n_layers} layers), draft {draft.num_params(embeddings=False):,} "
        f"({draft.config.n_layers} layers): "
        f"{target.num_params(embeddings=False) / draft.num_params(embeddings=False):.1f}x "
        "smaller"
    )
    test = load_corpus("stdlib").tokens("test")
    step = len(test) // (args.prompts + 1)
    prompts = [
        test[(i + 1) * step : (i + 1) * step + args.prompt_len].tolist()
        for i in range(args.prompts)
    ]

    def greedy():
        return [seqlab.generate(target, [p], max_new_tokens=args.new_tokens) for p in prompts]

    def speculative(k):
        return [
            seqlab.generate(
                target,
                [p],
                max_new_tokens=args.new_tokens,
                sampler="speculative",
                draft_model=draft,
                num_draft_tokens=k,
            )
            for p in prompts
        ]

    base = greedy()
    for k in args.draft_tokens:
        runs = speculative(k)
        same = all(torch.equal(a.tokens, b.tokens) for a, b in zip(base, runs, strict=True))
        plain_s, spec_s, acceptance = [], [], []
        for _ in range(args.repeats):
            plain_s.append(sum(g.seconds for g in greedy()))
            spec = speculative(k)
            spec_s.append(sum(g.seconds for g in spec))
            acceptance.append(sum(g.acceptance for g in spec) / len(spec))
        total = args.new_tokens * len(prompts)
        plain_rate = total / statistics.median(plain_s)
        spec_rate = total / statistics.median(spec_s)
        print(
            f"  k={k}: greedy {plain_rate:7.1f} tok/s  speculative {spec_rate:7.1f} tok/s  "
            f"speed-up {spec_rate / plain_rate:.2f}x  acceptance "
            f"{statistics.mean(acceptance):.2f}  identical to greedy: {same}"
        )


def prose_text() -> str:
    """English prose from Python's documentation: the paragraphs of `pydoc_data.topics` (the
    language reference) whose every line starts with a letter, so no code, tables or
    headings."""
    from pydoc_data.topics import topics

    paragraphs = [
        paragraph.strip("\n")
        for text in topics.values()
        for paragraph in text.split("\n\n")
        if all(line[:1].isalpha() for line in paragraph.strip("\n").split("\n"))
    ]
    return "\n\n".join(paragraphs)


def prompt_lookup_bench(args) -> None:
    from seqlab.data.corpora import load_corpus

    root = Path(args.runs)
    target_dir = Path(args.target) if args.target else train_run(root / "target", args.steps, {})
    target = seqlab.load(target_dir).eval()
    sources = {
        "python": load_corpus("stdlib").tokens("test").tolist(),
        "prose": list(prose_text().encode("utf-8")),
    }
    lookups = {
        f"{schedule} {args.lookup_draft_tokens}": {
            "sampler": "prompt_lookup",
            "num_draft_tokens": args.lookup_draft_tokens,
            "adaptive": schedule == "adaptive",
        }
        for schedule in ("adaptive", "fixed")
    }

    def decode(prompts, **options):
        return [
            seqlab.generate(target, [p], max_new_tokens=args.new_tokens, **options) for p in prompts
        ]

    for name, tokens in sources.items():
        step = (len(tokens) - args.lookup_prompt_len) // args.prompts
        prompts = [
            tokens[i * step : i * step + args.lookup_prompt_len] for i in range(args.prompts)
        ]
        base = decode(prompts)
        runs = {label: decode(prompts, **options) for label, options in lookups.items()}
        seconds = {label: [] for label in ["greedy", *lookups]}
        for _ in range(args.repeats):
            seconds["greedy"].append(sum(g.seconds for g in decode(prompts)))
            for label, options in lookups.items():
                seconds[label].append(sum(g.seconds for g in decode(prompts, **options)))
        total = args.new_tokens * len(prompts)
        plain_rate = total / statistics.median(seconds["greedy"])
        print(
            f"  {name:<6} greedy       tokens/forward {total / sum(g.nfe for g in base):.2f}"
            f"  {plain_rate:6.1f} tok/s"
        )
        for label, outs in runs.items():
            same = all(torch.equal(a.tokens, b.tokens) for a, b in zip(base, outs, strict=True))
            rate = total / statistics.median(seconds[label])
            acceptance = statistics.mean(g.acceptance for g in outs)
            print(
                f"  {name:<6} {label:<12} tokens/forward {total / sum(g.nfe for g in outs):.2f}"
                f"  {rate:6.1f} tok/s  speed-up {rate / plain_rate:.2f}x  acceptance "
                f"{acceptance:.2f}  identical to greedy: {same}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--steps-decode", type=int, default=32, help="decode steps timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mixers", default="mamba,s4d,mingru,gru,attention")
    parser.add_argument("--long", type=int, default=8192)
    parser.add_argument("--short", type=int, default=512)
    parser.add_argument("--runs", default="runs/bench_decoding", help="where to train models")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    parser.add_argument("--draft-layers", type=int, default=1)
    parser.add_argument("--target", help="trained target run directory (skip training)")
    parser.add_argument("--draft", help="trained draft run directory (skip training)")
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--lookup-prompt-len", type=int, default=512)
    parser.add_argument("--lookup-draft-tokens", type=int, default=10, help="the most drafted")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["kv", "recurrent", "spec", "lookup"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, load average {os.getloadavg()}")

    def fresh(mixer: str):
        torch.manual_seed(0)
        return seqlab.build_model(
            ModelConfig(
                mixer=mixer, d_model=args.d_model, n_layers=args.layers, n_heads=4, vocab_size=256
            )
        ).eval()

    if "kv" not in args.skip:
        print(
            f"1. attention decode at context {args.context} (d_model {args.d_model}, "
            f"{args.layers} layers)"
        )
        kv, full = kv_vs_recompute(
            fresh("attention"), args.context, args.steps_decode, args.repeats
        )
        print(f"  KV cache {kv:7.1f} tok/s  recompute {full:7.1f} tok/s  ratio {kv / full:.1f}x")

    if "recurrent" not in args.skip:
        print(f"2. decode tokens/s after {args.short} vs {args.long} context tokens")
        for mixer in args.mixers.split(","):
            model = fresh(mixer)
            short, long = interleaved_decode_rates(
                model, [args.short, args.long], args.steps_decode, args.repeats
            )
            print(
                f"  {mixer:<10} {short:7.1f} tok/s @ {args.short}  {long:7.1f} tok/s @ "
                f"{args.long}  ratio long/short {long / short:.2f}  state "
                f"{model.state_size(args.long):,} numbers @ {args.long}"
            )

    if "spec" not in args.skip:
        print("3. greedy speculative decoding, trained target and 4x smaller draft")
        speculative_bench(args)

    if "lookup" not in args.skip:
        print(
            f"4. greedy prompt lookup decoding after {args.lookup_prompt_len}-token prompts, "
            "trained target"
        )
        prompt_lookup_bench(args)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
