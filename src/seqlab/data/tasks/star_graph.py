"""The path-star graph task (Bachmann & Nagarajan, 2024, "The pitfalls of next-token
prediction"), the planning task of the ILM paper (Patel et al., 2025)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqlab.data.tasks.synthetic import Example, SyntheticTask, check
from seqlab.errors import DataError
from seqlab.registry import TASKS

QUERY = 1
ANSWER = 2
FIRST_NODE = 3


@dataclass
class StarGraph:
    """One example read back from its tokens: directed `edges` (u, v), the `source`, the
    `goal` and the `path` after the answer marker (node labels, not ids)."""

    edges: list[tuple[int, int]]
    source: int
    goal: int
    path: list[int]

    def path_is_valid(self) -> bool:
        """Whether `path` walks listed edges from the source to the goal."""
        steps = set(self.edges)
        return (
            bool(self.path)
            and self.path[0] == self.source
            and self.path[-1] == self.goal
            and all((u, v) in steps for u, v in zip(self.path, self.path[1:], strict=False))
        )


def parse(tokens: list[int]) -> StarGraph:
    """Read a row ``u v u v … QUERY source goal ANSWER path…`` back (PAD-free ids); a
    DataError if it does not have that shape."""
    try:
        query, answer = tokens.index(QUERY), tokens.index(ANSWER)
    except ValueError as error:
        raise DataError(f"star_graph row without its QUERY and ANSWER markers: {tokens}") from error
    nodes = [t - FIRST_NODE for t in tokens]
    labels = tokens[:query] + tokens[query + 1 : answer] + tokens[answer + 1 :]
    if query % 2 or answer != query + 3 or min(labels, default=0) < FIRST_NODE:
        raise DataError(f"star_graph row is not 'edges QUERY source goal ANSWER path': {tokens}")
    edges = [(nodes[i], nodes[i + 1]) for i in range(0, query, 2)]
    return StarGraph(edges, nodes[query + 1], nodes[query + 2], nodes[answer + 1 :])


@TASKS.register("star_graph")
class StarGraphTask(SyntheticTask):
    """Path-star graphs: find the path from the centre to a goal leaf; the exact match of
    the generated path (`generated_exact_match`) is the metric of record: AR's `predict` is
    teacher-forced, so its `exact_match` is not. `generate_eval` defaults to None: scored
    whenever the objective generates (`Objective.generates`); true requires it.

    A graph has `degree` arms, each a path of `path_length` nodes counting the shared centre
    (the start), with distinct node labels drawn from ``0 .. num_nodes - 1``. A row lists its
    directed edges (u, v), pointing away from the start, in a random order, then the query
    (start, goal: the far end of one arm) and the answer, the arm's nodes from start to goal,
    which is scored. Next-token prediction is known to fail here: teacher forcing lets a
    model copy each next node from the edge list (Clever Hans) without learning to plan the
    first step, which only the goal decides.

    Ids: 0 PAD (unused: rows have one length), 1 QUERY, 2 ANSWER, node v -> 3 + v. Rows hold
    ``2 · degree · (path_length − 1) + 4 + path_length`` tokens. The held-out partition is
    decided on the graph (its sorted edges, start and goal), not on the edge order, so no
    evaluation graph is seen in training in another order. Test rows follow the training
    distribution (held-out graphs).

    Example (``degree=2, path_length=3``; scored tokens in brackets)::

        0 5  7 2  0 7  5 4  QUERY 0 2  ANSWER [0] [7] [2]
    """

    metric_of_record = "generated_exact_match"

    def __init__(
        self,
        degree: int = 3,
        path_length: int = 5,
        num_nodes: int = 20,
        eval_examples: int = 512,
        generate_eval: bool | None = None,
    ) -> None:
        check(
            all(isinstance(v, int) and not isinstance(v, bool) for v in (degree, path_length))
            and degree >= 2
            and path_length >= 2,
            f"star_graph: need integers degree >= 2 and path_length >= 2, got "
            f"degree={degree!r} path_length={path_length!r}",
        )
        needed = degree * (path_length - 1) + 1
        check(
            isinstance(num_nodes, int) and not isinstance(num_nodes, bool) and num_nodes >= needed,
            f"star_graph: num_nodes must be an integer >= degree * (path_length - 1) + 1 = "
            f"{needed} (distinct labels), got {num_nodes!r}",
        )
        check(
            generate_eval is None or isinstance(generate_eval, bool),
            f"star_graph: generate_eval must be true, false or null, got {generate_eval!r}",
        )
        self.degree, self.path_length, self.num_nodes = degree, path_length, num_nodes
        self.generate_eval = generate_eval
        self.vocab_size = FIRST_NODE + num_nodes
        self.seq_len = 2 * degree * (path_length - 1) + 4 + path_length
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        arm = self.path_length - 1
        labels = rng.permutation(self.num_nodes)[: self.degree * arm + 1]
        start, arms = labels[0], labels[1:].reshape(self.degree, arm)
        chains = np.concatenate([np.full((self.degree, 1), start), arms], axis=1)
        edges = np.stack([chains[:, :-1], chains[:, 1:]], axis=-1).reshape(-1, 2)
        goal, path = arms[0, -1], chains[0]
        shuffled = edges[rng.permutation(len(edges))]
        tokens = np.concatenate(
            [
                FIRST_NODE + shuffled.reshape(-1),
                [QUERY, FIRST_NODE + start, FIRST_NODE + goal, ANSWER],
                FIRST_NODE + path,
            ]
        )
        scored = np.zeros(len(tokens), dtype=bool)
        scored[-self.path_length :] = True
        canonical = edges[np.lexsort((edges[:, 1], edges[:, 0]))]
        key = np.concatenate([canonical.reshape(-1), [start, goal]]).astype(np.int64).tobytes()
        return Example(tokens, scored, key=key)
