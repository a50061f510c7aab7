"""star_graph: every answer is the path from the start to the goal in the listed edges."""

import pytest
import torch

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.star_graph import ANSWER, QUERY, parse
from seqlab.errors import ConfigError, DataError


def make(**options):
    options.setdefault("eval_examples", 32)
    return build_task(ExperimentConfig(task=TaskConfig(name="star_graph", options=options)))


def rows(task, split):
    if split == "train":
        batches = [task.batch("train", step, 32, seed=0) for step in range(3)]
    else:
        batches = list(task.eval_batches(split, 32))
    return [
        (t.tolist(), m.tolist()) for b in batches for t, m in zip(b.tokens, b.mask, strict=True)
    ]


def canonical(graph):
    return (tuple(sorted(graph.edges)), graph.source, graph.goal)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
@pytest.mark.parametrize("degree, path_length, num_nodes", [(3, 5, 20), (2, 2, 5), (5, 4, 40)])
def test_every_answer_is_the_path_from_start_to_goal(split, degree, path_length, num_nodes):
    task = make(degree=degree, path_length=path_length, num_nodes=num_nodes)
    width = 2 * degree * (path_length - 1) + 4 + path_length
    assert task.seq_len == width and task.vocab_size == 3 + num_nodes
    for tokens, mask in rows(task, split):
        graph = parse(tokens)
        assert len(tokens) == width and graph.path_is_valid()
        assert len(graph.path) == path_length and len(graph.edges) == degree * (path_length - 1)
        nodes = {u for e in graph.edges for u in e}
        assert len(nodes) == degree * (path_length - 1) + 1 and max(nodes) < num_nodes
        assert sum(u == graph.source for u, _ in graph.edges) == degree  # the centre
        assert all(sum(u == v for u, _ in graph.edges) <= 1 for v in nodes - {graph.source})
        assert mask == [False] * (width - path_length) + [True] * path_length


def test_a_wrong_path_is_rejected_by_the_parser_check():
    tokens, _ = rows(make(), "validation")[0]
    graph = parse(tokens)
    other = next(v for u, v in graph.edges if u == graph.source and v != graph.path[1])
    detour = [graph.source, other, *graph.path[2:]]
    wrong = parse(tokens[: -len(graph.path)] + [3 + n for n in detour])
    assert not wrong.path_is_valid()
    with pytest.raises(DataError):
        parse([5, 6, QUERY, 5, 6, 7, ANSWER, 5])


def test_batches_are_seeded_and_evaluation_graphs_are_held_out():
    task = make(degree=2, path_length=3, num_nodes=8)
    again = make(degree=2, path_length=3, num_nodes=8)
    first = task.batch("train", 5, 16, seed=1)
    assert torch.equal(first.tokens, again.batch("train", 5, 16, seed=1).tokens)
    assert not torch.equal(first.tokens, task.batch("train", 5, 16, seed=2).tokens)
    train = {canonical(parse(t)) for t, _ in rows(task, "train")}
    held = {canonical(parse(t)) for split in ("validation", "test") for t, _ in rows(task, split)}
    assert len(train) > 50 and held and not train & held


@pytest.mark.parametrize(
    "options, match",
    [
        ({"degree": 1}, "degree >= 2"),
        ({"path_length": 1}, "path_length >= 2"),
        ({"degree": True}, "degree"),
        ({"degree": 3, "path_length": 5, "num_nodes": 12}, "num_nodes must be"),
        ({"num_nodes": 20.5}, "num_nodes"),
        ({"eval_examples": 0}, "eval_examples"),
    ],
)
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make(**options)
