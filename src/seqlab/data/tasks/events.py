"""Marked temporal point processes: next event (mark and time) on any backbone.

The intensity-free model of Shchur, Biloš and Günnemann (2020): a backbone reads the history
of (mark, inter-event time) pairs and predicts the next mark with its token head and the next
inter-event time with a log-normal mixture (`seqlab.heads.lognormal_mixture`), so its
per-event NLL −log p(k_{i+1} | h_i) − log p(τ_{i+1} | h_i) is directly comparable with the
generating process's −ℓ_{i+1} (`seqlab.data.point_processes`).

**Encoding.** Ids: 0 PAD, 1 BOS, marks from 2. A row is ``BOS k_1 .. k_n PAD ..`` with the
values ``0 τ_1 .. τ_n 0 ..``, τ_i = t_i − t_{i−1}: position i predicts (k_{i+1}, τ_{i+1}).
Simulated sequences start at t_0 = 0 and every event is scored. A user sequence's first
event is its time origin (its gap is unknown): context, never scored. `seq_len` is
`max_events + 1`; a user sequence of more than `max_events` events is cut into chunks of
`max_events` (each from BOS; a chunk's first gap is still measured from the event before it,
and its history starts afresh).

**Long horizon** (HoTPP, Karpukhin et al. 2024). From prediction points every
`prediction_step` events of each evaluation row, `rollout_events` in ``mean`` mode forecasts
`forecast_events` events (argmax mark and mean gap fed back). T-mAP over the horizon
`forecast_horizon` H with tolerances `map_deltas` (points whose observation window covers H),
OTD over the first `otd_steps` forecast and true events (points with at least that many left),
with `otd_insert_cost` and `otd_delete_cost`. Defaults as HoTPP's configs: 32 forecast
events, OTD over 10 steps at costs 1 and 1, δ = H / 5; H defaults to 10 mean training gaps.
"""

from __future__ import annotations

import csv
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from seqlab.data.point_processes import (
    Hawkes,
    PointProcess,
    Renewal,
    SelfCorrecting,
    fit_hawkes,
    mean_otd,
    t_map,
)
from seqlab.data.tasks.base import SPLITS, Task, capped_rows, epoch_positions, eval_slices
from seqlab.data.tasks.synthetic import _split_index, check
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS
from seqlab.sampling.base import eval_mode
from seqlab.sampling.marked import rollout_events

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

PAD, BOS, FIRST_MARK = 0, 1, 2
SIMULATION_STREAM = 0xE7_E27
CSV_STREAM = 0xC5_E27
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

PROCESSES: dict[str, tuple[type[PointProcess], dict]] = {
    "hawkes": (
        Hawkes,
        {  # 3 marks, branching ratio 0.5, about 1.8 events per unit time when stationary
            "mu": [0.3, 0.3, 0.3],
            "alpha": [[0.3, 0.1, 0.1], [0.1, 0.3, 0.1], [0.1, 0.1, 0.3]],
            "beta": 1.0,
        },
    ),
    "self_correcting": (SelfCorrecting, {"mu": 1.0, "alpha": 1.0, "mark_probs": [0.5, 0.3, 0.2]}),
    "renewal": (
        Renewal,
        {"mark_probs": [0.5, 0.3, 0.2], "distribution": "lognormal", "shape": 1.0, "scale": 1.0},
    ),
}


@dataclass
class Split:
    """One split's sequences: absolute event `times` and 0-based `marks`, each sequence's time
    origin t_0 and the end of its observation window, and the index of its first scored event
    (0 simulated, 1 for a user sequence, whose first event is the origin)."""

    times: list[np.ndarray]
    marks: list[np.ndarray]
    origins: np.ndarray
    ends: np.ndarray
    first_scored: int


@dataclass
class Rows:
    """A split encoded: tokens, values and mask `[N, seq_len]`, with each row's sequence and
    the index of the event at its position 1."""

    tokens: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    sequence: np.ndarray
    start: np.ndarray


def read_events_csv(
    path: str | Path, sequence_column: str, time_column: str, mark_column: str
) -> tuple[list[str], list[np.ndarray], list[list[str]]]:
    """The sequences of a CSV with a header, one event per row: ids (in order of first
    appearance), times sorted ascending within each, and their marks (strings, kept in step)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"events: no CSV file at {file}")
    found: dict[str, tuple[list[float], list[str]]] = {}
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            names = reader.fieldnames or []
            for column in (sequence_column, time_column, mark_column):
                if column not in names:
                    raise DataError(
                        f"events: {file} has no column {column!r} in its header (found "
                        f"{', '.join(names) or 'none'})"
                    )
            for line, row in enumerate(reader, start=2):
                text = (row[time_column] or "").strip()
                try:
                    time = float(text)
                except ValueError:
                    time = math.nan
                if not math.isfinite(time):
                    raise DataError(
                        f"events: {file} line {line}: {time_column} {text!r} is not a finite number"
                    )
                mark = (row[mark_column] or "").strip()
                if not mark:
                    raise DataError(f"events: {file} line {line}: empty {mark_column}")
                times, marks = found.setdefault(row[sequence_column] or "", ([], []))
                times.append(time)
                marks.append(mark)
    except UnicodeDecodeError as err:
        raise DataError(f"events: {file}: not UTF-8 text ({err.reason})") from None
    if not found:
        raise DataError(f"events: {file} holds no rows after its header")
    ids, all_times, all_marks = [], [], []
    for key, (times, marks) in found.items():
        order = np.argsort(np.asarray(times), kind="stable")
        ordered = np.asarray(times)[order]
        if np.any(np.diff(ordered) <= 0):
            raise DataError(
                f"events: {file}: sequence {key!r} has two events at one time; the log-normal "
                "time head needs positive gaps (merge or jitter tied events)"
            )
        ids.append(key)
        all_times.append(ordered)
        all_marks.append([marks[i] for i in order])
    return ids, all_times, all_marks


@TASKS.register("events")
class MarkedEvents(Task):
    """Next event (mark and inter-event time) of marked temporal point processes.

    Simulated (no `path`): `process` ``hawkes`` (exponential kernels; `process_options` mu
    [K], alpha [K, K], beta; default 3 marks, branching ratio 0.5), ``self_correcting`` (mu,
    alpha, mark_probs) or ``renewal`` (mark_probs, distribution ``lognormal``/``gamma``,
    shape, scale); the options given replace the defaults in `PROCESSES`. Each split holds
    `train_sequences` / `eval_sequences` / `eval_sequences` sequences on [0, `horizon`] of at
    most `max_events` events, simulated from disjoint generator streams fixed by `data_seed`.

    User data (`path`): a CSV of (`sequence_column`, `time_column`, `mark_column`) rows in any
    order; marks are strings, numbered by first appearance in the training split (then in the
    others); sequences are split 80/10/10 by a permutation seeded by `data_seed`.

    Training batches walk seeded epoch permutations of the rows (`epoch_positions`); the
    model gets the value head ``lognormal_mixture`` with shift and scale the mean and standard
    deviation of log τ over the training split's scored gaps. `evaluate` (module docstring;
    needs the ar objective) reports nll (of record: nats per event, mark plus time), mark_nll,
    time_nll, accuracy (next mark, the argmax over marks), time_mae (|E[τ] − τ|), hawkes_nll
    (a Hawkes process fitted by maximum likelihood to the training split, scored on the same
    events), t_map (higher is better) and otd; for simulated data also true_nll (the
    generating process's −ℓ per event) and nll_gap = nll − true_nll.
    """

    metric_of_record = "nll"
    value_head = "lognormal_mixture"

    def __init__(
        self,
        process: str = "hawkes",
        process_options: dict | None = None,
        horizon: float = 40.0,
        max_events: int = 64,
        train_sequences: int = 1000,
        eval_sequences: int = 200,
        data_seed: int = 0,
        path: str | None = None,
        sequence_column: str = "sequence",
        time_column: str = "time",
        mark_column: str = "mark",
        prediction_step: int = 8,
        forecast_events: int = 32,
        forecast_horizon: float | None = None,
        map_deltas: list[float] | None = None,
        otd_steps: int = 10,
        otd_insert_cost: float = 1.0,
        otd_delete_cost: float = 1.0,
    ) -> None:
        for name, value, low in (
            ("max_events", max_events, 1),
            ("train_sequences", train_sequences, 1),
            ("eval_sequences", eval_sequences, 1),
            ("data_seed", data_seed, 0),
            ("prediction_step", prediction_step, 1),
            ("forecast_events", forecast_events, 1),
            ("otd_steps", otd_steps, 1),
        ):
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"events: {name} must be an integer >= {low}, got {value!r}",
            )
        for name, value in (
            ("horizon", horizon),
            ("otd_insert_cost", otd_insert_cost),
            ("otd_delete_cost", otd_delete_cost),
        ):
            check(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and 0 < value < math.inf,
                f"events: {name} must be a positive finite number, got {value!r}",
            )
        check(
            forecast_events >= otd_steps,
            f"events: forecast_events ({forecast_events}) must be >= otd_steps ({otd_steps}): "
            f"OTD compares the first otd_steps forecast events",
        )
        self.max_events, self.seq_len = max_events, max_events + 1
        self.prediction_step, self.forecast_events = prediction_step, forecast_events
        self.otd_steps = otd_steps
        self.otd_costs = {
            "insert_cost": float(otd_insert_cost),
            "delete_cost": float(otd_delete_cost),
        }
        self.process: PointProcess | None = None
        if path is None:
            self.process = self.build_process(process, process_options)
            self.num_marks = self.process.num_marks
            self.mark_names = [str(k) for k in range(self.num_marks)]
            self.splits = self.simulate(
                float(horizon), (train_sequences, eval_sequences, eval_sequences), data_seed
            )
        else:
            self.splits = self.read(path, sequence_column, time_column, mark_column, data_seed)
        self.vocab_size = FIRST_MARK + self.num_marks
        self._rows = {split: self.encode(part) for split, part in self.splits.items()}
        train = self._rows["train"]
        gaps = train.values[train.mask]
        if gaps.size == 0:
            raise DataError("events: the training split holds no scored event")
        logs = np.log(gaps)
        self.value_head_options = {"shift": float(logs.mean()), "scale": float(logs.std() or 1.0)}
        self.forecast_horizon = (
            10.0 * float(gaps.mean()) if forecast_horizon is None else float(forecast_horizon)
        )
        check(
            0 < self.forecast_horizon < math.inf,
            f"events: forecast_horizon must be a positive finite number, got {forecast_horizon!r}",
        )
        deltas = [self.forecast_horizon / 5] if map_deltas is None else list(map_deltas)
        check(
            bool(deltas) and all(isinstance(d, (int, float)) and d >= 0 for d in deltas),
            f"events: map_deltas must be a non-empty list of numbers >= 0, got {map_deltas!r}",
        )
        self.map_deltas = [float(d) for d in deltas]
        self._hawkes: Hawkes | None = None
        self._references: dict[tuple[str, str], np.ndarray] = {}

    # ----------------------------------------------------------------------- data

    @staticmethod
    def build_process(process: str, options: dict | None) -> PointProcess:
        """The named process with its default options, `options` replacing them."""
        if process not in PROCESSES:
            raise ConfigError(
                f"events: process must be one of {', '.join(PROCESSES)}, got {process!r}"
            )
        cls, defaults = PROCESSES[process]
        given = dict(options or {})
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(
                f"events: process {process!r} has no option {unknown[0]!r}; its options: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**{**defaults, **given})

    def simulate(self, horizon: float, counts: Sequence[int], data_seed: int) -> dict[str, Split]:
        """Each split's sequences from the generator ``rng([stream, data_seed, split])``; a
        sequence stopped at `max_events` is observed up to its last event, the others up to
        `horizon`."""
        assert self.process is not None
        splits = {}
        for index, (split, count) in enumerate(zip(SPLITS, counts, strict=True)):
            rng = np.random.default_rng([SIMULATION_STREAM, data_seed, index])
            drawn = [self.process.simulate(rng, horizon, self.max_events) for _ in range(count)]
            ends = [t[-1] if t.size == self.max_events else horizon for t, _ in drawn]
            splits[split] = Split(
                [t for t, _ in drawn],
                [m for _, m in drawn],
                np.zeros(count),
                np.asarray(ends, dtype=np.float64),
                0,
            )
        return splits

    def read(
        self, path: str, sequence_column: str, time_column: str, mark_column: str, data_seed: int
    ) -> dict[str, Split]:
        """A user CSV split 80/10/10 by sequence, marks numbered from the training split."""
        ids, times, marks = read_events_csv(path, sequence_column, time_column, mark_column)
        n = len(ids)
        held = max(1, round(n * SPLIT_FRACTIONS[1]))
        if n - 2 * held < 1:
            raise DataError(
                f"events: {path} holds {n} sequences; an 80/10/10 split needs at least 3"
            )
        order = np.random.default_rng([CSV_STREAM, data_seed]).permutation(n)
        parts = {
            "train": np.sort(order[: n - 2 * held]),
            "validation": np.sort(order[n - 2 * held : n - held]),
            "test": np.sort(order[n - held :]),
        }
        numbering: dict[str, int] = {}
        for split in SPLITS:
            for s in parts[split]:
                for mark in marks[s]:
                    numbering.setdefault(mark, len(numbering))
        self.mark_names = list(numbering)
        self.num_marks = len(numbering)
        self.sequence_ids = {split: [ids[s] for s in parts[split]] for split in SPLITS}
        return {
            split: Split(
                [times[s] for s in parts[split]],
                [np.array([numbering[m] for m in marks[s]], dtype=np.int64) for s in parts[split]],
                np.array([times[s][0] for s in parts[split]]),
                np.array([times[s][-1] for s in parts[split]]),
                1,
            )
            for split in SPLITS
        }

    def encode(self, part: Split) -> Rows:
        """The split's rows (module docstring); sequences with no scored event are left out."""
        tokens, values, mask, sequence, start = [], [], [], [], []
        for s, (times, marks) in enumerate(zip(part.times, part.marks, strict=True)):
            gaps = np.diff(times, prepend=part.origins[s])
            for first in range(0, times.size, self.max_events):
                last = min(first + self.max_events, times.size)
                scored = np.arange(first, last) >= part.first_scored
                if not scored.any():
                    continue
                width = last - first
                row_tokens = np.full(self.seq_len, PAD, dtype=np.int64)
                row_values = np.zeros(self.seq_len)
                row_mask = np.zeros(self.seq_len, dtype=bool)
                row_tokens[0] = BOS
                row_tokens[1 : width + 1] = FIRST_MARK + marks[first:last]
                row_values[1 : width + 1] = gaps[first:last]
                row_mask[1 : width + 1] = scored
                tokens.append(row_tokens)
                values.append(row_values)
                mask.append(row_mask)
                sequence.append(s)
                start.append(first)
        if not tokens:
            return Rows(
                np.zeros((0, self.seq_len), dtype=np.int64),
                np.zeros((0, self.seq_len)),
                np.zeros((0, self.seq_len), dtype=bool),
                np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.int64),
            )
        return Rows(
            np.stack(tokens), np.stack(values), np.stack(mask), np.array(sequence), np.array(start)
        )

    def decode(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """(times from each row's origin [n], 0-based marks [n]) of a batch's rows: the
        inverse of the encoding for rows that start a sequence."""
        out = []
        for tokens, values in zip(batch.tokens.numpy(), batch.values.numpy(), strict=True):
            events = tokens[1:] >= FIRST_MARK
            out.append((np.cumsum(values[1:][events]), tokens[1:][events] - FIRST_MARK))
        return out

    def _batch(self, rows: Rows, index: np.ndarray | slice) -> Batch:
        mask = torch.from_numpy(rows.mask[index])
        return Batch(
            torch.from_numpy(rows.tokens[index]),
            mask,
            values=torch.from_numpy(rows.values[index]).float(),
        )

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
        _split_index(split)
        rows = self._rows[split]
        if not len(rows.tokens):
            raise DataError(f"events: the {split} split holds no scored event")
        positions = epoch_positions(
            len(rows.tokens), split, step, batch_size, seed=seed, rank=rank, world_size=world_size
        )
        return self._batch(rows, positions)

    def eval_count(self, split: str, max_tokens: int | None) -> int:
        _split_index(split)
        rows = len(self._rows[split].tokens)
        return capped_rows(self.name, split, rows, self.seq_len, max_tokens)

    def eval_batches(
        self, split: str, batch_size: int, max_tokens: int | None = None
    ) -> Iterator[Batch]:
        for rows in eval_slices(self.eval_count(split, max_tokens), batch_size):
            yield self._batch(self._rows[split], rows)

    # ----------------------------------------------------------------------- references

    @property
    def hawkes(self) -> Hawkes:
        """A Hawkes process fitted by maximum likelihood to the training split (times from
        each sequence's origin, observed up to its window's end), fitted once. The events
        before `first_scored` (a user sequence's origin event) are history only, as
        everywhere else: they excite the later events but their own likelihood is not fitted."""
        if self._hawkes is None:
            train = self.splits["train"]
            sequences = [
                (t - o, m) for t, m, o in zip(train.times, train.marks, train.origins, strict=True)
            ]
            horizons = list(train.ends - train.origins)
            self._hawkes = fit_hawkes(
                sequences, self.num_marks, horizons=horizons, conditioned=train.first_scored
            )
        return self._hawkes

    def reference(self, split: str, which: str) -> np.ndarray:
        """`[N, seq_len]` per-event log-likelihood ℓ of `which` (``true``: the generating
        process; ``hawkes``: the fitted one) at each row's event positions (0 elsewhere),
        computed on whole sequences from their origins."""
        key = (split, which)
        if key not in self._references:
            process = self.process if which == "true" else self.hawkes
            assert process is not None
            part, rows = self.splits[split], self._rows[split]
            per_sequence = [
                process.log_likelihood(t - o, m)
                for t, m, o in zip(part.times, part.marks, part.origins, strict=True)
            ]
            out = np.zeros(rows.tokens.shape)
            for r, (s, first) in enumerate(zip(rows.sequence, rows.start, strict=True)):
                ll = per_sequence[s][first : first + self.max_events]
                out[r, 1 : ll.size + 1] = ll
            self._references[key] = out
        return self._references[key]

    # ----------------------------------------------------------------------- scoring

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
        self.check_objective(objective)
        count = self.eval_count(split, max_tokens)
        rows = self._rows[split]
        sums = dict.fromkeys(("mark_nll", "time_nll", "correct", "abs_error"), 0.0)
        with eval_mode(model):
            for batch in self.eval_batches(split, batch_size, max_tokens):
                batch = batch.to(model.device)
                assert batch.values is not None and batch.mask is not None
                logits, distribution, _ = model.marked(batch.tokens[:, :-1], batch.values[:, :-1])
                targets, gaps = batch.tokens[:, 1:], batch.values[:, 1:].double()
                where = batch.mask[:, 1:]
                logits = logits.double()
                mark_nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
                guess = FIRST_MARK + logits[..., FIRST_MARK : self.vocab_size].argmax(-1)
                safe = torch.where(where, gaps, torch.ones_like(gaps))
                time_nll = -distribution.log_prob(safe).double()
                error = (distribution.mean.double() - gaps).abs()
                sums["mark_nll"] += float(mark_nll[where].sum())
                sums["time_nll"] += float(time_nll[where].sum())
                sums["correct"] += float((guess == targets)[where].sum())
                sums["abs_error"] += float(error[where].sum())
        scored = rows.mask[:count]
        events = max(int(scored.sum()), 1)
        metrics: dict[str, float] = {
            "nll": (sums["mark_nll"] + sums["time_nll"]) / events,
            "mark_nll": sums["mark_nll"] / events,
            "time_nll": sums["time_nll"] / events,
            "accuracy": sums["correct"] / events,
            "time_mae": sums["abs_error"] / events,
            "events": float(scored.sum()),
            "bound": False,
        }
        if self.process is not None:
            metrics["true_nll"] = (
                -float(self.reference(split, "true")[:count][scored].sum()) / events
            )
            metrics["nll_gap"] = metrics["nll"] - metrics["true_nll"]
        metrics["hawkes_nll"] = (
            -float(self.reference(split, "hawkes")[:count][scored].sum()) / events
        )
        metrics.update(self.horizon_metrics(model, split, count, batch_size))
        return metrics

    def prediction_points(self, split: str, count: int) -> list[tuple[int, int]]:
        """(row, prefix position i) of every prediction point of the first `count` rows:
        i = prediction_step, 2·prediction_step, .. events into the row, while the row goes on."""
        rows = self._rows[split]
        points = []
        for r in range(count):
            length = int((rows.tokens[r, 1:] >= FIRST_MARK).sum())
            points += [(r, i) for i in range(self.prediction_step, length, self.prediction_step)]
        return points

    def horizon_metrics(
        self, model: Model, split: str, count: int, batch_size: int
    ) -> dict[str, float]:
        """T-mAP and OTD of ``mean`` rollouts from every prediction point (module docstring);
        NaN where no point qualifies."""
        part, rows = self.splits[split], self._rows[split]
        points = self.prediction_points(split, count)
        mark_ids = list(range(FIRST_MARK, self.vocab_size))
        starts, predictions, targets, otd_pairs = [], [], [], []
        by_length: dict[int, list[int]] = {}
        for n, (_, i) in enumerate(points):
            by_length.setdefault(i, []).append(n)
        forecasts: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        chunk = max(batch_size, 1) * 4
        for i, members in by_length.items():
            for first in range(0, len(members), chunk):
                group = members[first : first + chunk]
                index = np.array([points[n][0] for n in group])
                times, scores, marks = rollout_events(
                    model,
                    torch.from_numpy(rows.tokens[index, : i + 1]),
                    torch.from_numpy(rows.values[index, : i + 1]).float(),
                    self.forecast_events,
                    mark_ids=mark_ids,
                )
                for j, n in enumerate(group):
                    forecasts[n] = (
                        times[j].cpu().numpy(),
                        scores[j].cpu().numpy(),
                        marks[j].cpu().numpy() - FIRST_MARK,
                    )
        for n, (r, i) in enumerate(points):
            s, event = rows.sequence[r], rows.start[r] + i - 1
            start = float(part.times[s][event])
            future = (part.times[s][event + 1 :], part.marks[s][event + 1 :])
            times, scores, marks = forecasts[n]
            if part.ends[s] - start >= self.forecast_horizon:
                starts.append(start)
                predictions.append((start + times, scores))
                targets.append(future)
            if future[0].size >= self.otd_steps:
                otd_pairs.append(((start + times, marks), future))
        metrics = {"t_map": math.nan, "otd": math.nan}
        within = [
            t.size > 0 and t[0] - s < self.forecast_horizon
            for s, (t, _) in zip(starts, targets, strict=True)
        ]
        if any(within):
            metrics["t_map"] = t_map(
                starts, predictions, targets, horizon=self.forecast_horizon, deltas=self.map_deltas
            )
        if otd_pairs:
            metrics["otd"] = mean_otd(
                [p for p, _ in otd_pairs],
                [t for _, t in otd_pairs],
                steps=self.otd_steps,
                **self.otd_costs,
            )
        return metrics
