import itertools
import math

import pytest
import torch

import seqlab
from seqlab.config import ModelConfig
from seqlab.errors import ConfigError
from seqlab.layout import Layout
from seqlab.objectives import Batch, build_objective
from seqlab.objectives.insertion import Canvas, Drop, joint_log_probs
from seqlab.testing import check_objective

VOCAB = 3
START = VOCAB


def tiny(vocab=VOCAB, d_model=16, n_layers=2, init_std=0.3):
    config = ModelConfig(
        mixer="attention",
        d_model=d_model,
        n_layers=n_layers,
        n_heads=2,
        vocab_size=vocab + 1,
        init_std=init_std,
    )
    return seqlab.build_model(config).double()


def reference_joint(model, state, open_slots, vocab=VOCAB):
    """log p over {(j, v): j open} and stop for one state, from one plain model call."""
    logits = model(torch.tensor([[vocab, *state]]), layout=Layout.BIDIRECTIONAL)[0][0]
    keys = [(j, v) for j in open_slots for v in range(vocab)] + ["stop"]
    scores = torch.stack([logits[j, v] for j, v in keys[:-1]] + [logits[0, vocab]])
    return dict(zip(keys, scores.log_softmax(0).tolist(), strict=True))


def open_slots(kept, scored):
    """The open slots of the state keeping the sorted positions `kept` (the module's rule)."""
    slots = [0] if scored[0] else []
    for j, p in enumerate(kept, start=1):
        if scored[p] or (p + 1 < len(scored) and scored[p + 1]):
            slots.append(j)
    return slots


def exact_probability(model, context, x):
    """p(x | context) of a context prefix: the sum over every action sequence from the
    context to x, then stop (states that are not subsequences of x cannot reach it)."""

    def subsequence(short):
        rest = iter(x)
        return all(any(t == u for u in rest) for t in short)

    total, paths = 0.0, [(0.0, list(context), [False] * len(context))]
    while paths:
        grown = []
        for logp, state, inserted in paths:
            slots = [j for j in range(1, len(state) + 1) if j == len(context) or inserted[j - 1]]
            joint = reference_joint(model, state, slots)
            if state == x:
                total += math.exp(logp + joint["stop"])
                continue
            for j, v in itertools.product(slots, range(VOCAB)):
                new = state[:j] + [v] + state[j:]
                if subsequence(new):
                    grown.append((logp + joint[(j, v)], new, inserted[:j] + [True] + inserted[j:]))
        paths = grown
    return total


def test_insertion_passes_the_objective_kit():
    report = check_objective("insertion", eval_samples=3)
    assert report.ok, str(report)


def test_bad_options_are_config_errors():
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="eval_samples"):
            build_objective("insertion", VOCAB, eval_samples=bad)


def test_drop_targets_are_the_dropped_multisets_after_each_kept_slot():
    """Context 5 6, answer 1 2 1 3 with 1, 1, 3 dropped: the kept state is 5 6 2; slot 2
    (after 6) must receive {1}, slot 3 (after 2) the multiset {1, 3}; only slots 2 and 3 are
    open (nothing goes inside the context)."""
    tokens = torch.tensor([[5, 6, 1, 2, 1, 3], [5, 1, 1, 4, 0, 0]])
    scored = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    dropped = torch.tensor([[0, 0, 1, 0, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    drop = Drop.from_mask(tokens, scored, dropped, filler=9)
    assert drop.canvas.lengths.tolist() == [3, 4]
    assert drop.canvas.tokens[0, :3].tolist() == [5, 6, 2]
    assert drop.canvas.tokens[1, :4].tolist() == [5, 4, 0, 0]
    assert drop.counts.tolist() == [3, 2]

    def multisets(row):
        out = {}
        for p in dropped[row].nonzero().squeeze(1).tolist():
            out.setdefault(int(drop.slots[row, p]), []).append(int(tokens[row, p]))
        return {slot: sorted(v) for slot, v in out.items()}

    assert multisets(0) == {2: [1], 3: [1, 3]}
    assert multisets(1) == {1: [1, 1]}  # the same token twice in one gap: count 2
    assert drop.canvas.open[0].tolist() == [False, False, True, True, False, False, False]
    # row 1: after 5 (next is scored) and after 4 (scored); not inside the trailing padding
    assert drop.canvas.open[1].tolist() == [False, True, True, False, False, False, False]


def test_loss_is_the_multiset_cross_entropy_of_the_joint_softmax():
    model = tiny(vocab=10)
    objective = build_objective("insertion", 10)
    tokens = torch.tensor([[5, 6, 1, 2, 1, 3]])
    scored = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    dropped = torch.tensor([[0, 0, 1, 0, 1, 1]], dtype=torch.bool)
    drop = Drop.from_mask(tokens, scored, dropped, filler=10)
    with torch.no_grad():
        loss = objective.row_losses(model, Batch(tokens, scored), drop)
        joint = reference_joint(model, [5, 6, 2], [2, 3], vocab=10)
        nothing = Drop.from_mask(tokens, scored, torch.zeros_like(dropped), filler=10)
        stop = objective.row_losses(model, Batch(tokens, scored), nothing)
        full = reference_joint(model, [5, 6, 1, 2, 1, 3], [2, 3, 4, 5, 6], vocab=10)
    expected = -(joint[(2, 1)] + joint[(3, 1)] + joint[(3, 3)]) / 3
    assert math.isclose(float(loss[0]), expected, rel_tol=1e-12)
    assert math.isclose(float(stop[0]), -full["stop"], rel_tol=1e-12)


def test_the_joint_over_open_slots_tokens_and_stop_sums_to_one():
    model = tiny()
    canvas = Canvas(
        torch.tensor([[0, 1, 2, 0], [2, 2, 9, 9]]),
        torch.tensor([4, 2]),
        torch.tensor([[0, 1, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool),
    )
    with torch.no_grad():
        slot_lp, stop_lp = joint_log_probs(model, canvas, VOCAB)
        total = slot_lp.exp().sum((1, 2)) + stop_lp.exp()
        assert slot_lp.shape == (2, 5, VOCAB)
        torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))
        assert torch.isinf(slot_lp[0, [0, 2]]).all() and torch.isinf(slot_lp[1, 3:]).all()
        # rows of different lengths run alone: row 1 equals its own call
        alone, alone_stop = joint_log_probs(model, canvas.rows(torch.tensor([1])), VOCAB)
    torch.testing.assert_close(slot_lp[1, :3], alone[0, :3])
    torch.testing.assert_close(stop_lp[1:], alone_stop)


def test_the_bound_is_the_permutation_elbo_and_lies_above_the_exact_nll():
    """x = 2 | 0 1 0 (the answer scored, 0 twice). The exact NLL sums every action sequence
    from the context to x (then stop); the bound is E_π[−log p(actions of π)] − log n! over
    the 3! insertion orders. Σ_m E[ℓ_m] − log n! (the objective's terms, every subset of
    every size) equals it; the bound is above the NLL; `nll` estimates the bound."""
    torch.manual_seed(0)
    model = tiny()
    objective = build_objective("insertion", VOCAB, eval_samples=4)
    x = [2, 0, 1, 0]
    scored = [False, True, True, True]
    n = 3
    joints = {}

    def joint(kept):
        if kept not in joints:
            joints[kept] = reference_joint(model, [x[p] for p in kept], open_slots(kept, scored))
        return joints[kept]

    with torch.no_grad():
        exact_nll = -math.log(exact_probability(model, x[:1], x))
        # the bound by insertion orders (positions 1, 2, 3 of x)
        orders = list(itertools.permutations([1, 2, 3]))
        total = 0.0
        for order in orders:
            kept = (0,)
            for p in order:
                slot = sum(1 for q in kept if q < p)
                total -= joint(kept)[(slot, x[p])]
                kept = tuple(sorted((*kept, p)))
            total -= joint(kept)["stop"]
        bound = total / len(orders) - math.lgamma(n + 1)

        # the objective's terms over every subset of every size
        tokens = torch.tensor([x])
        mask = torch.tensor([scored])
        summed = 0.0
        for m in range(n + 1):
            subsets = list(itertools.combinations([1, 2, 3], m))
            for subset in subsets:
                dropped = torch.zeros(1, 4, dtype=torch.bool)
                dropped[0, list(subset)] = True
                drop = Drop.from_mask(tokens, mask, dropped, filler=START)
                summed += float(objective.row_losses(model, Batch(tokens, mask), drop)[0]) / len(
                    subsets
                )
        by_terms = summed - math.lgamma(n + 1)

        estimates = [objective.nll(model, Batch(tokens, mask)).nats for _ in range(200)]
    assert math.isclose(by_terms, bound, rel_tol=1e-10)
    assert bound > exact_nll > 0
    mean = sum(estimates) / len(estimates)
    spread = (sum((e - mean) ** 2 for e in estimates) / len(estimates)) ** 0.5
    assert abs(mean - bound) < 5 * spread / len(estimates) ** 0.5 + 1e-9


def test_a_tiny_model_learns_a_trivial_insertion_task_and_decodes_it():
    """The context token (3 or 4) decides the answer (0 1 2 or 2 1 0): the bound falls
    several-fold in 150 steps, and greedy insertion (the sampler at temperature 0, and
    `predict`) then writes each answer and stops."""
    torch.manual_seed(0)
    config = ModelConfig(mixer="attention", d_model=32, n_layers=2, n_heads=2, vocab_size=6)
    model = seqlab.build_model(config)
    objective = build_objective("insertion", 5, eval_samples=4)

    def batch(size):
        first = torch.randint(3, 5, (size, 1))
        answer = torch.where(first == 3, torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]))
        mask = torch.ones(size, 4, dtype=torch.bool)
        mask[:, 0] = False
        return Batch(torch.cat([first, answer], dim=1), mask)

    held_out = batch(32)

    def score():
        torch.manual_seed(1)
        return objective.nll(model, held_out).per_token

    before = score()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss, _ = objective.loss(model, batch(16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = score()
    assert after < 0.3 * before, (before, after)
    out = seqlab.generate(model, [[3], [4]], max_new_tokens=5, sampler="insertion", temperature=0)
    assert out.tokens.tolist() == [[3, 0, 1, 2], [4, 2, 1, 0]] and out.lengths.tolist() == [4, 4]
    predictions, scored = objective.predict(model, held_out)
    assert torch.equal(predictions, held_out.tokens) and torch.equal(scored, held_out.mask)
