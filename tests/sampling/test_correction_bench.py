"""The core of benchmarks/correction_samplers.py on tiny untrained models: distinct 4-grams on a
hand example, the judge's NLL against the AR objective's, the arpc budget split, and the NFE
each compared sampler reports equal to the model calls counted by wrapping `forward`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.objectives import Batch, build_objective

VOCAB = 7
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "correction_samplers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_correction_samplers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(objective, mixer: str = "attention") -> seqlab.model.Model:
    torch.manual_seed(0)
    config = ModelConfig(
        mixer=mixer,
        d_model=32,
        n_layers=1,
        n_heads=4,
        vocab_size=objective.model_vocab_size(VOCAB),
        init_std=0.3,
    )
    return seqlab.build_model(config).eval()


def test_distinct_ngrams_pools_every_rows_windows(bench):
    rows = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4], [9, 1, 2, 3, 4, 9, 9, 9]])
    # row 0: 1234 2341 3412 4123 1234; row 1: 9123 1234 2349 3499 4999 -> 8 distinct of 10
    assert bench.distinct_ngrams(rows) == 0.8
    assert bench.distinct_ngrams(rows[:1]) == 0.8
    assert bench.distinct_ngrams(torch.zeros(2, 6, dtype=torch.long)) == 1 / 6
    assert bench.distinct_ngrams(torch.zeros(1, 3, dtype=torch.long)) == 0.0  # no 4-gram


def test_judged_nll_is_the_ar_objectives_nll_of_the_new_tokens(bench):
    objective = build_objective("ar", VOCAB)
    judge = tiny(objective).double()
    tokens = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
    per_row = bench.judged_nll(judge, tokens, prompt_len=4)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 4:] = True
    expected = objective.nll(judge, Batch(tokens, mask)).per_token
    assert per_row.shape == (3,)
    assert float(per_row.mean()) == pytest.approx(expected, rel=1e-9)
    assert bench.mean_stderr(torch.tensor([1.0, 3.0])) == (2.0, 1.0)


def test_arpc_split_spends_at_most_the_budget_and_all_of_it_when_it_factors(bench):
    assert bench.arpc_split(2) is None
    for budget in range(3, 40):
        steps, rounds = bench.arpc_split(budget)
        cost = steps + rounds * (1 + steps)
        assert steps >= 1 and rounds >= 1 and cost <= budget
        if any((budget + 1) % f == 0 for f in range(2, budget)):
            assert cost == budget
    assert bench.arpc_split(8) == (2, 2) and bench.arpc_split(5) == (2, 1)


@pytest.mark.parametrize("cache", [True, False])
def test_every_compared_sampler_counts_each_model_call_once(bench, cache):
    args = bench.parse_args(["--quick", "--budgets", "3", "5", "8"])
    args.samples = 3
    objectives = {
        "blockgen": build_objective("block_diffusion", VOCAB, block_size=4, block_sizes=[1, 4]),
        "hybrid": build_objective("epsilon_hybrid_diffusion", VOCAB, epsilon=0.3),
    }
    nets = {name: tiny(objective) for name, objective in objectives.items()}
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(2))
    table = bench.rows(args, blocks=3)
    assert {row.sampler for row in table} == {
        "ancestral",
        "topk_confidence",
        "arpc",
        "acs",
        "confidence",
    }
    for row in table:
        model = nets[row.model]
        calls = []
        forward = model.forward
        model.forward = lambda *a, f=forward, c=calls, **k: c.append(1) or f(*a, **k)
        try:
            row = row._replace(options={**row.options, "cache": cache})
            out = bench.sample(model, objectives[row.model], prompt, 12, row, args)
        finally:
            del model.forward
        assert out.nfe == len(calls) > 0, bench.label(row)
        assert out.tokens.shape == (3, 16) and int(out.tokens.max()) < VOCAB
        if row.budget is not None and row.model == "blockgen":
            assert out.nfe <= 3 * row.budget, bench.label(row)  # 3 blocks of 4 new tokens


def test_quick_run_prints_a_row_per_sampler_and_the_reference(bench, tmp_path, capsys):
    bench.main(["--quick", "--runs", str(tmp_path), "--budgets", "3"])
    out = capsys.readouterr().out
    table = [line.split(" | ") for line in out.splitlines() if line.startswith("| ")]
    assert [cells[1] for cells in table[1:-1]] == [
        "ancestral",
        "topk_confidence",
        "arpc (1 steps + 1 rounds, remask 1)",
        "ancestral",
        "acs (threshold 0.9)",
        "confidence (threshold 0.9)",
    ]
    assert table[-1][0] == "| test text (reference)"
    assert table[0][4] == "judged NLL"
    assert all(" ± " in " | ".join(cells) for cells in table[1:])
    assert "  hybrid acs (threshold 0.9) at budget 3: " in out  # paired against ancestral
    assert "  blockgen arpc (1 steps + 1 rounds, remask 1) at budget 3: " in out
    assert len(list(tmp_path.iterdir())) == 3  # the three models, cached
