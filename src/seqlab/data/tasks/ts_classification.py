"""Time-series classification on UCR/UEA `.ts` files, values quantised into tokens.

Data: a folder holding `<Name>_TRAIN.ts` and `<Name>_TEST.ts` in the UCR/UEA `.ts` format
(read by `read_ts`, no sktime), such as the sets `scripts/ucr.sh` takes from the sktime wheel
into `data/ucr/<Name>/`. Test is the published TEST file; validation a seeded stratified
fraction of TRAIN; the rest of TRAIN trains.

Tokens: each series (each dimension of a case) is z-normalised on its own (the UCR
convention), subsampled by a uniform stride to at most `max_len` steps, and quantised into
`num_bins` uniform bins over [−limit, limit] (`timeseries.Binning` with scale 1); the
dimensions of a multivariate case are interleaved per time step. A row is the series tokens
(left-padded with PAD to the longest case), SEP, then the label token, the only scored one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial.distance import cdist

from seqlab.data.tasks.base import SPLITS, IndexedTask
from seqlab.data.tasks.timeseries import FIRST_BIN, PAD, Binning
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS

if TYPE_CHECKING:
    from seqlab.model import Model
    from seqlab.objectives.base import Objective

DEFAULT_PATH = "data/ucr/GunPoint"
MISSING = frozenset({"?", "nan", "NaN"})


@dataclass(frozen=True)
class TsFile:
    """The cases of a `.ts` file: `series[i]` is case i as float64 `[dims, length]` (NaN
    where a value is missing), `labels[i]` its index into `classes` (the header's order)."""

    name: str
    classes: tuple[str, ...]
    series: list[np.ndarray]
    labels: np.ndarray


def _flag(file: Path, line: int, key: str, words: list[str]) -> bool:
    if len(words) != 1 or words[0].lower() not in ("true", "false"):
        raise DataError(f"{file} line {line}: @{key} must be followed by true or false")
    return words[0].lower() == "true"


def _count(file: Path, line: int, key: str, words: list[str]) -> int:
    if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
        raise DataError(f"{file} line {line}: @{key} must be followed by a positive integer")
    return int(words[0])


def read_ts(path: str | Path) -> TsFile:
    """The cases of a UCR/UEA `.ts` classification file.

    Header lines (keys case-insensitive, `#` lines are comments) up to `@data`:
    `@problemName`, `@univariate`, `@dimensions`, `@equalLength`, `@seriesLength` (checked
    when given), `@classLabel true <labels...>` (required); `@timeStamps true` and
    `@targetLabel true` (regression) are refused; other keys are ignored. Each data line is
    a case: its dimensions separated by `:`, each a comma-separated list of numbers (`?` or
    NaN for a missing value), then the label. Any departure is a one-line DataError naming
    the file and line."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise DataError(f"cannot read {file}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason})") from None
    name, classes, dims = file.stem, None, None
    univariate = equal_length = length = None
    number = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("@"):
            raise DataError(f"{file} line {number}: a data line before @data")
        key, *words = line[1:].split()
        key = key.lower()
        if key == "data":
            break
        if key == "problemname" and words:
            name = words[0]
        elif key == "timestamps" and _flag(file, number, key, words):
            raise DataError(f"{file} line {number}: @timeStamps true is not supported")
        elif key == "targetlabel" and _flag(file, number, key, words):
            raise DataError(f"{file} line {number}: a regression file (@targetLabel true)")
        elif key == "univariate":
            univariate = _flag(file, number, key, words)
        elif key == "dimensions":
            dims = _count(file, number, key, words)
        elif key == "equallength":
            equal_length = _flag(file, number, key, words)
        elif key == "serieslength":
            length = _count(file, number, key, words)
        elif key == "classlabel":
            if not words or not _flag(file, number, key, words[:1]) or len(words) < 2:
                raise DataError(
                    f"{file} line {number}: expected @classLabel true followed by the labels"
                )
            classes = tuple(words[1:])
    else:
        raise DataError(f"{file}: no @data line ends the header")
    if classes is None:
        raise DataError(f"{file}: the header has no @classLabel true <labels...> line")
    if univariate is not None and dims is not None and univariate != (dims == 1):
        raise DataError(f"{file}: @univariate {univariate} contradicts @dimensions {dims}")
    if univariate:
        dims = 1
    index = {label: i for i, label in enumerate(classes)}
    series: list[np.ndarray] = []
    labels: list[int] = []
    header = number
    for number, raw in enumerate(lines[header:], start=header + 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        *parts, label = line.split(":")
        if not parts:
            raise DataError(f"{file} line {number}: expected values, ':' and a label")
        dims = dims or len(parts)
        if len(parts) != dims:
            raise DataError(
                f"{file} line {number}: expected {dims} dimension(s) and a label separated by "
                f"':', found {len(parts) + 1} field(s)"
            )
        if label.strip() not in index:
            raise DataError(
                f"{file} line {number}: label {label.strip()!r} is not one of @classLabel "
                f"{' '.join(classes)}"
            )
        case = [_values(file, number, part) for part in parts]
        if len({len(values) for values in case}) > 1:
            raise DataError(f"{file} line {number}: the dimensions of a case differ in length")
        if length is not None and equal_length is not False and len(case[0]) != length:
            raise DataError(
                f"{file} line {number}: {len(case[0])} values, @seriesLength says {length}"
            )
        series.append(np.array(case, dtype=np.float64))
        labels.append(index[label.strip()])
    if not series:
        raise DataError(f"{file}: no cases after @data")
    if equal_length and len({s.shape[1] for s in series}) > 1:
        raise DataError(f"{file}: @equalLength true, but the cases differ in length")
    return TsFile(name, classes, series, np.array(labels, dtype=np.int64))


def _values(file: Path, line: int, text: str) -> list[float]:
    values = []
    for word in text.split(","):
        word = word.strip()
        try:
            values.append(math.nan if word in MISSING else float(word))
        except ValueError:
            raise DataError(f"{file} line {line}: {word!r} is not a number or '?'") from None
    return values


def z_normalise(case: np.ndarray) -> np.ndarray:
    """`case [dims, length]` with missing values (NaN) filled by linear interpolation (held
    constant before the first and after the last value), then each dimension shifted to mean
    0 and scaled to standard deviation 1 (a constant dimension becomes 0)."""
    filled = np.empty_like(case)
    steps = np.arange(case.shape[1])
    for d, values in enumerate(case):
        known = np.isfinite(values)
        if not known.any():
            raise DataError("a case has a dimension with no value (all missing)")
        filled[d] = np.interp(steps, steps[known], values[known])
    centred = filled - filled.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    return centred / np.where(std > 0, std, 1.0)


def stride(length: int, max_len: int | None) -> int:
    """The uniform stride that keeps at most `max_len` of `length` steps (1: all)."""
    return 1 if max_len is None else max(1, -(-length // max_len))


def nearest_neighbour_correct(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    *,
    leave_one_out: bool = False,
) -> np.ndarray:
    """Whether the 1-nearest neighbour (Euclidean distance) in `train [N, F]` of each row of
    `test [M, F]` has its label (`[M]` bool; ties go to the first training row);
    `leave_one_out` (test is train) skips each row's own distance."""
    distance = cdist(test, train, "sqeuclidean")
    if leave_one_out:
        np.fill_diagonal(distance, np.inf)
    return train_labels[distance.argmin(axis=1)] == test_labels


def flat_padded(cases: list[np.ndarray], length: int) -> np.ndarray:
    """Cases `[dims, T_i]` as rows `[n, dims * length]`, each dimension right-padded with 0
    (the mean of a z-normalised series) to `length`."""
    rows = np.zeros((len(cases), cases[0].shape[0], length))
    for i, case in enumerate(cases):
        rows[i, :, : case.shape[1]] = case
    return rows.reshape(len(cases), -1)


def find_pair(folder: Path) -> tuple[Path, Path]:
    """The `<Name>_TRAIN.ts` and `<Name>_TEST.ts` of `folder` (exactly one pair)."""
    if not folder.is_dir():
        raise ConfigError(
            f"ts_classification: path {str(folder)!r} is not a folder of <Name>_TRAIN.ts and "
            f"<Name>_TEST.ts (scripts/ucr.sh writes the UCR sets to data/ucr/<Name>)"
        )
    trains = sorted(folder.glob("*_TRAIN.ts"))
    if len(trains) != 1:
        found = ", ".join(p.name for p in trains) or "none"
        raise DataError(
            f"ts_classification: {folder} must hold exactly one *_TRAIN.ts, found {found}"
        )
    test = trains[0].with_name(trains[0].name[: -len("_TRAIN.ts")] + "_TEST.ts")
    if not test.is_file():
        raise DataError(f"ts_classification: {folder} has {trains[0].name} but no {test.name}")
    return trains[0], test


@TASKS.register("ts_classification")
class TimeSeriesClassification(IndexedTask):
    """Classifying UCR/UEA time series read as tokens, the label after the series.

    Ids: 0 PAD, bins `1 .. num_bins`, SEP = num_bins + 1, then one label token per class
    (in the order of TRAIN's @classLabel). A row is the case's tokens (per time step its
    dimensions in order; left-padded with PAD to the longest case of all splits), SEP, the
    label: `seq_len = steps × dims + 2`. Only the label is scored, so `accuracy` is the
    classification accuracy of each objective's `predict` (AR reads it after the series; a
    masked objective unmasks it from the series) and `nll` the label's NLL.

    `path`: a folder with one `<Name>_TRAIN.ts` and its `<Name>_TEST.ts` (`read_ts`).
    Missing values are interpolated. Each dimension of a case is z-normalised, then
    subsampled with the uniform stride ⌈T / max_len⌉ (T its length) when `max_len` is set,
    then binned over [−limit, limit] (clipped into the end bins). Splits: test is TEST;
    validation draws `validation_fraction` of each class of TRAIN (rounded half up, by a generator
    seeded with `split_seed`); train is the rest. Training rows follow epochs of seeded
    permutations (`epoch_positions`); evaluation reads a split in file order.

    `evaluate` adds `knn_accuracy`: the 1-nearest-neighbour classifier with Euclidean
    distance on the z-normalised full-resolution series (the standard UCR baseline; shorter
    cases padded with 0) with the train split as reference, over the same evaluated rows
    (leave-one-out on train). The metric of record is `accuracy`.
    """

    metric_of_record = "accuracy"

    def __init__(
        self,
        path: str = DEFAULT_PATH,
        num_bins: int = 64,
        limit: float = 3.0,
        max_len: int | None = None,
        validation_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        for key, value, low in (("num_bins", num_bins, 2), ("max_len", max_len, 1)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                raise ConfigError(
                    f"ts_classification: {key} must be an integer >= {low}, got {value!r}"
                )
        if (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not 0 < limit < math.inf
        ):
            raise ConfigError(f"ts_classification: limit must be a positive number, got {limit!r}")
        if (
            isinstance(validation_fraction, bool)
            or not isinstance(validation_fraction, (int, float))
            or not 0 < validation_fraction < 1
        ):
            raise ConfigError(
                f"ts_classification: validation_fraction must lie in (0, 1), got "
                f"{validation_fraction!r}"
            )
        train_file, test_file = find_pair(Path(path).expanduser())
        train, test = read_ts(train_file), read_ts(test_file)
        if set(test.classes) - set(train.classes):
            raise DataError(
                f"ts_classification: {test_file} has labels outside {train_file}'s @classLabel"
            )
        remap = np.array([train.classes.index(c) for c in test.classes], dtype=np.int64)
        dims = {s.shape[0] for s in train.series + test.series}
        if len(dims) > 1:
            raise DataError(
                f"ts_classification: the cases of {train_file} and {test_file} differ in "
                f"their number of dimensions ({sorted(dims)})"
            )
        self.dataset = train.name
        self.classes = train.classes
        self.dims = dims.pop()
        self.binning = Binning(num_bins, float(limit))
        self.sep = FIRST_BIN + num_bins
        self.first_label = self.sep + 1
        self.vocab_size = self.first_label + len(self.classes)
        try:
            cases = [z_normalise(s) for s in train.series + test.series]
        except DataError as err:
            raise DataError(f"ts_classification: {train_file.parent}: {err}") from None
        labels = np.concatenate([train.labels, remap[test.labels]])
        steps = [-(-c.shape[1] // stride(c.shape[1], max_len)) for c in cases]
        self.seq_len = max(steps) * self.dims + 2
        self.max_len = max_len
        self.cases, self.labels = cases, labels
        self.tokens = np.stack([self.row(c, y) for c, y in zip(cases, labels, strict=True)])
        self.indices = self._split(len(train.series), len(cases), validation_fraction, split_seed)
        self.longest = max(c.shape[1] for c in cases)
        self._knn: dict[str, np.ndarray] = {}

    def _split(
        self, n_train: int, n_all: int, fraction: float, split_seed: int
    ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(split_seed)
        held = np.zeros(n_train, dtype=bool)
        for c in range(len(self.classes)):
            members = np.flatnonzero(self.labels[:n_train] == c)
            held[rng.permutation(members)[: int(fraction * len(members) + 0.5)]] = True
        indices = {
            "train": np.flatnonzero(~held),
            "validation": np.flatnonzero(held),
            "test": np.arange(n_train, n_all),
        }
        empty = [split for split in SPLITS if len(indices[split]) == 0]
        if empty:
            raise DataError(
                f"ts_classification: {self.dataset} leaves the {', '.join(empty)} split(s) "
                f"empty; give more cases or another validation_fraction"
            )
        return indices

    def row(self, case: np.ndarray, label: int) -> np.ndarray:
        """The tokens `[seq_len]` of a z-normalised case `[dims, T]` and its label."""
        kept = case[:, :: stride(case.shape[1], self.max_len)]
        series = self.binning.encode(kept.T.reshape(-1), np.float64(1.0))
        row = np.full(self.seq_len, PAD, dtype=np.int64)
        row[self.seq_len - 2 - len(series) : -2] = series
        row[-2], row[-1] = self.sep, self.first_label + label
        return row

    def rows(self, split: str, positions: np.ndarray) -> Batch:
        """The rows at `positions` of `split`, only the label scored."""
        tokens = torch.from_numpy(self.tokens[self.split_indices(split)[positions]])
        scored = torch.zeros_like(tokens, dtype=torch.bool)
        scored[:, -1] = True
        return Batch(tokens, scored)

    def knn_correct(self, split: str) -> np.ndarray:
        """Whether the 1-NN classifier (`nearest_neighbour_correct`, the train split as
        reference) labels each case of `split` right, computed once per split."""
        if split not in self._knn:
            reference, queries = self.indices["train"], self.split_indices(split)
            rows = flat_padded(self.cases, self.longest)
            self._knn[split] = nearest_neighbour_correct(
                rows[reference],
                self.labels[reference],
                rows[queries],
                self.labels[queries],
                leave_one_out=split == "train",
            )
        return self._knn[split]

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
        correct = self.knn_correct(split)
        count = self.eval_count(split, max_tokens)
        metrics["knn_accuracy"] = float(correct[:count].mean())
        return metrics
