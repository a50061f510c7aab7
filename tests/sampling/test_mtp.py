import itertools

import pytest
import torch
import torch.nn.functional as F

import seqlab
from seqlab.errors import ConfigError
from seqlab.objectives import Batch, build_objective
from tests.sampling.helpers import PROMPTS, chi2_statistic, row, tiny

V = 10


def first_head(input_ids, scores):
    """Plain decoding of an mtp model: only head 0's logits (the first V ids) compete."""
    return scores.masked_fill(torch.arange(scores.shape[-1]) >= V, -torch.inf)


def test_mtp_nll_is_next_token_nll_and_loss_averages_heads():
    model = tiny(vocab=3 * V)
    objective = build_objective("mtp", V, heads=3)
    assert objective.model_vocab_size(V) == 3 * V
    tokens = torch.randint(0, V, (2, 9))
    logits = model(tokens[:, :-1])[0].float().unflatten(-1, (3, V))
    per_head = [
        F.cross_entropy(logits[:, : 8 - i, i].flatten(0, 1), tokens[:, 1 + i :].flatten())
        for i in range(3)
    ]
    nll = objective.nll(model, Batch(tokens))
    assert nll.tokens == 16 and not nll.bound
    assert nll.per_token == pytest.approx(per_head[0].item(), rel=1e-5)
    loss, metrics = objective.loss(model, Batch(tokens))
    assert loss.item() == pytest.approx(torch.stack(per_head).mean().item(), rel=1e-5)
    assert metrics["nll_head2"] == pytest.approx(per_head[2].item(), rel=1e-5)
    with pytest.raises(ConfigError):
        build_objective("mtp", V, heads=0)


def trained_mtp(mixer: str):
    """A model trained with `mtp` (3 heads) on a periodic sequence, which all heads can learn."""
    model = tiny(mixer, vocab=3 * V, layers=1, std=0.1).train()
    objective = build_objective("mtp", V, heads=3)
    pattern = torch.tensor([1, 4, 2, 8, 5, 7, 3, 9, 6, 0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        starts = torch.randint(0, 10, (8,))
        tokens = pattern[(starts[:, None] + torch.arange(17)) % 10]
        loss, _ = objective.loss(model, Batch(tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), loss.item()


@pytest.mark.statistical
@pytest.mark.parametrize("mixer", ["attention", "gru"])
def test_self_speculative_greedy_equals_next_token_head_greedy(mixer):
    model, loss = trained_mtp(mixer)
    assert loss < 0.5
    prompts = [[1, 4, 2], [5], [3, 9, 6, 0, 1]]
    greedy = seqlab.generate(model, prompts, max_new_tokens=12, processors=[first_head])
    out = seqlab.generate(model, prompts, max_new_tokens=12, sampler="self_speculative", heads=3)
    assert torch.equal(out.tokens, greedy.tokens)
    assert out.acceptance > 0.5 and out.nfe < greedy.nfe
    untrained = tiny(mixer, vocab=3 * V)
    greedy = seqlab.generate(untrained, PROMPTS, max_new_tokens=8, processors=[first_head])
    out = seqlab.generate(untrained, PROMPTS, max_new_tokens=8, sampler="self_speculative", heads=3)
    assert [row(out, i) for i in range(4)] == [row(greedy, i) for i in range(4)]


@pytest.mark.statistical
def test_self_speculative_sampling_preserves_next_token_distribution():
    vocab, n = 4, 4000
    model = tiny(vocab=2 * vocab)  # std 0.3: ~30 of the 64 cells expect > 5 draws
    out = seqlab.generate(
        model,
        [[1, 2]] * n,
        max_new_tokens=3,
        sampler="self_speculative",
        heads=2,
        do_sample=True,
        seed=0,
    )
    assert 0 < out.acceptance < 1
    seqs = list(itertools.product(range(vocab), repeat=3))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2] + list(s) for s in seqs]))[0][:, :, :vocab]
    logp = logits.double().log_softmax(-1)
    cells = torch.tensor(seqs)
    probs = logp[:, 1:4].gather(-1, cells[..., None]).squeeze(-1).sum(-1).exp()
    index = (out.tokens[:, 2:] * torch.tensor([16, 4, 1])).sum(-1)
    counts = torch.bincount(index, minlength=64).double()
    chi2, limit = chi2_statistic(counts, probs * n)
    assert chi2 < limit


def test_self_speculative_checks_heads():
    with pytest.raises(ConfigError, match="heads"):
        seqlab.generate(
            tiny(vocab=21), [[1]], max_new_tokens=2, sampler="self_speculative", heads=2
        )
