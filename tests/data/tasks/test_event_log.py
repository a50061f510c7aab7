"""Event logs: the play-out semantics of each process-tree operator, replay of allowed next
activities, seeded generated logs, the XES/CSV readers and case splits, the Brier score, and
next-activity learning."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.base import SPLITS
from seqlab.data.tasks.event_log import (
    END,
    FIRST_ACTIVITY,
    LOG_STREAM,
    START,
    allowed_next,
    leaf,
    play_out,
    random_tree,
    read_csv,
    read_xes,
    split_cases,
    tree,
)
from seqlab.errors import ConfigError, DataError
from seqlab.objectives import build_objective
from tests.helpers import train_steps

A, B, C, D = (leaf(i) for i in range(4))


def make(**options):
    return build_task(ExperimentConfig(task=TaskConfig(name="event_log", options=options)))


def outcomes(node, draws=200, loop_prob=0.5, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(play_out(node, rng, loop_prob)) for _ in range(draws)]


def test_sequence_plays_its_children_in_order():
    assert set(outcomes(tree("sequence", A, tree("sequence", B, C), D))) == {(0, 1, 2, 3)}


def test_choice_plays_exactly_one_child():
    traces = outcomes(tree("choice", A, tree("sequence", B, C), D))
    assert set(traces) == {(0,), (1, 2), (3,)}


def test_parallel_interleaves_its_children_keeping_their_orders():
    traces = outcomes(tree("parallel", tree("sequence", A, B), tree("sequence", C, D)))
    for trace in traces:
        assert sorted(trace) == [0, 1, 2, 3]
        assert trace.index(0) < trace.index(1) and trace.index(2) < trace.index(3)
    assert len(set(traces)) == 6  # all C(4, 2) interleavings occur


def test_loop_repeats_redo_then_do_with_the_repeat_probability():
    node = tree("loop", tree("sequence", A, B), C)
    assert set(outcomes(node, loop_prob=0.0)) == {(0, 1)}
    repeats = []
    for trace in outcomes(node, draws=400, loop_prob=0.5):
        k = (len(trace) - 2) // 3
        assert trace == (0, 1) + (2, 0, 1) * k
        repeats.append(k)
    assert 0.7 < np.mean(repeats) < 1.3  # geometric: p / (1 − p) = 1


def test_allowed_next_replays_each_operator():
    node = tree("sequence", A, tree("parallel", B, C), tree("loop", D, leaf(4)), leaf(5))
    allowed = allowed_next(node, [0, 2, 1, 3, 4, 3, 5])
    assert allowed == [{0}, {1, 2}, {1}, {3}, {4, 5}, {3}, {4, 5}, {-1}]
    choice = tree("choice", tree("sequence", A, B), C)
    assert allowed_next(choice, [0, 1]) == [{0, 2}, {1}, {-1}]
    assert allowed_next(choice, [2]) == [{0, 2}, {-1}]
    with pytest.raises(ValueError, match="not enabled"):
        allowed_next(choice, [1])


def test_random_trees_hold_every_activity_once_and_every_play_out_replays():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        node = random_tree(rng, 9, max_depth=3, branching=3)
        assert node.leaves == set(range(9))
        for _ in range(20):
            trace = play_out(node, rng, 0.3)
            assert -1 in allowed_next(node, trace)[-1]  # replays to an end


def test_generated_logs_are_seeded_and_splits_come_from_disjoint_streams():
    first, again = make(num_traces=40, eval_traces=30), make(num_traces=40, eval_traces=30)
    assert first.traces == again.traces and str(first.tree) == str(again.tree)
    other = make(num_traces=40, eval_traces=30, log_seed=1)
    assert other.traces != first.traces
    assert len(first.traces["train"]) == 40 and len(first.traces["test"]) == 30
    streams = {s: np.random.default_rng([LOG_STREAM, 0, 1 + i]) for i, s in enumerate(SPLITS)}
    for split, traces in first.traces.items():  # each split played out from its own stream
        assert traces == [first.draw(streams[split], 0.3) for _ in traces]
    # and no split's traces repeat another's at any offset (a shared or shifted stream would):
    # this process has few variants, so single traces do coincide, but not most of a window
    for one, other in [("validation", "test"), ("validation", "train"), ("test", "train")]:
        a, b = first.traces[one], first.traces[other]
        for offset in range(len(b) - len(a) + 1):
            same = sum(x == y for x, y in zip(a, b[offset : offset + len(a)], strict=True))
            assert same < len(a) / 2, (one, other, offset)
    batch = first.batch("train", 3, 4, seed=7)
    assert torch.equal(batch.tokens, again.batch("train", 3, 4, seed=7).tokens)
    assert not torch.equal(batch.tokens, first.batch("train", 4, 4, seed=7).tokens)
    halves = [first.batch("train", 3, 2, seed=7, rank=r, world_size=2).tokens for r in (0, 1)]
    assert torch.equal(torch.cat([h[:, : batch.tokens.shape[1]] for h in halves]), batch.tokens)


def test_rows_are_start_trace_end_with_every_position_after_start_scored():
    task = make(num_traces=20, eval_traces=10)
    tokens, mask = task.eval_rows("test", None)
    for row, trace in enumerate(task.traces["test"]):
        n = len(trace)
        assert tokens[row, : n + 2].tolist() == [START, *(FIRST_ACTIVITY + a for a in trace), END]
        assert mask[row].tolist() == [False] + [True] * (n + 1) + [False] * (len(mask[row]) - n - 2)
    assert task.seq_len == 2 + max(len(t) for s in task.traces.values() for t in s)


XES = """<?xml version="1.0" encoding="UTF-8"?>
<log xes.version="1.0" xmlns="http://www.xes-standard.org/">
  <global scope="event"><string key="concept:name" value="__INVALID__"/></global>
  <trace>
    <string key="concept:name" value="c1"/>
    <event><string key="concept:name" value="register"/>
      <date key="time:timestamp" value="2020-01-01T10:00:00.000+01:00"/></event>
    <event><string key="concept:name" value="pay"/>
      <date key="time:timestamp" value="2020-01-01T12:00:00.000+01:00"/></event>
    <event><string key="concept:name" value="check"/>
      <date key="time:timestamp" value="2020-01-01T11:00:00.000+01:00"/></event>
    <event><string key="concept:name" value="notify"/></event>
  </trace>
  <trace>
    <string key="concept:name" value="c2"/>
    <event><string key="concept:name" value="b"/></event>
    <event><string key="concept:name" value="a"/></event>
  </trace>
</log>
"""


def test_xes_orders_events_by_timestamp_and_keeps_untimed_ones_after_their_predecessor(
    tmp_path,
):
    path = tmp_path / "log.xes"
    path.write_text(XES)
    first, second = read_xes(path)
    # notify has no timestamp and follows check (11:00) in the file, so it stays after check
    assert first.name == "c1" and first.activities == ["register", "check", "notify", "pay"]
    assert first.start == datetime(2020, 1, 1, 9, tzinfo=timezone.utc)  # 10:00+01:00
    assert second.name == "c2" and second.activities == ["b", "a"] and second.start is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<log><trace><event>", "not well-formed XML"),
        ("<html><body/></html>", "root element is <html>"),
        ("<log><trace><event><int key='x' value='1'/></event></trace></log>", "no concept:name"),
        ("<log></log>", "no trace with events"),
    ],
)
def test_malformed_xes_is_a_data_error_naming_what_was_expected(tmp_path, text, fragment):
    path = tmp_path / "bad.xes"
    path.write_text(text)
    with pytest.raises(DataError, match=fragment):
        read_xes(path)


CSV = """id,act,time
1,a,2020-01-02T00:00:00
2,x,2020-01-01T00:00:00
1,c,2020-01-02T02:00:00
1,b,2020-01-02T01:00:00
2,y,
"""


def test_csv_groups_rows_by_case_and_orders_them_by_timestamp(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(CSV)
    one, two = read_csv(path, "id", "act", "time")
    assert (one.name, one.activities) == ("1", ["a", "b", "c"])
    assert (two.name, two.activities) == ("2", ["x", "y"])
    assert two.start < one.start
    assert read_csv(path, "id", "act", None)[0].activities == ["a", "c", "b"]  # file order
    with pytest.raises(DataError, match=r"no column\(s\) \['case'\]; expected a header"):
        read_csv(path, "case", "act", "time")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,act,time\n1,a,yesterday\n")
    with pytest.raises(DataError, match="line 2: timestamp 'yesterday' is not ISO 8601"):
        read_csv(bad, "id", "act", "time")


def write_log(path, cases):
    """A CSV log of `cases` (activity strings), case i starting on day i."""
    rows = ["case,activity,timestamp"]
    for i, activities in enumerate(cases):
        rows += [
            f"c{i},{a},2020-01-{1 + i % 28:02d}T{j:02d}:00:00" for j, a in enumerate(activities)
        ]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_user_logs_split_by_case_chronologically_or_at_random(tmp_path):
    path = write_log(tmp_path / "log.csv", [["a", "b"]] * 20)
    task = make(path=path)
    assert task.cases == {
        "train": [f"c{i}" for i in range(14)],
        "validation": ["c14", "c15"],
        "test": [f"c{i}" for i in range(16, 20)],
    }
    shuffled = make(path=path, split="random", log_seed=3)
    parts = [set(shuffled.cases[s]) for s in ("train", "validation", "test")]
    assert sum(map(len, parts)) == 20 and set().union(*parts) == {f"c{i}" for i in range(20)}
    assert shuffled.cases != task.cases
    assert make(path=path, split="random", log_seed=3).cases == shuffled.cases
    assert task.activities == ["a", "b"] and task.vocab_size == FIRST_ACTIVITY + 2
    cases = read_csv(path, "case", "activity", None)
    with pytest.raises(DataError, match="needs a timestamp in every case; case 'c0'"):
        split_cases(cases, "chronological", (0.1, 0.2), 0)
    with pytest.raises(DataError, match="leaves a split empty"):
        split_cases(cases[:3], "random", (0.1, 0.2), 0)
    with pytest.raises(ConfigError, match="split must be one of chronological, strict, random"):
        make(path=path, split="by_time")


def test_a_strict_split_drops_training_events_after_the_first_test_case_starts(tmp_path):
    # ten cases, case i starting on day 1 + i; c0 runs on past the test cases' starts
    rows = ["case,activity,timestamp", "c0,a,2020-01-01T00:00", "c0,b,2020-01-09T00:00"]
    rows += ["c0,c,2020-01-20T00:00", "c1,x,2020-01-02T00:00", "c1,y,2020-01-09T00:01"]
    rows += [f"c{i},a,2020-01-{1 + i:02d}T00:00" for i in range(2, 10)]
    rows += ["c7,b,2020-01-25T00:00", "c9,d,2020-01-30T00:00"]  # validation and test run on
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    cases = read_csv(path, "case", "activity", "timestamp")
    loose = split_cases(cases, "chronological", (0.1, 0.2), 0)
    strict = split_cases(cases, "strict", (0.1, 0.2), 0)
    assert [c.name for c in loose["test"]] == ["c8", "c9"]  # the first starts on day 9
    assert [c.activities for c in loose["train"][:2]] == [["a", "b", "c"], ["x", "y"]]
    # an event at the cutoff stays, those after it go; the case start stays
    assert [c.activities for c in strict["train"][:2]] == [["a", "b"], ["x"]]
    assert strict["train"][0].start == loose["train"][0].start
    assert [c.name for c in strict["train"]] == [c.name for c in loose["train"]]
    cutoff = datetime(2020, 1, 9, tzinfo=timezone.utc)
    assert max(t for c in strict["train"] for t in c.times) == cutoff
    assert strict["validation"] == loose["validation"] and strict["test"] == loose["test"]
    task = make(path=str(path), split="strict")
    assert task.traces["train"][0] == [task.activities.index(a) for a in ("a", "b")]
    assert make(path=str(path)).traces["train"][0] == [
        task.activities.index(a) for a in ("a", "b", "c")
    ]


def test_a_non_utf8_csv_is_a_data_error_and_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbfcase,activity\n1,a\n")
    assert read_csv(path, "case", "activity", None)[0].activities == ["a"]
    path.write_bytes("case,activity\n1,Prüfung\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"log.csv: not UTF-8 text \(invalid start byte\)"):
        read_csv(path, "case", "activity", None)


class Fixed(torch.nn.Module):
    """A 'model' predicting the same next-token distribution everywhere."""

    device = torch.device("cpu")

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.tensor(probs, dtype=torch.float64).log()

    def forward(self, tokens, layout=None):
        return self.logits.expand(*tokens.shape, -1).clone(), None


def test_brier_score_by_hand(tmp_path):
    # every case is "a": each test trace scores a then END
    task = make(path=write_log(tmp_path / "log.csv", [["a"]] * 10))
    model = Fixed([0.1, 0.2, 0.4, 0.3])  # PAD, START, END, a
    metrics = task.evaluate(model, build_objective("ar"), split="test")
    # over the outcomes END and a only (PAD and START are never targets), renormalised
    end, a = 0.4 / 0.7, 0.3 / 0.7
    by_hand = (((a - 1) ** 2 + end**2) + (a**2 + (end - 1) ** 2)) / 2  # targets a, END
    assert metrics["brier"] == pytest.approx(by_hand, rel=1e-9)
    assert metrics["nll"] == pytest.approx(-(math.log(0.3) + math.log(0.4)) / 2, rel=1e-6)
    assert metrics["accuracy"] == 0.5  # END is the argmax: right at the end only
    assert "allowed_rate" not in metrics


def test_an_untrained_model_is_near_chance():
    task = make(num_traces=50, eval_traces=40)
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layers=1, n_heads=2, vocab_size=task.vocab_size)
    model = seqlab.build_model(config)
    metrics = task.evaluate(model, build_objective("ar"), split="test")
    assert abs(metrics["nll"] - math.log(task.vocab_size)) < 0.5
    outcomes = len(task.activities) + 1  # the activities and END
    assert abs(metrics["brier"] - (1 - 1 / outcomes)) < 0.03
    assert metrics["accuracy"] < 0.5 and 0 <= metrics["allowed_rate"] <= 1


def test_a_tiny_model_learns_a_sequential_process(tmp_path):
    task = make(path=write_log(tmp_path / "log.csv", [list("abcdef")] * 30))
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_layers=1, n_heads=2, vocab_size=task.vocab_size)
    model = seqlab.build_model(config)
    objective = build_objective("ar")
    objective.bind(task.vocab_size)
    train_steps(model, objective, task, steps=60, batch_size=8, lr=1e-2)
    metrics = task.evaluate(model, objective, split="test")
    assert metrics["accuracy"] > 0.9 and metrics["brier"] < 0.2


def test_options_and_objectives_are_checked():
    with pytest.raises(ConfigError, match="loop_prob must lie in"):
        make(loop_prob=1.0)
    with pytest.raises(ConfigError, match="path must end in .xes or .csv"):
        make(path="log.json")
    with pytest.raises(ConfigError, match="needs a left-to-right objective"):
        make(num_traces=5, eval_traces=5).check_objective(build_objective("masked_diffusion"))
