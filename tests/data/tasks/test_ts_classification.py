"""The `ts_classification` task: the `.ts` reader (univariate, multivariate, missing values,
one-line errors), rows of z-normalised binned series with the label alone scored, stratified
splits, seeded batches, the 1-NN reference, and a tiny model that learns rising vs falling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.timeseries import FIRST_BIN, PAD
from seqlab.data.tasks.ts_classification import (
    TimeSeriesClassification,
    nearest_neighbour_correct,
    read_ts,
    stride,
    z_normalise,
)
from seqlab.errors import ConfigError, DataError
from seqlab.harness.grid import HIGHER_IS_BETTER
from seqlab.objectives import Batch, build_objective
from tests.helpers import train_steps

UNIVARIATE = """# a comment
@problemName Tiny
@timeStamps false
@missing true
@univariate true
@equalLength true
@seriesLength 4
@classLabel true up down
@data
1,2,3,4:up
4,?,2,1:down
"""

MULTIVARIATE = """@problemName Multi
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b
@data
1,2,3:10,20,30:b
5,6:7,8:a
"""


def write(folder, name, train, test):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_TRAIN.ts").write_text(train)
    (folder / f"{name}_TEST.ts").write_text(test)
    return folder


def ts_text(series, labels, classes):
    """A univariate `.ts` file of `series` (rows of values) and their labels."""
    rows = [
        ",".join(repr(float(v)) for v in s) + f":{classes[y]}"
        for s, y in zip(series, labels, strict=True)
    ]
    header = f"@problemName Synthetic\n@univariate true\n@classLabel true {' '.join(classes)}\n"
    return header + "@data\n" + "\n".join(rows) + "\n"


def ramps(n, length, seed):
    """`n` noisy rising (class 0) or falling (class 1) series, classes alternating."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    slope = np.where(labels == 0, 1.0, -1.0)[:, None] * rng.uniform(0.5, 2, (n, 1))
    series = slope * np.arange(length) + rng.normal(0, 1.5, (n, length)) + rng.normal(0, 5, (n, 1))
    return series, labels


def write_ramps(folder, n_train=40, n_test=20, length=12):
    """A folder of `Ramps_TRAIN.ts` and `Ramps_TEST.ts`: rising vs falling series."""
    classes = ("rise", "fall")
    train, test = ramps(n_train, length, 0), ramps(n_test, length, 1)
    return write(folder, "Ramps", ts_text(*train, classes), ts_text(*test, classes))


def ramp_task(tmp_path, n_train=40, n_test=20, length=12, **options):
    folder = write_ramps(tmp_path / "ramps", n_train, n_test, length)
    options = {"path": str(folder), "num_bins": 16, **options}
    return build_task(ExperimentConfig(task=TaskConfig(name="ts_classification", options=options)))


def test_reader_reads_univariate_multivariate_and_missing_values(tmp_path):
    (tmp_path / "u.ts").write_text(UNIVARIATE)
    tiny = read_ts(tmp_path / "u.ts")
    assert tiny.name == "Tiny" and tiny.classes == ("up", "down")
    assert tiny.labels.tolist() == [0, 1]
    assert tiny.series[0].tolist() == [[1, 2, 3, 4]] and math.isnan(tiny.series[1][0, 1])
    (tmp_path / "m.ts").write_text(MULTIVARIATE)
    multi = read_ts(tmp_path / "m.ts")
    assert [s.shape for s in multi.series] == [(2, 3), (2, 2)]
    assert multi.series[0][1].tolist() == [10, 20, 30] and multi.labels.tolist() == [1, 0]


def test_z_normalise_fills_gaps_and_scales_each_dimension():
    case = np.array([[4.0, math.nan, 2.0, 1.0], [math.nan, 5.0, 5.0, 5.0]])
    z = z_normalise(case)
    filled = np.array([4.0, 3.0, 2.0, 1.0])
    assert np.allclose(z[0], (filled - filled.mean()) / filled.std())
    assert z[1].tolist() == [0, 0, 0, 0]  # held before the first value, then constant
    with pytest.raises(DataError):
        z_normalise(np.array([[math.nan, math.nan]]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@classLabel true a b\n1,2:a\n", "data line before @data"),
        ("@classLabel true a b\n", "no @data"),
        ("@univariate true\n@data\n1,2:a\n", "no @classLabel"),
        ("@classLabel false\n@data\n1,2:a\n", "@classLabel true"),
        ("@targetLabel true\n@data\n1,2:0.5\n", "regression"),
        ("@timeStamps true\n@classLabel true a\n@data\n(0,1):a\n", "timeStamps"),
        ("@classLabel true a b\n@data\n1,2:c\n", "label 'c'"),
        ("@classLabel true a b\n@data\n1,x:a\n", "'x' is not a number"),
        ("@dimensions 2\n@classLabel true a\n@data\n1,2:a\n", "expected 2 dimension"),
        ("@classLabel true a\n@data\n1,2:3:a\n1:2:a\n", "differ"),
        ("@classLabel true a\n@data\n1,2:3,4:a\n1,2:a\n", "expected 2 dimension"),
        ("@seriesLength 3\n@classLabel true a\n@data\n1,2:a\n", "@seriesLength says 3"),
        ("@equalLength true\n@classLabel true a\n@data\n1,2:a\n1:a\n", "differ in length"),
        ("@classLabel true a\n@data\n", "no cases"),
        ("@classLabel true a\n@data\n1,2\n", "expected values"),
    ],
)
def test_malformed_files_raise_one_line_errors(tmp_path, text, expected):
    (tmp_path / "bad.ts").write_text(text)
    with pytest.raises(DataError, match=expected) as err:
        read_ts(tmp_path / "bad.ts")
    assert "\n" not in str(err.value) and "bad.ts" in str(err.value)


def test_rows_interleave_dimensions_then_sep_and_the_label(tmp_path):
    train = MULTIVARIATE + "1,2,3:10,20,30:b\n5,6:7,8:a\n"
    folder = write(tmp_path / "m", "Multi", train, MULTIVARIATE)
    task = TimeSeriesClassification(
        path=str(folder), num_bins=4, limit=2.0, validation_fraction=0.5
    )
    # ids: PAD, 4 bins, SEP, 2 labels; the longest case has 3 steps of 2 dims
    assert (task.sep, task.first_label, task.vocab_size, task.seq_len) == (5, 6, 8, 3 * 2 + 2)
    # case 0 rises in both dims: z = -1.22, 0, 1.22 -> bins 0, 2, 3 (width 1 over [-2, 2])
    assert task.tokens[0].tolist() == [1, 1, 3, 3, 4, 4, 5, 7]
    # case 1 is shorter: left-padded; z = -1, 1 -> bins 1, 3
    assert task.tokens[1].tolist() == [PAD, PAD, 2, 2, 4, 4, 5, 6]


def test_max_len_keeps_a_uniform_stride(tmp_path):
    assert [stride(10, None), stride(10, 10), stride(10, 5), stride(10, 4), stride(3, 8)] == [
        1,
        1,
        2,
        3,
        1,
    ]
    values = np.arange(10.0)
    text = ts_text([values, -values, values, -values], [0, 1, 0, 1], ("a", "b"))
    folder = write(tmp_path / "s", "S", text, text)
    task = TimeSeriesClassification(
        path=str(folder), num_bins=1000, max_len=4, validation_fraction=0.5
    )
    assert task.seq_len == 4 + 2  # steps 0, 3, 6, 9
    kept = task.tokens[0, :4] - FIRST_BIN
    z = (values - values.mean()) / values.std()
    assert np.allclose((kept + 0.5) * task.binning.width - 3.0, z[::3], atol=task.binning.width)


def test_splits_are_stratified_and_test_is_the_test_file(tmp_path):
    task = ramp_task(tmp_path, n_train=40, n_test=20, validation_fraction=0.25, split_seed=3)
    validation, train = task.indices["validation"], task.indices["train"]
    assert len(validation) == 10 and len(train) == 30
    assert np.bincount(task.labels[validation]).tolist() == [5, 5]
    assert not set(validation) & set(train) and set(validation) | set(train) == set(range(40))
    assert task.indices["test"].tolist() == list(range(40, 60))
    other = ramp_task(tmp_path, validation_fraction=0.25, split_seed=4)
    assert other.indices["validation"].tolist() != validation.tolist()


def test_batches_are_a_pure_function_of_seed_split_and_step_with_the_label_scored(tmp_path):
    task = ramp_task(tmp_path)
    one = task.batch("train", 7, 8, seed=1)
    again = ramp_task(tmp_path).batch("train", 7, 8, seed=1)
    assert torch.equal(one.tokens, again.tokens)
    assert not torch.equal(one.tokens, task.batch("train", 8, 8, seed=1).tokens)
    assert not torch.equal(one.tokens, task.batch("train", 7, 8, seed=2).tokens)
    halves = [task.batch("train", 7, 4, seed=1, rank=r, world_size=2).tokens for r in (0, 1)]
    assert torch.equal(torch.cat(halves), one.tokens)
    assert one.mask[:, -1].all() and int(one.mask.sum()) == 8
    assert (one.tokens[:, -2] == task.sep).all() and (one.tokens[:, -1] >= task.first_label).all()
    with pytest.raises(DataError):
        task.batch("dev", 0, 2, seed=0)


@pytest.mark.parametrize("name", ["ar", "masked_diffusion"])
def test_predict_never_sees_the_label(tmp_path, name):
    torch.manual_seed(0)
    task = ramp_task(tmp_path)
    objective = build_objective(name, task.vocab_size)
    config = ModelConfig(
        d_model=16, n_layers=1, n_heads=2, vocab_size=objective.model_vocab_size(task.vocab_size)
    )
    model = seqlab.build_model(config).double().eval()
    batch = next(task.eval_batches("test", 8))
    flipped = batch.tokens.clone()
    flipped[:, -1] = 2 * task.first_label + 1 - flipped[:, -1]
    with torch.no_grad():
        guess, scored = objective.predict(model, batch)
        guess_flipped, _ = objective.predict(model, Batch(flipped, batch.mask))
    assert scored[:, -1].all() and int(scored.sum()) == 8
    assert torch.equal(guess[:, -1], guess_flipped[:, -1])


def test_nearest_neighbour_by_hand():
    train = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1])
    test = np.array([[1.0, 0.0], [9.0, 9.0], [0.0, 0.9]])
    assert nearest_neighbour_correct(train, labels, test, np.array([0, 0, 1])).tolist() == [
        True,
        False,
        True,
    ]
    # leave-one-out on the training set: rows 0 and 2 are each other's nearest, row 1's is 2
    assert nearest_neighbour_correct(train, labels, train, labels, leave_one_out=True).tolist() == [
        False,
        True,
        False,
    ]


def test_options_and_paths_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="scripts/ucr.sh"):
        TimeSeriesClassification(path=str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="exactly one"):
        TimeSeriesClassification(path=str(tmp_path / "empty"))
    for bad in ({"num_bins": 1}, {"max_len": 0}, {"limit": 0}, {"validation_fraction": 1.0}):
        with pytest.raises(ConfigError):
            ramp_task(tmp_path, **bad)
    with pytest.raises(DataError, match="validation"):
        ramp_task(tmp_path, n_train=2, validation_fraction=0.2)


def test_a_tiny_model_learns_rising_versus_falling(tmp_path):
    torch.manual_seed(0)
    task = ramp_task(tmp_path)
    objective = build_objective("ar", task.vocab_size)
    model = seqlab.build_model(
        ModelConfig(
            mixer="attention", d_model=32, n_layers=1, n_heads=2, vocab_size=task.vocab_size
        )
    )
    train_steps(model, objective, task, steps=100, batch_size=16, lr=3e-3)
    metrics = task.evaluate(model, objective, split="test", batch_size=8)
    assert metrics["accuracy"] >= 0.9 and metrics["nll"] < 0.4  # chance: 0.5 and ln 2
    assert metrics["knn_accuracy"] >= 0.9 and metrics["tokens"] == 20
    assert task.metric_of_record == "accuracy" and HIGHER_IS_BETTER["knn_accuracy"] is True
