"""Sequential image classification on a user's images, and the pixel-row format that every
image task shares (`ImageCodec`: `pathfinder` writes its rows with it too)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqlab.data.tasks.base import SPLITS, IndexedTask
from seqlab.data.tasks.synthetic import check
from seqlab.errors import ConfigError, DataError
from seqlab.objectives.base import Batch
from seqlab.registry import TASKS

ANSWER = 1
FIRST_CLASS = 2
PIXEL_VALUES = 256
PNG_SUFFIXES = (".png",)


@dataclass(frozen=True)
class ImageCodec:
    """Rows of pixels then a scored class token: the format of every image task.

    Ids: 0 PAD (never in a row), 1 ANSWER, ``2 .. 2 + num_classes - 1`` the classes, then
    ``levels`` pixel levels: a uint8 value v is the token ``2 + num_classes + v * levels // 256``.
    A row is the image's values in raster order (row by row, the channels of a pixel
    together), ANSWER, then the class (the only scored token): ``pixels + 2`` tokens, as
    ListOps ends on ANSWER and its value."""

    num_classes: int
    levels: int
    pixels: int

    @property
    def first_pixel(self) -> int:
        return FIRST_CLASS + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.first_pixel + self.levels

    @property
    def seq_len(self) -> int:
        return self.pixels + 2

    def encode(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`images` uint8 ``[n, ...]`` (``pixels`` values each) and `labels` ``[n]`` as
        `(tokens [n, seq_len] int64, scored [n, seq_len] bool)`."""
        n = len(images)
        values = images.reshape(n, -1).astype(np.int64)
        if values.shape[1] != self.pixels:
            raise RuntimeError(f"images of {values.shape[1]} values; rows hold {self.pixels}")
        tokens = np.empty((n, self.seq_len), dtype=np.int64)
        tokens[:, :-2] = self.first_pixel + values * self.levels // PIXEL_VALUES
        tokens[:, -2] = ANSWER
        tokens[:, -1] = FIRST_CLASS + np.asarray(labels, dtype=np.int64)
        scored = np.zeros((n, self.seq_len), dtype=bool)
        scored[:, -1] = True
        return tokens, scored


def check_levels(name: str, levels: object) -> int:
    """Validate the ``levels`` option (pixel levels, 2 .. 256)."""
    check(
        isinstance(levels, int) and not isinstance(levels, bool) and 2 <= levels <= PIXEL_VALUES,
        f"{name}: levels must be an integer in 2 .. {PIXEL_VALUES}, got {levels!r}",
    )
    return levels


@TASKS.register("image")
class ImageTask(IndexedTask):
    """Sequential classification of a user's images, read pixel by pixel.

    Sequential image classification (sequential MNIST / the LRA ``image`` task on any data).

    ``path`` is one of:

    * an ``.npz`` file with arrays ``images`` (uint8 ``[N, H, W]`` or ``[N, H, W, C]``) and
      ``labels`` (integers ``[N]``, classes ``0 .. K - 1``, K = the largest label + 1);
    * an ``.npy`` file of images, with ``labels_path`` the ``.npy`` file of labels;
    * a folder with one subfolder per class (classes in sorted name order) of ``.png``
      images of one size and mode (needs Pillow; grayscale, RGB or RGBA kept as they are).

    The examples are shuffled once by ``split_seed`` and cut into test (the first
    ``test_fraction``), validation (the next ``validation_fraction``) and train (the rest);
    each split must get at least one image. ``grayscale`` averages the channels (LRA reads
    CIFAR-10 in grayscale); ``levels`` quantises the 256 values. Rows follow `ImageCodec`:
    the pixels in raster order (channels of a pixel together), ANSWER, then the class token
    (scored), so ``seq_len = H * W * C + 2``; accuracy is the classification accuracy.

    Training rows of step s are rows ``s * B .. (s + 1) * B`` of an endless sequence of
    epochs, each a permutation of the train split seeded by ``(seed, epoch)``: a pure
    function of (seed, split, step). Evaluation reads a split in order (``max_tokens``
    keeps a prefix).
    """

    def __init__(
        self,
        path: str,
        labels_path: str | None = None,
        grayscale: bool = False,
        levels: int = 256,
        validation_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        check_levels("image", levels)
        check(
            0 < validation_fraction < 1
            and 0 < test_fraction < 1
            and validation_fraction + test_fraction < 1,
            "image: need 0 < validation_fraction, test_fraction and their sum < 1, got "
            f"validation_fraction={validation_fraction} test_fraction={test_fraction}",
        )
        images, labels = load_images(Path(path).expanduser(), labels_path)
        if grayscale and images.ndim == 4:
            images = np.rint(images.mean(axis=3)).astype(np.uint8)
        self.images = images
        self.labels = labels
        self.num_classes = int(labels.max()) + 1
        self.codec = ImageCodec(self.num_classes, levels, int(np.prod(images.shape[1:])))
        self.vocab_size = self.codec.vocab_size
        self.seq_len = self.codec.seq_len
        order = np.random.default_rng(split_seed).permutation(len(images))
        n_test = int(len(images) * test_fraction)
        n_validation = int(len(images) * validation_fraction)
        self.indices = {
            "test": order[:n_test],
            "validation": order[n_test : n_test + n_validation],
            "train": order[n_test + n_validation :],
        }
        empty = [split for split in SPLITS if len(self.indices[split]) == 0]
        if empty:
            raise DataError(
                f"image: {len(images)} images leave the {', '.join(empty)} split(s) empty; "
                "give more images or larger fractions"
            )

    def rows(self, split: str, positions: np.ndarray) -> Batch:
        """The rows at `positions` of `split`'s examples."""
        index = self.split_indices(split)[positions]
        tokens, scored = self.codec.encode(self.images[index], self.labels[index])
        return Batch(torch.from_numpy(tokens), torch.from_numpy(scored))


def load_images(path: Path, labels_path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 ``[N, H, W]`` or ``[N, H, W, C]``) and labels (int64 ``[N]``) from an
    ``.npz``, an ``.npy`` with `labels_path`, or a folder of class subfolders of PNGs,
    validated."""
    if not path.exists():
        raise ConfigError(f"image: path {str(path)!r} does not exist")
    if path.is_dir():
        if labels_path is not None:
            raise ConfigError("image: labels_path is for an .npy of images, not a folder")
        images, labels = read_png_folder(path)
    elif path.suffix == ".npz":
        if labels_path is not None:
            raise ConfigError("image: an .npz holds its labels; leave labels_path unset")
        archive = read_numpy(path)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"image: {path} is not an .npz archive")
        with archive:
            missing = [key for key in ("images", "labels") if key not in archive.files]
            if missing:
                raise DataError(
                    f"image: {path} lacks array(s) {missing}; it has {sorted(archive.files)} "
                    "(expected 'images' and 'labels')"
                )
            images, labels = archive["images"], archive["labels"]
    elif path.suffix == ".npy":
        if labels_path is None:
            raise ConfigError(f"image: {path} holds only images; set labels_path to an .npy")
        images, labels = read_numpy(path), read_numpy(Path(labels_path).expanduser())
        for array, file in ((images, path), (labels, labels_path)):
            if not isinstance(array, np.ndarray):
                raise DataError(f"image: {file} is not an .npy array")
    else:
        raise ConfigError(
            f"image: path must be an .npz, an .npy or a folder of class subfolders, got {path}"
        )
    return check_images(images, labels, str(path))


def read_numpy(path: Path) -> np.ndarray | np.lib.npyio.NpzFile:
    """`np.load` of a user's file without pickles; a missing or unreadable file raises
    ConfigError/DataError naming it."""
    if not path.is_file():
        raise ConfigError(f"image: {str(path)!r} is not a file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"image: cannot read {path} as a numpy file: {err}") from None


def check_images(images: np.ndarray, labels: np.ndarray, source: str) -> tuple[np.ndarray, ...]:
    """Images as uint8 ``[N, H, W(, C)]`` and labels as int64 ``[N]``, or a DataError naming
    what was expected."""
    if images.ndim not in (3, 4) or images.shape[0] == 0 or 0 in images.shape[1:]:
        raise DataError(
            f"image: expected images [N, H, W] or [N, H, W, C] with N >= 1, got shape "
            f"{list(images.shape)} in {source}"
        )
    if images.dtype != np.uint8:
        raise DataError(f"image: expected uint8 pixels (0 .. 255), got {images.dtype} in {source}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"image: expected one label per image ([{len(images)}]), got labels of shape "
            f"{list(labels.shape)} in {source}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        low = labels.min() if np.issubdtype(labels.dtype, np.number) else "?"
        raise DataError(
            f"image: expected integer labels >= 0, got {labels.dtype} labels (minimum {low}) "
            f"in {source}"
        )
    return images, labels.astype(np.int64)


def read_png_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A folder of class subfolders of PNGs as (images, labels); classes in sorted order."""
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError(
            "image: reading a folder of PNGs needs Pillow (pip install pillow); or save your "
            "images as an .npz with arrays 'images' and 'labels'"
        ) from None
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image: {root} has no class subfolders (one folder per class of PNGs)")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in PNG_SUFFIXES or file.name.startswith("."):
                continue
            try:
                with Image.open(file) as picture:
                    mode = picture.mode if picture.mode in ("L", "RGB", "RGBA") else "RGB"
                    array = np.asarray(picture.convert(mode), dtype=np.uint8)
            except OSError as err:
                raise DataError(f"image: cannot read {file} as an image: {err}") from None
            if images and array.shape != images[0].shape:
                raise DataError(
                    f"image: {file} has shape {list(array.shape)}, the first image "
                    f"{list(images[0].shape)}; all images must have one size and mode"
                )
            images.append(array)
            labels.append(label)
    if not images:
        raise DataError(f"image: no .png files in the class subfolders of {root}")
    return np.stack(images), np.array(labels, dtype=np.int64)
