"""Business-process event logs: next-activity prediction on traces of a random process tree
or of a user's XES/CSV log (as in Tax, Teinemaa and van Zelst's interdisciplinary comparison
of sequence models for next-element prediction).

**Process trees.** A tree's leaves are activities (each activity at most once) and its inner
nodes operators over their children, played out (`play_out`) as:

* sequence ``→(c1, .., cn)``: the children's traces one after the other;
* exclusive choice ``×(c1, .., cn)``: the trace of one child, chosen uniformly;
* parallel ``∧(c1, .., cn)``: an interleaving of the children's traces, uniform over all
  interleavings (each child's own order is kept);
* loop ``⟲(do, redo)``: ``do``, then with probability `loop_prob` ``redo`` and ``do`` again,
  repeated until the draw fails (``do (redo do)^k`` with k geometric).

`random_tree` grows a seeded tree over `num_activities` activities: the shuffled activities
are cut into 2 .. `branching` contiguous parts (2 for a loop) under a random operator, down to
`max_depth` operator levels, where a node with several activities left takes them all as
leaves of a sequence, choice or parallel.

**Replay.** With unique activity labels and no silent steps the state a prefix reaches is
unique, so `allowed_next` gives the activities the model allows after any prefix (and whether
the trace may end there); the task reports ``allowed_rate``, the fraction of predictions the
model allows, on generated logs.
"""

from __future__ import annotations

import csv
import gzip
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from seqlab.data.tasks.base import SPLITS, Task, capped_rows, check_batch_request, eval_slices
from seqlab.data.tasks.synthetic import PAD, _split_index, check
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.ar import Autoregressive
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS
from seqlab.sampling.base import eval_mode

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

START, END = 1, 2
FIRST_ACTIVITY = 3
LOG_STREAM = 0xE7_E17
OPERATORS = ("sequence", "choice", "parallel", "loop")
OPERATOR_WEIGHTS = (0.4, 0.25, 0.2, 0.15)
SYMBOLS = {"sequence": "→", "choice": "×", "parallel": "∧", "loop": "⟲"}
MAX_DRAWS = 1000
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
SPLIT_KINDS = ("chronological", "strict", "random")


@dataclass(eq=False)
class Node:
    """A process tree: an `activity` leaf (an int, children empty) or an `operator` (one of
    `OPERATORS`) over `children` (a loop has exactly two: do, redo)."""

    operator: str | None = None
    children: tuple[Node, ...] = ()
    activity: int | None = None
    leaves: frozenset[int] = field(init=False)
    first: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.operator is None:
            if self.activity is None or self.children:
                raise ValueError("a leaf has an activity and no children")
            self.leaves = self.first = frozenset([self.activity])
            return
        if self.operator not in OPERATORS or len(self.children) < 1:
            raise ValueError(f"an operator is one of {OPERATORS} over children")
        if self.operator == "loop" and len(self.children) != 2:
            raise ValueError("a loop has two children: do, redo")
        self.leaves = frozenset().union(*(c.leaves for c in self.children))
        if len(self.leaves) != sum(len(c.leaves) for c in self.children):
            raise ValueError("every activity appears at most once in a tree")
        starters = self.children[:1] if self.operator in ("sequence", "loop") else self.children
        self.first = frozenset().union(*(c.first for c in starters))

    def __str__(self) -> str:
        if self.operator is None:
            return str(self.activity)
        return f"{SYMBOLS[self.operator]}({', '.join(str(c) for c in self.children)})"


def leaf(activity: int) -> Node:
    return Node(activity=activity)


def tree(operator: str, *children: Node) -> Node:
    return Node(operator, tuple(children))


def random_tree(
    rng: np.random.Generator, num_activities: int, max_depth: int, branching: int
) -> Node:
    """A random tree over activities ``0 .. num_activities − 1`` (module docstring)."""

    def grow(activities: list[int], depth: int) -> Node:
        if len(activities) == 1:
            return leaf(activities[0])
        if depth == max_depth:
            operator = OPERATORS[int(rng.integers(0, 3))]
            return tree(operator, *(leaf(a) for a in activities))
        operator = OPERATORS[int(rng.choice(len(OPERATORS), p=OPERATOR_WEIGHTS))]
        parts = (
            2 if operator == "loop" else int(rng.integers(2, min(branching, len(activities)) + 1))
        )
        cuts = np.sort(rng.choice(np.arange(1, len(activities)), parts - 1, replace=False))
        bounds = [0, *cuts.tolist(), len(activities)]
        return tree(
            operator,
            *(grow(activities[a:b], depth + 1) for a, b in zip(bounds, bounds[1:], strict=False)),
        )

    return grow(rng.permutation(num_activities).tolist(), 1)


def play_out(node: Node, rng: np.random.Generator, loop_prob: float) -> list[int]:
    """One trace of `node` (its activities in order; semantics in the module docstring)."""
    if node.operator is None:
        return [node.activity]  # type: ignore[list-item]
    if node.operator == "sequence":
        return [a for c in node.children for a in play_out(c, rng, loop_prob)]
    if node.operator == "choice":
        return play_out(node.children[int(rng.integers(0, len(node.children)))], rng, loop_prob)
    if node.operator == "parallel":
        parts = [play_out(c, rng, loop_prob) for c in node.children]
        owners = [i for i, part in enumerate(parts) for _ in part]
        traces = [iter(part) for part in parts]
        return [next(traces[i]) for i in rng.permutation(owners).tolist()]
    do, redo = node.children
    trace = play_out(do, rng, loop_prob)
    while rng.random() < loop_prob:
        trace += play_out(redo, rng, loop_prob) + play_out(do, rng, loop_prob)
    return trace


# Replay states: None before a node starts; a finished leaf is True; a sequence, choice or loop
# holds (index of the active child, its state); a parallel node the tuple of its children's.
State = object


def finished(node: Node, state: State) -> bool:
    """Whether `node`'s execution may end in `state`."""
    if state is None:
        return False
    if node.operator is None:
        return True
    if node.operator == "parallel":
        return all(finished(c, s) for c, s in zip(node.children, state, strict=True))  # type: ignore[arg-type]
    index, inner = state  # type: ignore[misc]
    done = finished(node.children[index], inner)
    if node.operator == "sequence":
        return done and index == len(node.children) - 1
    return done and (node.operator == "choice" or index == 0)


def enabled(node: Node, state: State) -> frozenset[int]:
    """The activities that may come next inside `node` in `state`."""
    if state is None:
        return node.first
    if node.operator is None:
        return frozenset()
    if node.operator == "parallel":
        return frozenset().union(
            *(enabled(c, s) for c, s in zip(node.children, state, strict=True))  # type: ignore[arg-type]
        )
    index, inner = state  # type: ignore[misc]
    child = node.children[index]
    result = enabled(child, inner)
    if node.operator != "choice" and finished(child, inner):
        following = (index + 1) if node.operator == "sequence" else 1 - index
        if following < len(node.children):
            result = result | node.children[following].first
    return result


def advance(node: Node, state: State, activity: int) -> State:
    """The state after `activity` (which must be enabled; activities name their leaf)."""
    if activity not in enabled(node, state):
        raise ValueError(f"activity {activity} is not enabled in {node}")
    if node.operator is None:
        return True
    j = next(i for i, c in enumerate(node.children) if activity in c.leaves)
    if node.operator == "parallel":
        states = list(state or (None,) * len(node.children))  # type: ignore[arg-type]
        states[j] = advance(node.children[j], states[j], activity)
        return tuple(states)
    index, inner = (j, None) if state is None else state  # type: ignore[misc]
    return (j, advance(node.children[j], inner if j == index else None, activity))


def allowed_next(node: Node, trace: list[int]) -> list[frozenset[int]]:
    """For every prefix ``trace[:i]`` (i = 0 .. len), the allowed next activities, with -1
    standing for the end of the trace where it may end there."""
    state: State = None
    result = []
    for i in range(len(trace) + 1):
        allowed = enabled(node, state)
        result.append(allowed | {-1} if finished(node, state) else allowed)
        if i < len(trace):
            state = advance(node, state, trace[i])
    return result


# --------------------------------------------------------------------------- user logs


@dataclass
class Case:
    """One case of a user log: its id, activity names in order, their times (an untimed
    event takes the time of the event before it, EARLIEST if none), and its first timestamp."""

    name: str
    activities: list[str]
    start: datetime | None
    times: list[datetime]


def parse_time(text: str, where: str) -> datetime:
    """An ISO 8601 timestamp (naive ones read as UTC); a DataError naming `where` otherwise."""
    stamp = text.strip()
    try:
        value = datetime.fromisoformat(stamp[:-1] + "+00:00" if stamp.endswith("Z") else stamp)
    except ValueError:
        raise DataError(
            f"{where}: timestamp {text!r} is not ISO 8601 (e.g. 2020-01-31T12:00:00+01:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def make_case(name: str, events: list[tuple[str, datetime | None]]) -> Case:
    """A case from events in file order, sorted by timestamp (stably); an event without one
    stays right after the event before it in the file (at the start if it is first)."""
    keys, last = [], EARLIEST
    for _, time in events:
        last = time if time is not None else last
        keys.append(last)
    order = sorted(range(len(events)), key=keys.__getitem__)
    times = [t for _, t in events if t is not None]
    return Case(
        name,
        [events[i][0] for i in order],
        min(times) if times else None,
        [keys[i] for i in order],
    )


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_xes(path: str | Path) -> list[Case]:
    """The cases of an XES log: each ``<trace>``'s ``<event>``s, the activity the event's
    ``concept:name`` string, ordered by ``time:timestamp`` where present (`make_case`); the
    case id is the trace's ``concept:name`` (else its position). Streamed with iterparse."""
    path = Path(path)
    expected = "expected an XES log: <log> holding <trace>s of <event>s"
    cases: list[Case] = []
    stack: list[str] = []
    trace_name: str | None = None
    events: list[tuple[str, datetime | None]] = []
    event: dict[str, str] = {}
    try:
        with _open(path) as stream:
            for kind, element in ET.iterparse(stream, events=("start", "end")):
                tag = element.tag.rsplit("}", 1)[-1]
                if kind == "start":
                    if not stack and tag != "log":
                        raise DataError(f"{path}: the root element is <{tag}>; {expected}")
                    stack.append(tag)
                    if tag == "trace" and "global" not in stack:
                        trace_name, events = None, []
                    elif tag == "event" and "global" not in stack:
                        event = {}
                    continue
                stack.pop()
                if "global" in stack or tag == "global":
                    continue
                parent = stack[-1] if stack else None
                key = element.get("key")
                if parent == "event" and key in ("concept:name", "time:timestamp"):
                    event[key] = element.get("value", "")
                elif parent == "trace" and key == "concept:name" and tag != "event":
                    trace_name = element.get("value")
                elif tag == "event" and parent == "trace":
                    where = f"{path}: trace {len(cases) + 1} event {len(events) + 1}"
                    if not event.get("concept:name"):
                        raise DataError(f"{where} has no concept:name string (the activity)")
                    stamp = event.get("time:timestamp")
                    time = parse_time(stamp, where) if stamp else None
                    events.append((event["concept:name"], time))
                elif tag == "trace":
                    name = trace_name if trace_name is not None else str(len(cases))
                    if events:
                        cases.append(make_case(name, events))
                    element.clear()
    except ET.ParseError as err:
        raise DataError(f"{path}: not well-formed XML ({err}); {expected}") from None
    if not cases:
        raise DataError(f"{path}: no trace with events; {expected}")
    return cases


def read_csv(
    path: str | Path, case_column: str, activity_column: str, timestamp_column: str | None
) -> list[Case]:
    """The cases of a CSV log with a header row: one event per row, cases in the order they
    first appear, events ordered by `timestamp_column` where present (`make_case`)."""
    path = Path(path)
    grouped: dict[str, list[tuple[str, datetime | None]]] = {}
    try:
        _read_rows(path, case_column, activity_column, timestamp_column, grouped)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text ({err.reason}); expected a UTF-8 CSV log (a byte-order "
            "mark is accepted)"
        ) from None
    if not grouped:
        raise DataError(f"{path}: no events; expected one row per event under the header")
    return [make_case(name, events) for name, events in grouped.items()]


def _read_rows(
    path: Path,
    case_column: str,
    activity_column: str,
    timestamp_column: str | None,
    grouped: dict[str, list[tuple[str, datetime | None]]],
) -> None:
    """`read_csv`'s rows: each event appended to its case's list in `grouped`."""
    with _open(path) as raw:
        reader = csv.DictReader(line.decode("utf-8-sig") for line in raw)
        header = reader.fieldnames or []
        needed = [case_column, activity_column] + ([timestamp_column] if timestamp_column else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(
                f"{path}: no column(s) {missing}; expected a header with case, activity and "
                f"timestamp columns {needed} (found {header})"
            )
        for line, row in enumerate(reader, start=2):
            case, activity = row[case_column], row[activity_column]
            if not case or not activity:
                raise DataError(
                    f"{path}: line {line} lacks a case id or an activity (columns "
                    f"{case_column!r}, {activity_column!r})"
                )
            stamp = row[timestamp_column] if timestamp_column else None
            time = parse_time(stamp, f"{path}: line {line}") if stamp else None
            grouped.setdefault(case, []).append((activity, time))


def _until(case: Case, cutoff: datetime) -> Case:
    """`case` without its events after `cutoff`."""
    keep = [i for i, time in enumerate(case.times) if time <= cutoff]
    return Case(
        case.name, [case.activities[i] for i in keep], case.start, [case.times[i] for i in keep]
    )


def split_cases(
    cases: list[Case], split: str, fractions: tuple[float, float], seed: int
) -> dict[str, list[Case]]:
    """Cases to train/validation/test by case; `fractions` are (validation, test).

    ``chronological`` orders the cases by their first timestamp, the latest starting become
    test (Tax et al.'s cut by case start): a long training case may still hold events after
    a test case has started. ``strict`` cuts as ``chronological``, then drops every training
    event after the earliest test case start (Weytjens and De Weerdt); no training case is
    left empty, as each starts no later than that. ``random`` shuffles the cases with
    `seed`."""
    if split in ("chronological", "strict"):
        undated = [c.name for c in cases if c.start is None]
        if undated:
            raise DataError(
                f"a chronological split needs a timestamp in every case; case {undated[0]!r} "
                "has none (use split: random)"
            )
        ordered = sorted(cases, key=lambda c: c.start)  # type: ignore[arg-type,return-value]
    else:
        ordered = [
            cases[i] for i in np.random.default_rng([LOG_STREAM, seed]).permutation(len(cases))
        ]
    n = len(ordered)
    test = round(n * fractions[1])
    validation = round(n * fractions[0])
    if min(test, validation, n - test - validation) < 1:
        raise DataError(
            f"a log of {n} cases leaves a split empty with validation_fraction={fractions[0]} "
            f"and test_fraction={fractions[1]}; every split needs at least one case"
        )
    train_end = n - test - validation
    train = ordered[:train_end]
    if split == "strict":
        cutoff = ordered[n - test].start
        assert cutoff is not None
        train = [_until(case, cutoff) for case in train]
    return {
        "train": train,
        "validation": ordered[train_end : n - test],
        "test": ordered[n - test :],
    }


# --------------------------------------------------------------------------- the task


@TASKS.register("event_log")
class EventLog(Task):
    """Next-activity prediction on business-process traces: generated or a user's log.

    Each row is one trace, ``START a1 .. an END`` (ids: 0 PAD, 1 START, 2 END, activities from
    3), every position after START scored: the next activity at each prefix, and the end of
    the trace. Training batches draw traces uniformly (with replacement) from the split by
    ``rng([seed, split, step])``; evaluation scores every trace of the split in order.

    Generated (no `path`): a process tree from `random_tree` (`num_activities`, `max_depth`,
    `branching`) and `num_traces` training traces, `eval_traces` validation and as many test
    traces played out with `loop_prob` from disjoint generator streams, all fixed by
    `log_seed` (not the training seed); traces longer than `max_len` activities are redrawn.

    User log (`path`, ``.xes``/``.csv``, optionally ``.gz``): `read_xes` or `read_csv`
    (`case_column`, `activity_column`, `timestamp_column`), split by case (`split_cases`):
    `split: chronological` (the default, and the interdisciplinary comparison's: the cases
    that start latest are tested; a training case that runs on past a test case's start still
    trains on those later events), `strict` (as chronological, then training events after
    the earliest test case start are dropped, so no training event postdates a test case's
    start) or `random` (seeded by `log_seed`; needed for logs without timestamps). A trace
    longer than `max_len` is a DataError.

    Metrics: nll (nats per prediction), accuracy (the metric of record), `brier`, the
    multi-class Brier score mean over predictions of Σ_k (p_k − y_k)² over the K possible
    outcomes only (the activities and END; PAD and START are never targets), p the model's
    distribution renormalised over them (lower is better; 1 − 1/K for a uniform guess), and
    for generated logs `allowed_rate`, the fraction of argmax predictions the process model
    allows after the true prefix (`allowed_next`). Needs a left-to-right objective (ar, mtp):
    next-activity prediction reads only the prefix.
    """

    metric_of_record = "accuracy"

    def __init__(
        self,
        num_activities: int = 10,
        max_depth: int = 3,
        branching: int = 3,
        loop_prob: float = 0.3,
        num_traces: int = 1000,
        eval_traces: int = 200,
        log_seed: int = 0,
        max_len: int = 64,
        path: str | None = None,
        case_column: str = "case",
        activity_column: str = "activity",
        timestamp_column: str | None = "timestamp",
        split: str = "chronological",
        validation_fraction: float = 0.1,
        test_fraction: float = 0.2,
    ) -> None:
        check(
            isinstance(max_len, int) and max_len >= 1,
            f"event_log: max_len must be a positive integer, got {max_len!r}",
        )
        check(
            isinstance(log_seed, int) and log_seed >= 0,
            f"event_log: log_seed must be a non-negative integer, got {log_seed!r}",
        )
        self.max_len = max_len
        self.tree: Node | None = None
        self.cases: dict[str, list[str]] | None = None  # a user log's case ids per split
        if path is None:
            traces = self.generate(
                num_activities, max_depth, branching, loop_prob, num_traces, eval_traces, log_seed
            )
            self.activities = [f"a{i}" for i in range(num_activities)]
        else:
            traces = self.read(
                path, case_column, activity_column, timestamp_column, split,
                (validation_fraction, test_fraction), log_seed,
            )  # fmt: skip
        self.traces = traces
        self.vocab_size = FIRST_ACTIVITY + len(self.activities)
        self.seq_len = 2 + max(len(t) for rows in traces.values() for t in rows)
        self._rows: dict[str, tuple[Tensor, Tensor]] = {}
        self._allowed: dict[str, Tensor] = {}

    def generate(
        self,
        num_activities: int,
        max_depth: int,
        branching: int,
        loop_prob: float,
        num_traces: int,
        eval_traces: int,
        log_seed: int,
    ) -> dict[str, list[list[int]]]:
        """The generated log: the tree (kept as `self.tree`) and each split's traces."""
        for name, value, low in [
            ("num_activities", num_activities, 1),
            ("max_depth", max_depth, 1),
            ("branching", branching, 2),
            ("num_traces", num_traces, 1),
            ("eval_traces", eval_traces, 1),
        ]:
            check(
                isinstance(value, int) and value >= low,
                f"event_log: {name} must be an integer >= {low}, got {value!r}",
            )
        check(
            isinstance(loop_prob, (int, float)) and 0 <= loop_prob < 1,
            f"event_log: loop_prob must lie in [0, 1), got {loop_prob!r}",
        )
        self.tree = random_tree(
            np.random.default_rng([LOG_STREAM, log_seed, 0]), num_activities, max_depth, branching
        )
        traces = {}
        for index, split in enumerate(SPLITS):
            rng = np.random.default_rng([LOG_STREAM, log_seed, 1 + index])
            count = num_traces if split == "train" else eval_traces
            traces[split] = [self.draw(rng, loop_prob) for _ in range(count)]
        return traces

    def draw(self, rng: np.random.Generator, loop_prob: float) -> list[int]:
        """One play-out of the tree of at most `max_len` activities (redrawn if longer)."""
        assert self.tree is not None
        for _ in range(MAX_DRAWS):
            trace = play_out(self.tree, rng, loop_prob)
            if len(trace) <= self.max_len:
                return trace
        raise DataError(
            f"event_log: no trace of at most max_len={self.max_len} activities in {MAX_DRAWS} "
            "play-outs; raise max_len or lower loop_prob"
        )

    def read(
        self,
        path: str,
        case_column: str,
        activity_column: str,
        timestamp_column: str | None,
        split: str,
        fractions: tuple[float, float],
        log_seed: int,
    ) -> dict[str, list[list[int]]]:
        """A user log's traces per split, activities numbered in sorted name order."""
        check(
            split in SPLIT_KINDS,
            f"event_log: split must be one of {', '.join(SPLIT_KINDS)}, got {split!r}",
        )
        check(
            all(isinstance(f, (int, float)) and 0 < f < 1 for f in fractions)
            and sum(fractions) < 1,
            f"event_log: need 0 < validation_fraction, test_fraction and their sum < 1, got "
            f"{fractions}",
        )
        file = Path(path)
        suffixes = [s.lower() for s in file.suffixes if s.lower() != ".gz"]
        kind = suffixes[-1] if suffixes else ""
        if kind not in (".xes", ".csv"):
            raise ConfigError(f"event_log: path must end in .xes or .csv (or .gz), got {path!r}")
        if not file.is_file():
            raise DataError(f"event_log: no log file at {path!r}")
        if kind == ".xes":
            cases = read_xes(file)
        else:
            cases = read_csv(file, case_column, activity_column, timestamp_column)
        longest = max(cases, key=lambda c: len(c.activities))
        if len(longest.activities) > self.max_len:
            raise DataError(
                f"{path}: case {longest.name!r} has {len(longest.activities)} events, more than "
                f"max_len={self.max_len}; raise max_len"
            )
        self.activities = sorted({a for c in cases for a in c.activities})
        ids = {a: i for i, a in enumerate(self.activities)}
        parts = split_cases(cases, split, fractions, log_seed)
        self.cases = {name: [c.name for c in part] for name, part in parts.items()}
        return {
            name: [[ids[a] for a in c.activities] for c in part] for name, part in parts.items()
        }

    def check_objective(self, objective: Objective) -> None:
        if not isinstance(objective, Autoregressive):
            raise ConfigError(
                f"task 'event_log' scores next-activity prediction from the prefix, which needs "
                f"a left-to-right objective (ar, mtp), not {objective.name!r}"
            )

    def rows(self, traces: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Traces as padded rows `START a.. END` `[n, W]` and their scored mask (all but
        START and padding), W the longest of these rows."""
        width = 2 + max(len(t) for t in traces)
        tokens = np.full((len(traces), width), PAD, dtype=np.int64)
        mask = np.zeros((len(traces), width), dtype=bool)
        for row, trace in enumerate(traces):
            tokens[row, : len(trace) + 2] = [START, *(FIRST_ACTIVITY + a for a in trace), END]
            mask[row, 1 : len(trace) + 2] = True
        return torch.from_numpy(tokens), torch.from_numpy(mask)

    def batch(
        self,
        split: str,
        step: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> Batch:
        split_index = _split_index(split)
        check_batch_request(step, seed, batch_size, rank, world_size)
        rng = np.random.default_rng([seed, split_index, step])
        picks = rng.integers(0, len(self.traces[split]), batch_size * world_size)
        tokens, mask = self.rows([self.traces[split][i] for i in picks.tolist()])
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return Batch(tokens[rows], mask[rows])

    def eval_rows(self, split: str, max_tokens: int | None) -> tuple[Tensor, Tensor]:
        """The split's evaluation rows (every trace; a prefix of them under `max_tokens`)."""
        if split not in self._rows:
            _split_index(split)
            self._rows[split] = self.rows(self.traces[split])
        tokens, mask = self._rows[split]
        count = capped_rows(self.name, split, len(tokens), tokens.shape[1], max_tokens)
        return tokens[:count], mask[:count]

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        tokens, mask = self.eval_rows(split, max_tokens)
        for rows in eval_slices(len(tokens), batch_size):
            yield Batch(tokens[rows], mask[rows])

    def allowed(self, split: str) -> Tensor:
        """`[N, W, V]` bool: after the prefix ``row[: t + 1]`` may the process model emit token
        id v next (generated logs only)."""
        if split not in self._allowed:
            assert self.tree is not None
            tokens, _ = self.eval_rows(split, None)
            allowed = torch.zeros(*tokens.shape, self.vocab_size, dtype=torch.bool)
            for row, trace in enumerate(self.traces[split]):
                for t, options in enumerate(allowed_next(self.tree, trace)):
                    ids = [END if a == -1 else FIRST_ACTIVITY + a for a in options]
                    allowed[row, t, ids] = True
            self._allowed[split] = allowed
        return self._allowed[split]

    @torch.no_grad()
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
        brier, allowed_hits, scored, row = 0.0, 0, 0, 0
        with eval_mode(model):
            for batch in self.eval_batches(split, batch_size, max_tokens):
                batch = batch.to(model.device)
                logits, _ = model(batch.tokens[:, :-1], layout=objective.layout)
                probs = logits[..., : self.vocab_size].double().softmax(-1)
                targets = batch.tokens[:, 1:]
                where = batch.mask[:, 1:]  # type: ignore[index]
                outcomes = logits[..., END : self.vocab_size].double().softmax(-1)
                truth = torch.nn.functional.one_hot(
                    targets.clamp(min=END) - END, self.vocab_size - END
                ).double()
                brier += float(((outcomes - truth) ** 2).sum(-1)[where].sum())
                scored += int(where.sum())
                if self.tree is not None:
                    rows = slice(row, row + len(targets))
                    allowed = self.allowed(split)[rows, : targets.shape[1]].to(model.device)
                    guess = probs.argmax(-1, keepdim=True)
                    hits = allowed.gather(-1, guess).squeeze(-1) & where
                    allowed_hits += int(hits.sum())
                row += len(targets)
        metrics["brier"] = brier / max(scored, 1)
        if self.tree is not None:
            metrics["allowed_rate"] = allowed_hits / max(scored, 1)
        return metrics
