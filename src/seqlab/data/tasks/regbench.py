"""RegBench (Akyürek et al., "In-Context Language Learning"): strings of a random automaton."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from seqlab.data.tasks.synthetic import Example, SyntheticTask, check
from seqlab.registry import TASKS

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

SEP = 1
FIRST_SYMBOL = 2


@dataclass
class Automaton:
    """A partial DFA and where an example visits it: ``table[state, symbol]`` is the next state
    or -1, and ``states[i]`` the state token i was emitted from (-1 for separators)."""

    table: np.ndarray
    states: np.ndarray


def canonical_form(table: np.ndarray) -> bytes:
    """Bytes identifying the language of `table` (start state 0, every state accepting).

    The automaton is minimised (Moore refinement: states merge when their symbol sets and
    successors' classes agree, a missing transition acting as a rejecting sink), and the
    classes reachable from the start are numbered in breadth-first order over symbols, so
    two tables give the same bytes exactly when they generate the same language.
    """
    successor = table.tolist()
    classes = [0] * len(successor)
    count = 1
    while True:
        signatures: dict[tuple[int, ...], int] = {}
        classes = [
            signatures.setdefault(
                (classes[s], *(classes[t] if t >= 0 else -1 for t in row)), len(signatures)
            )
            for s, row in enumerate(successor)
        ]
        if len(signatures) == count:
            break
        count = len(signatures)
    representative = {c: s for s, c in enumerate(classes)}
    number = {classes[0]: 0}
    order = [classes[0]]
    rows = []
    for c in order:
        row = []
        for target in successor[representative[c]]:
            if target >= 0 and classes[target] not in number:
                number[classes[target]] = len(number)
                order.append(classes[target])
            row.append(number[classes[target]] if target >= 0 else -1)
        rows.append(row)
    return np.array(rows, dtype=np.int32).tobytes()


@TASKS.register("regbench")
class RegBench(SyntheticTask):
    """In-context language learning (RegBench): continue strings of a random DFA.

    In-context language learning (Akyürek et al., RegBench).

    Each example samples a probabilistic finite automaton: k states (uniform in
    ``min_states .. max_states``), an alphabet of k symbols drawn from ``num_symbols``, and
    per state 1 .. min(``max_out_edges``, k) outgoing edges on distinct alphabet symbols to
    uniform random states. Strings are random walks from state 0, each edge equally likely,
    with lengths uniform in ``1 .. max_string_len``; they are joined by SEP until the row of
    ``seq_len + 1`` tokens is full (``seq_len`` is the model's input length; the last string
    is cut). Every prediction after the first string is scored.

    Ids: 0 PAD (unused: rows are full), 1 SEP ``|``, symbols ``2 .. num_symbols + 1``.

    Example (``seq_len=16``; three states with edges 0 -a-> 1, 1 -b-> 0, 1 -c-> 2, 2 -a-> 1;
    a=2, b=3, c=4; scored tokens in brackets)::

        a b a | [a] [c] [a] [b] [|] [a] [b] [|] [a] [c] [a] [c] [|]

    `evaluate` adds ``dfa_valid``: over scored targets that are symbols (separators are
    excluded: string lengths do not depend on the automaton), the fraction where the model's
    argmax prediction is a symbol with an edge from the state the true prefix reached.
    Disjointness is by language: an example's partition key is the canonical form of its
    minimised automaton, so no language of the validation or test sets is ever trained on.
    """

    def __init__(
        self,
        seq_len: int = 256,
        num_symbols: int = 20,
        min_states: int = 4,
        max_states: int = 12,
        max_out_edges: int = 4,
        max_string_len: int = 20,
        eval_examples: int = 512,
    ) -> None:
        check(
            all(isinstance(v, int) for v in (num_symbols, min_states, max_states))
            and 1 <= min_states <= max_states <= num_symbols,
            f"regbench: need integers 1 <= min_states <= max_states <= num_symbols (each "
            f"automaton uses as many symbols as states), got min_states={min_states!r} "
            f"max_states={max_states!r} num_symbols={num_symbols!r}",
        )
        check(
            isinstance(max_out_edges, int) and max_out_edges >= 1,
            f"regbench: max_out_edges must be a positive integer, got {max_out_edges!r}",
        )
        check(
            isinstance(max_string_len, int)
            and isinstance(seq_len, int)
            and max_string_len >= 1
            and 2 * max_string_len <= seq_len,
            f"regbench: need integers 1 <= max_string_len <= seq_len / 2 so a row holds more "
            f"than one string, got max_string_len={max_string_len!r} seq_len={seq_len!r}",
        )
        self.num_symbols = num_symbols
        self.states_range = (min_states, max_states)
        self.max_out_edges = max_out_edges
        self.max_string_len = max_string_len
        self.vocab_size = FIRST_SYMBOL + num_symbols
        self.seq_len = seq_len + 1
        super().__init__(eval_examples=eval_examples)

    def automaton(self, rng: np.random.Generator) -> np.ndarray:
        """A random transition table ``[states, num_symbols]`` (-1: no edge)."""
        k = int(rng.integers(self.states_range[0], self.states_range[1] + 1))
        alphabet = rng.permutation(self.num_symbols)[:k]
        edges = rng.integers(1, min(self.max_out_edges, k) + 1, size=k)
        symbols = alphabet[np.argsort(rng.random((k, k)), axis=1)]
        targets = rng.integers(0, k, size=(k, k))
        chosen = np.arange(k) < edges[:, None]
        table = np.full((k, self.num_symbols), -1, dtype=np.int64)
        table[np.nonzero(chosen)[0], symbols[chosen]] = targets[chosen]
        return table

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        def draw() -> tuple[bytes, tuple[bytes, np.ndarray]]:
            table = self.automaton(rng)
            key = canonical_form(table)
            return key, (key, table)

        key, table = self.first_in_split(split, draw)
        successor = table.tolist()
        edges = [np.flatnonzero(row >= 0).tolist() for row in table]
        tokens: list[int] = []
        states: list[int] = []
        while len(tokens) < self.seq_len:
            state = 0
            for u in rng.random(int(rng.integers(1, self.max_string_len + 1))).tolist():
                symbol = edges[state][int(u * len(edges[state]))]
                tokens.append(FIRST_SYMBOL + symbol)
                states.append(state)
                state = successor[state][symbol]
            tokens.append(SEP)
            states.append(-1)
        tokens, states = tokens[: self.seq_len], states[: self.seq_len]
        scored = np.zeros(self.seq_len, dtype=bool)
        scored[tokens.index(SEP) + 1 :] = True
        return Example(tokens, scored, info=Automaton(table, np.array(states)), key=key)

    def evaluate(
        self,
        model: Model,
        objective: Objective,
        *,
        split: str = "validation",
        batch_size: int = 16,
        max_tokens: int | None = None,
    ) -> dict[str, float]:
        metrics = super().evaluate(
            model, objective, split=split, batch_size=batch_size, max_tokens=max_tokens
        )
        result = self.eval_predictions(
            model, objective, split=split, batch_size=batch_size, max_tokens=max_tokens
        )
        valid = total = 0
        for row, automaton in enumerate(result.infos):
            where = result.scored[row].numpy() & (automaton.states >= 0)
            symbols = result.predictions[row].numpy()[where] - FIRST_SYMBOL
            is_symbol = (symbols >= 0) & (symbols < self.num_symbols)
            states = automaton.states[where]
            has_edge = automaton.table[states[is_symbol], symbols[is_symbol]] >= 0
            valid += int(has_edge.sum())
            total += int(where.sum())
        metrics["dfa_valid"] = valid / max(total, 1)
        return metrics
