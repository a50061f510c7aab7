"""Pathfinder (Linsley et al. 2018; the Long Range Arena task): are two marked points joined
by one dashed path, among distractor paths?"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from seqlab.data.tasks.image import ImageCodec, check_levels
from seqlab.data.tasks.synthetic import Example, SyntheticTask, check
from seqlab.errors import DataError
from seqlab.registry import TASKS

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}
# The LRA builders' settings of Linsley's generator (lra_benchmarks/data/pathfinder.py): the
# dash ("paddle") length, the gap (1 empty pixel: paddle_margin 1 on either side of a pivot),
# continuity, marker radius, seed distance, the dashes shared by the distractors
# (num_distractor_snakes = this // distractor_length) and the path contrast.
PRESETS = {
    32: {
        "dash_length": 2,
        "continuity": 1.0,
        "marker_radius": 1.5,
        "seed_distance": 7,
        "distractor_dashes": 20,
        "path_value": 191,
    },
    64: {
        "dash_length": 5,
        "continuity": 1.8,
        "marker_radius": 2.5,
        "seed_distance": 12,
        "distractor_dashes": 22,
        "path_value": 204,
    },
}
MARKER_VALUE = 255
PADDING = 1
HEADINGS = 96
TURNS = np.arange(-24, 25, 2)  # in headings: -90 .. 90 degrees by 7.5
SEED_TRIES = 8
PAIR_TRIES = 200
DISTRACTOR_TRIES = 5
POOL_STREAM = 0x9A7_F1D


@dataclass(frozen=True)
class Geometry:
    """What one Pathfinder image looks like (pixels; see `Pathfinder` for the meaning)."""

    size: int
    contour_length: int
    distractor_length: int
    num_distractors: int
    dash_length: int
    gap: int
    continuity: float
    marker_radius: float
    seed_distance: int
    path_value: int


@dataclass
class Drawing:
    """One image: `image` uint8 ``[size, size]``, `label` (1: the markers are on one path),
    the two marker centres (row, column), and each path's pixels (targets first)."""

    image: np.ndarray
    label: int
    markers: list[tuple[int, int]]
    paths: list[np.ndarray] = field(default_factory=list)


@dataclass
class Path:
    """A path being drawn: its dashes (distinct pixels ``[S, 2]`` each, in order) and the
    heading of the last one (an index into `HEADINGS` directions)."""

    dashes: list[np.ndarray]
    heading: int

    def pixels(self) -> np.ndarray:
        return np.concatenate(self.dashes)


@functools.lru_cache(maxsize=16)
def stencils(dash_length: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Per heading h (angle ``2 pi h / HEADINGS``), the step from a dash's last pixel to the
    next dash's first, ``[HEADINGS, 2]``, and a dash's pixels from its first,
    ``[HEADINGS, 4 * dash_length + 1, 2]`` (row, column). Directions are scaled to a
    Chebyshev length of 1, so that a dash spans ``dash_length + 1`` pixels and a gap ``gap``
    pixels along the major axis in every direction; the dash samples are 1/4 pixel apart, so
    its pixels are 8-connected."""
    angles = 2 * np.pi * np.arange(HEADINGS) / HEADINGS
    rows, cols = np.sin(angles), np.cos(angles)
    vectors = np.stack([rows, cols], axis=-1) / np.maximum(np.abs(rows), np.abs(cols))[:, None]
    along = np.linspace(0.0, dash_length, 4 * dash_length + 1)
    jumps = np.rint((gap + 1) * vectors).astype(np.int64)
    dashes = np.rint(along[None, :, None] * vectors[:, None, :]).astype(np.int64)
    return jumps, dashes


class Canvas:
    """The growing image's occupancy, in a frame padded by `border` pixels.

    ``count[p]`` is how many committed dash (or marker) pixels lie within Chebyshev distance
    ``reach = gap + 1`` of p; the frame and the outermost `PADDING` pixels of the image count
    as occupied. A new dash may only cover pixels of count 0, not counting the dash it
    continues, so different paths stay more than ``gap + 1`` pixels apart while the dashes of
    one path are exactly ``gap + 1`` apart (``gap`` empty pixels along the major axis).
    """

    def __init__(self, g: Geometry, rng: np.random.Generator) -> None:
        self.g, self.rng = g, rng
        self.reach = g.gap + 1
        self.border = g.dash_length + g.gap + self.reach + math.ceil(g.marker_radius) + 2
        side = g.size + 2 * self.border
        self.count = np.ones((side, side), dtype=np.int32)
        inner = slice(self.border + PADDING, self.border + g.size - PADDING)
        self.count[inner, inner] = 0
        self.jumps, self.stencil = stencils(g.dash_length, g.gap)
        bend = np.minimum(np.abs(TURNS) * (2 * np.pi / HEADINGS) * g.continuity, np.pi / 2)
        self.turn_weights = np.cos(bend) ** 2

    def mark(self, pixels: np.ndarray, sign: int) -> None:
        """Add (sign 1) or remove (-1) the occupancy of `pixels` ``[S, 2]``."""
        r = self.reach
        for row, col in pixels.tolist():
            self.count[row - r : row + r + 1, col - r : col + r + 1] += sign

    def commit(self, pixels: np.ndarray) -> np.ndarray:
        """Occupy the dash sampled at `pixels` ``[S, 2]``; its distinct pixels, in order."""
        keep = np.ones(len(pixels), dtype=bool)
        keep[1:] = (pixels[1:] != pixels[:-1]).any(axis=1)
        pixels = pixels[keep]
        self.mark(pixels, 1)
        return pixels

    def start_path(self, seed: np.ndarray) -> Path | None:
        """A path's first dash from the pixel `seed`, in the first free of `SEED_TRIES`
        uniformly drawn headings; None if none is free."""
        headings = self.rng.integers(HEADINGS, size=SEED_TRIES)
        pixels = seed + self.stencil[headings]
        ok = np.flatnonzero((self.count[pixels[..., 0], pixels[..., 1]] == 0).all(axis=1))
        if len(ok) == 0:
            return None
        return Path([self.commit(pixels[ok[0]])], int(headings[ok[0]]))

    def extend(self, path: Path) -> bool:
        """Add a dash after the last one of `path`, turning by an angle drawn with weight
        ``cos(min(|turn| * continuity, pi/2))**2`` among the turns whose dash is free; False
        if none is."""
        last = path.dashes[-1]
        headings = (path.heading + TURNS) % HEADINGS
        pixels = last[-1] + self.jumps[headings][:, None, :] + self.stencil[headings]
        self.mark(last, -1)
        free = (self.count[pixels[..., 0], pixels[..., 1]] == 0).all(axis=1)
        self.mark(last, 1)
        weights = self.turn_weights * free
        total = weights.sum()
        if total <= 0:
            return False
        cumulative = np.cumsum(weights)
        choice = min(int(np.searchsorted(cumulative, self.rng.random() * total)), len(TURNS) - 1)
        path.dashes.append(self.commit(pixels[choice]))
        path.heading = int(headings[choice])
        return True

    def grow(self, paths: list[Path], length: int) -> bool:
        """Extend every path to `length` dashes, one dash each in turn."""
        for _ in range(length - 1):
            for path in paths:
                if not self.extend(path):
                    return False
        return True

    def erase(self, paths: list[Path]) -> None:
        for path in paths:
            for dash in path.dashes:
                self.mark(dash, -1)

    def free_pixel(self, rows: slice, cols: slice) -> np.ndarray | None:
        """A uniformly drawn free pixel in the region ``rows, cols``, or None."""
        region = self.count[rows, cols]
        choices = np.flatnonzero(region == 0)
        if len(choices) == 0:
            return None
        row, col = divmod(int(choices[self.rng.integers(len(choices))]), region.shape[1])
        return np.array([rows.start + row, cols.start + col])


def disc(radius: float) -> np.ndarray:
    """Pixel offsets ``[D, 2]`` within Euclidean `radius` of a pixel centre."""
    reach = int(radius)
    grid = np.stack(np.mgrid[-reach : reach + 1, -reach : reach + 1], axis=-1).reshape(-1, 2)
    return grid[(grid**2).sum(axis=1) <= radius**2]


def draw(g: Geometry, rng: np.random.Generator) -> Drawing:
    """One Pathfinder image, as Linsley's generator builds it.

    Two target paths of ``contour_length`` dashes start at seeds ``seed_distance`` apart (the
    first at least ``2 * seed_distance`` from every edge) and grow alternately, a dash each.
    One marker sits on the origin of path A; the other on the far end of A (label 1) or of B
    (label 0), so the two markers are as far apart in both classes. Then up to
    ``num_distractors`` paths of ``distractor_length`` dashes from free pixels (a distractor
    that does not fit in `DISTRACTOR_TRIES` tries is left out, as the original allows).
    """
    label = int(rng.integers(2))
    canvas = Canvas(g, rng)
    b, near = canvas.border, 2 * g.seed_distance
    centre = slice(b + near, b + g.size - near)
    offsets = disc(g.marker_radius)
    for _ in range(PAIR_TRIES):
        seed_a = canvas.free_pixel(centre, centre)
        assert seed_a is not None  # the centre is empty before the targets
        angle = rng.uniform(0.0, 2 * np.pi)
        seed_b = seed_a + np.rint(g.seed_distance * np.array([np.sin(angle), np.cos(angle)]))
        seed_b = seed_b.astype(np.int64)
        paths: list[Path] = []
        for seed in (seed_a, seed_b):
            path = canvas.start_path(seed) if canvas.count[tuple(seed)] == 0 else None
            if path is None:
                break
            paths.append(path)
        if len(paths) == 2 and canvas.grow(paths, g.contour_length):
            owners = [0, 0 if label else 1]
            tips = [paths[0].dashes[0][0], paths[owners[1]].dashes[-1][-1]]
            targets = [path.pixels() for path in paths]
            if all(
                apart(tip + offsets, targets[1 - owner], canvas.reach)
                for tip, owner in zip(tips, owners, strict=True)
            ):
                break
        canvas.erase(paths)
    else:
        raise DataError(
            f"pathfinder: could not place two paths of {g.contour_length} dashes on a "
            f"{g.size}x{g.size} image in {PAIR_TRIES} tries; lower contour_length, dash_length "
            "or seed_distance"
        )
    markers = [tip + offsets for tip in tips]
    for pixels in markers:
        canvas.mark(pixels, 1)
    everything = [*paths]
    whole = slice(b + PADDING, b + g.size - PADDING)
    for _ in range(g.num_distractors):
        for _ in range(DISTRACTOR_TRIES):
            seed = canvas.free_pixel(whole, whole)
            path = None if seed is None else canvas.start_path(seed)
            if path is not None and canvas.grow([path], g.distractor_length):
                everything.append(path)
                break
            if path is not None:
                canvas.erase([path])
    drawn = [path.pixels() - b for path in everything]
    image = np.zeros((g.size, g.size), dtype=np.uint8)
    for pixels in drawn:
        image[pixels[:, 0], pixels[:, 1]] = g.path_value
    for pixels in markers:
        inside = ((pixels >= b) & (pixels < b + g.size)).all(axis=1)
        image[pixels[inside, 0] - b, pixels[inside, 1] - b] = MARKER_VALUE
    centres = [(int(tip[0] - b), int(tip[1] - b)) for tip in tips]
    return Drawing(image, label, centres, drawn)


def apart(pixels: np.ndarray, others: np.ndarray, reach: int) -> bool:
    """Whether every pixel of `pixels` is more than `reach` (Chebyshev) from all `others`."""
    gaps = np.abs(pixels[:, None, :] - others[None, :, :]).max(axis=-1)
    return bool(gaps.min() > reach)


@TASKS.register("pathfinder")
class Pathfinder(SyntheticTask):
    """Pathfinder (LRA): are the two marked points joined by one dashed path?

    Pathfinder (Linsley et al. 2018; Long Range Arena, Tay et al. 2020): a ``size`` x
    ``size`` grayscale image of curved dashed paths, read pixel by pixel; the label says
    whether the two circles lie on the same path. Images are drawn on the fly by our own
    vectorised generator after Linsley's (``draw``): two target paths grow from nearby seeds,
    one marker on the origin of path A and the other on the far end of A (connected) or of B
    (not), so the marker distance does not give the label away; distractor paths fill the
    rest; paths stay more than ``gap + 1`` pixels apart, dashes of one path exactly
    ``gap + 1``. Labels are drawn 50/50.

    ``difficulty`` sets ``contour_length`` (dashes per target path) as LRA's splits do: easy
    6 (``curv_baseline``), intermediate 9, hard 14 (LRA's Pathfinder); then
    ``distractor_length = contour_length // 3`` and ``num_distractors =
    distractor_dashes // distractor_length`` (20 dashes at 32 pixels, 22 at 64). The rest
    follows the LRA builder of the size (at most 32: dash_length 2, continuity 1.0,
    marker_radius 1.5, seed_distance 7, paths at 191; above: 5, 1.8, 2.5, 12, paths at 204);
    markers are 255, the background 0. Any of these may be set; ``gap`` is the empty pixels
    between dashes (LRA: 1; 0 draws solid paths). Not matched: anti-aliasing and line
    thickness (paths are one pixel wide).

    Ids and rows follow `ImageCodec` with 2 classes (2: not connected, 3: connected) and
    ``levels`` pixel levels: the pixels in raster order, ANSWER, the label (scored);
    ``seq_len = size**2 + 2``. Each example is a pure function of a sub-seed drawn in order
    from the step's generator, and the sub-seed is the held-out partition key, so
    validation and test images come from seeds training never uses. ``train_examples``: 0
    draws a new image for every training row; N > 0 draws training rows from a fixed pool of
    N images (as LRA's fixed data set), each drawn on first use and kept in memory. One image
    takes about 2 ms of CPU (10 ms at 32 hard, where most pairs of 14-dash paths do not fit
    and are redrawn).
    """

    def __init__(
        self,
        size: int = 32,
        difficulty: str = "hard",
        contour_length: int | None = None,
        distractor_length: int | None = None,
        num_distractors: int | None = None,
        dash_length: int | None = None,
        gap: int = 1,
        continuity: float | None = None,
        marker_radius: float | None = None,
        seed_distance: int | None = None,
        levels: int = 256,
        train_examples: int = 0,
        eval_examples: int = 512,
    ) -> None:
        check(
            isinstance(train_examples, int) and train_examples >= 0,
            f"pathfinder: train_examples must be an integer >= 0 (0: a new image at every "
            f"draw), got {train_examples!r}",
        )
        check(
            isinstance(size, int) and size >= 8,
            f"pathfinder: size must be an integer >= 8 (LRA: 32 or 64), got {size!r}",
        )
        check(
            difficulty in DIFFICULTIES,
            f"pathfinder: difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}",
        )
        preset = PRESETS[32 if size <= 32 else 64]
        if contour_length is None:
            contour_length = DIFFICULTIES[difficulty]
        if distractor_length is None and isinstance(contour_length, int):
            distractor_length = max(1, contour_length // 3)
        if num_distractors is None and isinstance(distractor_length, int) and distractor_length:
            num_distractors = preset["distractor_dashes"] // distractor_length
        geometry = Geometry(
            size=size,
            contour_length=contour_length,
            distractor_length=distractor_length,
            num_distractors=num_distractors,
            dash_length=preset["dash_length"] if dash_length is None else dash_length,
            gap=gap,
            continuity=preset["continuity"] if continuity is None else float(continuity),
            marker_radius=preset["marker_radius"] if marker_radius is None else marker_radius,
            seed_distance=preset["seed_distance"] if seed_distance is None else seed_distance,
            path_value=preset["path_value"],
        )
        check_geometry(geometry)
        self.geometry = geometry
        self.codec = ImageCodec(2, check_levels("pathfinder", levels), size * size)
        self.vocab_size = self.codec.vocab_size
        self.seq_len = self.codec.seq_len
        self.train_examples = train_examples
        self._pool: dict[int, tuple[int, np.ndarray, int]] = {}
        super().__init__(eval_examples=eval_examples)

    def sample(self, rng: np.random.Generator, split: str) -> Example:
        seed = self.sub_seed(rng, split)
        drawing = draw(self.geometry, np.random.default_rng(seed))
        return self.example(seed, drawing.image, drawing.label)

    def sub_seed(self, rng: np.random.Generator, split: str) -> int:
        """The next sub-seed of `split` from `rng`: an image is a pure function of its
        sub-seed, which is also its held-out partition key."""

        def draw_seed() -> tuple[bytes, int]:
            seed = int(rng.integers(2**63))
            return seed.to_bytes(8, "little"), seed

        return self.first_in_split(split, draw_seed)

    def example(self, seed: int, image: np.ndarray, label: int) -> Example:
        tokens, scored = self.codec.encode(image[None], np.array([label]))
        return Example(tokens[0], scored[0], info=label, key=seed.to_bytes(8, "little"))

    def examples(self, rng: np.random.Generator, split: str, n: int) -> list[Example]:
        """With ``train_examples`` set, training rows are uniform draws from a fixed pool
        whose image i is a pure function of i, drawn when first used and then kept (as uint8
        pixels: ``train_examples * size**2`` bytes at most)."""
        if split != "train" or not self.train_examples:
            return super().examples(rng, split, n)
        rows = []
        for index in rng.integers(self.train_examples, size=n).tolist():
            if index not in self._pool:
                seed = self.sub_seed(np.random.default_rng([POOL_STREAM, index]), split)
                drawing = draw(self.geometry, np.random.default_rng(seed))
                self._pool[index] = (seed, drawing.image, drawing.label)
            rows.append(self.example(*self._pool[index]))
        return rows


def check_geometry(g: Geometry) -> None:
    """ConfigError unless the geometry options are in range."""
    for name in ("contour_length", "distractor_length", "dash_length", "seed_distance"):
        value = getattr(g, name)
        check(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"pathfinder: {name} must be a positive integer, got {value!r}",
        )
    for name in ("num_distractors", "gap"):
        value = getattr(g, name)
        check(
            isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"pathfinder: {name} must be an integer >= 0, got {value!r}",
        )
    check(g.continuity > 0, f"pathfinder: continuity must be positive, got {g.continuity!r}")
    check(
        g.marker_radius >= 0,
        f"pathfinder: marker_radius must be >= 0, got {g.marker_radius!r}",
    )
    check(
        g.seed_distance > g.gap + 1 + int(g.marker_radius),
        "pathfinder: seed_distance must exceed gap + 1 + marker_radius (paths and markers "
        f"stay more than gap + 1 pixels apart), got seed_distance={g.seed_distance} "
        f"gap={g.gap} marker_radius={g.marker_radius}",
    )
    check(
        g.size > 4 * g.seed_distance,
        f"pathfinder: size must exceed 4 * seed_distance (the first seed lies at least "
        f"2 * seed_distance from every edge), got size={g.size} seed_distance={g.seed_distance}",
    )
