"""RegBench: every string follows its automaton, languages are disjoint across splits, and
`dfa_valid` counts predictions with an edge from the current state."""

import numpy as np
import pytest
import torch

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.regbench import canonical_form
from seqlab.objectives import build_objective
from seqlab.objectives.ar import Autoregressive

SEP = 1


def make(**options):
    options.setdefault("eval_examples", 24)
    return build_task(ExperimentConfig(task=TaskConfig(name="regbench", options=options)))


def check_example(task, tokens, mask, automaton):
    """Walk the row through the automaton: each symbol needs an edge from the current state
    (reset to 0 after every separator), scored positions start after the first string."""
    table = automaton.table
    k = len(table)
    assert task.states_range[0] <= k <= task.states_range[1]
    alphabet = np.flatnonzero((table >= 0).any(axis=0))
    assert len(alphabet) <= k
    degrees = (table >= 0).sum(axis=1)
    assert degrees.min() >= 1 and degrees.max() <= min(task.max_out_edges, k)
    state = 0
    length = 0
    for i, token in enumerate(tokens.tolist()):
        if token == SEP:
            assert automaton.states[i] == -1 and 1 <= length <= task.max_string_len
            state, length = 0, 0
            continue
        assert automaton.states[i] == state
        assert table[state, token - 2] >= 0, "the symbol is a transition of the automaton"
        state = int(table[state, token - 2])
        length += 1
    first = tokens.tolist().index(SEP)
    assert np.flatnonzero(mask).tolist() == list(range(first + 1, len(tokens)))


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluation_examples_follow_their_automata(split):
    task = make()
    assert task.vocab_size == 22 and task.seq_len == 257
    data = task.eval_set(split)
    for tokens, mask, automaton in zip(data.tokens, data.mask, data.infos, strict=True):
        check_example(task, tokens.numpy(), mask.numpy(), automaton)


def test_training_batches_are_the_examples_that_follow_their_automata():
    task = make(seq_len=64, max_string_len=10)
    examples = task.examples(np.random.default_rng([4, 0, 7]), "train", 16)
    tokens, mask = task.pad(examples)
    batch = task.batch("train", 7, 16, seed=4)
    assert torch.equal(batch.tokens, tokens) and torch.equal(batch.mask, mask)
    for example in examples:
        check_example(task, example.tokens, example.scored, example.info)


def test_no_evaluation_language_is_ever_trained_on():
    task = make(min_states=2, max_states=3, num_symbols=3, max_out_edges=2, eval_examples=40)
    rng = np.random.default_rng(0)
    train = {canonical_form(e.info.table) for e in task.examples(rng, "train", 600)}
    for split in ("validation", "test"):
        evaluation = {canonical_form(a.table) for a in task.eval_set(split).infos}
        assert evaluation and not evaluation & train
    # the space is small: without the partition the splits would share languages
    plain = [canonical_form(task.automaton(rng)) for _ in range(600)]
    assert len(set(plain)) < 300


def test_canonical_form_identifies_languages():
    # symbols a, b, c are columns 0, 1, 2; -1 is no edge
    alternating = canonical_form(np.array([[1, -1, -1], [-1, 0, -1]]))  # (ab)* prefixes
    unreachable = np.array([[2, -1, -1], [0, 0, 0], [-1, 0, -1]])  # relabelled, state 1 junk
    unrolled = np.array([[1, -1, -1], [-1, 2, -1], [3, -1, -1], [-1, 0, -1]])  # abab cycle
    assert canonical_form(unreachable) == alternating
    assert canonical_form(unrolled) == alternating
    assert canonical_form(np.array([[1, -1, -1], [-1, 1, -1]])) != alternating  # a b*
    assert canonical_form(np.array([[1, -1, -1], [-1, -1, 0]])) != alternating  # (ac)*


class Oracle(Autoregressive):
    """Predicts `answer(batch)` at every scored position."""

    def __init__(self, answer):
        self.answer = answer

    def predict(self, model, batch):
        predictions, scored = super().predict(model, batch)
        return self.answer(batch), scored


def test_dfa_valid_counts_predictions_with_an_edge_from_the_current_state():
    task = make(seq_len=48, max_string_len=8, eval_examples=8)
    model = seqlab.build_model(ModelConfig(d_model=16, n_layers=1, n_heads=2, vocab_size=22))
    truth = task.evaluate(model, Oracle(lambda b: b.tokens), split="test", batch_size=3)
    assert truth["dfa_valid"] == 1.0 and truth["accuracy"] == 1.0
    separators = task.evaluate(
        model, Oracle(lambda b: torch.full_like(b.tokens, SEP)), split="test"
    )
    assert separators["dfa_valid"] == 0.0

    guesses = {}  # eval row -> a valid symbol from each state (often not the true one)
    data = task.eval_set("test")
    for tokens, automaton in zip(data.tokens, data.infos, strict=True):
        guess = tokens.clone()
        for i, state in enumerate(automaton.states.tolist()):
            if state >= 0:
                guess[i] = 2 + int(np.flatnonzero(automaton.table[state] >= 0)[0])
        guesses[tokens.numpy().tobytes()] = guess

    def first_edge(batch):
        return torch.stack([guesses[row.numpy().tobytes()] for row in batch.tokens])

    valid_guess = task.evaluate(model, Oracle(first_edge), split="test")
    assert valid_guess["dfa_valid"] == 1.0 and valid_guess["accuracy"] < 1.0
    metrics = task.evaluate(model, build_objective("ar"), split="validation")
    assert 0 <= metrics["dfa_valid"] <= 1 and metrics["nll"] > 0
