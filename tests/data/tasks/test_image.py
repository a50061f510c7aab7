"""The `image` task: a user's arrays or PNG folders become pixel rows with a scored class,
split deterministically and disjointly, with one-line errors for bad data."""

import math

import numpy as np
import pytest

import seqlab
from seqlab.config import ExperimentConfig, ModelConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.image import ImageTask
from seqlab.errors import ConfigError, DataError
from seqlab.objectives import build_objective


def make(**options) -> ImageTask:
    return build_task(ExperimentConfig(task=TaskConfig(name="image", options=options)))


def dataset(n=30, shape=(5, 4), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return images, np.arange(n) % classes


def save_npz(tmp_path, images, labels, name="data.npz"):
    path = tmp_path / name
    np.savez(path, images=images, labels=labels)
    return str(path)


def decode(task, tokens):
    """(values, label) of a row."""
    tokens = tokens.numpy()
    assert tokens[-2] == 1
    return tokens[:-2] - task.codec.first_pixel, int(tokens[-1]) - 2


def test_rows_are_the_pixels_in_raster_order_then_the_class(tmp_path):
    images, labels = dataset()
    task = make(path=save_npz(tmp_path, images, labels))
    assert task.seq_len == 5 * 4 + 2 and task.vocab_size == 2 + 3 + 256
    seen = []
    for split in ("train", "validation", "test"):
        for batch in task.eval_batches(split, 7):
            assert batch.mask[:, -1].all() and batch.mask.sum() == len(batch.tokens)
            for row in batch.tokens:
                values, label = decode(task, row)
                index = int(np.flatnonzero((images.reshape(30, -1) == values).all(axis=1))[0])
                assert labels[index] == label
                seen.append(index)
    assert sorted(seen) == list(range(30))  # the splits partition the images
    assert [len(task.indices[s]) for s in ("train", "validation", "test")] == [24, 3, 3]


def test_channels_of_a_pixel_are_read_together_and_grayscale_averages(tmp_path):
    images = np.zeros((10, 2, 2, 3), dtype=np.uint8)
    images[:, 0, 1] = [10, 20, 30]
    labels = np.zeros(10, dtype=np.int64)
    path = save_npz(tmp_path, images, labels)
    values, _ = decode(make(path=path), make(path=path).batch("train", 0, 1, seed=0).tokens[0])
    assert values.tolist() == [0, 0, 0, 10, 20, 30, 0, 0, 0, 0, 0, 0]
    gray = make(path=path, grayscale=True)
    values, _ = decode(gray, gray.batch("train", 0, 1, seed=0).tokens[0])
    assert values.tolist() == [0, 20, 0, 0] and gray.seq_len == 6


def test_levels_quantise_the_values(tmp_path):
    images = np.array([[[0, 63, 64, 255]]] * 10, dtype=np.uint8)
    task = make(path=save_npz(tmp_path, images, np.zeros(10, dtype=int)), levels=4)
    values, _ = decode(task, task.batch("train", 0, 1, seed=0).tokens[0])
    assert values.tolist() == [0, 0, 1, 3] and task.vocab_size == 2 + 1 + 4


def test_npy_images_with_a_labels_file(tmp_path):
    images, labels = dataset()
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    task = make(path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / "y.npy"))
    npz = make(path=save_npz(tmp_path, images, labels))
    assert (
        task.batch("train", 2, 5, seed=1).tokens == npz.batch("train", 2, 5, seed=1).tokens
    ).all()


def test_a_folder_of_class_subfolders_of_pngs(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    images, _ = dataset(n=12, shape=(3, 4))
    for i, image in enumerate(images):
        folder = tmp_path / ("dog" if i % 2 else "cat")
        folder.mkdir(exist_ok=True)
        image_module.fromarray(image).save(folder / f"{i}.png")
    task = make(path=str(tmp_path), validation_fraction=0.25, test_fraction=0.25)
    assert task.num_classes == 2 and task.images.shape == (12, 3, 4)
    for image, label in zip(task.images, task.labels, strict=True):
        index = int(np.flatnonzero((images == image).all(axis=(1, 2)))[0])
        assert label == index % 2  # cat (even) is class 0, dog class 1
    image_module.fromarray(images[0, :2]).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match="all images must have one size and mode"):
        make(path=str(tmp_path))


def test_training_batches_are_seeded_epochs_over_the_train_split(tmp_path):
    task = make(path=save_npz(tmp_path, *dataset()))
    again = make(path=save_npz(tmp_path, *dataset(), name="copy.npz"))
    first = task.batch("train", 1, 6, seed=3)
    assert (first.tokens == again.batch("train", 1, 6, seed=3).tokens).all()
    assert not (first.tokens == task.batch("train", 1, 6, seed=4).tokens).all()
    assert (
        task.batch("train", 1, 3, seed=3, rank=1, world_size=2).tokens == first.tokens[3:]
    ).all()
    epoch = np.concatenate([task.batch("train", s, 6, seed=3).tokens.numpy() for s in range(4)])
    assert len({row.tobytes() for row in epoch}) == 24  # 4 x 6 rows: each train image once
    train = {row.numpy().tobytes() for b in task.eval_batches("train", 8) for row in b.tokens}
    assert {row.tobytes() for row in epoch} == train


def test_evaluate_scores_a_tiny_model(tmp_path):
    task = make(path=save_npz(tmp_path, *dataset()))
    model = seqlab.build_model(
        ModelConfig(d_model=16, n_layers=1, n_heads=2, vocab_size=task.vocab_size)
    )
    metrics = task.evaluate(model, build_objective("ar"), split="test", batch_size=2)
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["nll"])
    assert metrics["tokens"] == 3
    with pytest.warns(UserWarning, match="scores 2 of the"):
        assert len(list(task.eval_batches("validation", 1, max_tokens=2 * task.seq_len))) == 2


def test_bad_data_raises_data_errors(tmp_path):
    images, labels = dataset()
    cases = [
        (images.astype(np.float32), labels, "expected uint8 pixels"),
        (images[:, 0], labels, "expected images \\[N, H, W\\]"),
        (images, labels[:-1], "expected one label per image"),
        (images, labels - 1, "expected integer labels >= 0"),
        (images, labels.astype(float), "expected integer labels >= 0"),
        (images[:5], labels[:5], "leave the validation, test split\\(s\\) empty"),
    ]
    for i, (x, y, message) in enumerate(cases):
        with pytest.raises(DataError, match=message):
            make(path=save_npz(tmp_path, x, y, name=f"{i}.npz"))
    np.savez(tmp_path / "keys.npz", x=images, y=labels)
    with pytest.raises(DataError, match="lacks array\\(s\\) \\['images', 'labels'\\]"):
        make(path=str(tmp_path / "keys.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        make(path=str(tmp_path / "junk.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        make(path=str(tmp_path / "empty"))


def test_bad_options_raise_config_errors(tmp_path):
    path = save_npz(tmp_path, *dataset())
    np.save(tmp_path / "x.npy", dataset()[0])
    cases = [
        ({"path": str(tmp_path / "missing.npz")}, "does not exist"),
        ({"path": str(tmp_path / "x.npy")}, "set labels_path"),
        ({"path": path, "labels_path": "y.npy"}, "leave labels_path unset"),
        ({"path": path, "levels": 1}, "levels must be an integer in 2 .. 256"),
        ({"path": path, "test_fraction": 0.95}, "their sum < 1"),
        ({"path": str(tmp_path / "x.npy"), "labels_path": "nowhere.npy"}, "is not a file"),
        ({"path": path, "shape": 3}, "unknown option"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            make(**options)
    (tmp_path / "data.txt").write_text("1 2 3")
    with pytest.raises(ConfigError, match="must be an .npz, an .npy or a folder"):
        make(path=str(tmp_path / "data.txt"))
