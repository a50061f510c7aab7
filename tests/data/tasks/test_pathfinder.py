"""Pathfinder: the label says whether the two markers lie on one path, checked by a flood fill
that bridges the dashes' gaps; rows, seeding, balance, the training pool and option errors."""

from collections import deque

import numpy as np
import pytest

from seqlab.config import ExperimentConfig, TaskConfig
from seqlab.data.tasks import build_task
from seqlab.data.tasks.pathfinder import MARKER_VALUE, Pathfinder, draw
from seqlab.errors import ConfigError

TINY = {"size": 17, "contour_length": 3, "dash_length": 1, "seed_distance": 4}
TINY_DRAWING = {
    **TINY,
    **{"size": 13, "seed_distance": 3, "marker_radius": 0},
    **{"num_distractors": 1, "distractor_length": 2},
}
# draw(rng 0) and draw(rng 1) of TINY_DRAWING, checked by hand: X marks, o path pixels.
CONNECTED = """
.............
..X..........
...o.........
.....o.......
.....o.......
.o...........
.o...oX......
..........o..
.oo.......o..
....oo.......
...........o.
...........o.
.............
"""
# X(6,6) X(6,5) | (4,5) (3,5) | (2,3) X(1,2): dashes of 2 pixels, 1 empty pixel between.
UNCONNECTED = """
.............
....o........
.o...o.oo....
.o...........
.............
..oo.....o...
.....oX..o...
.............
.........o...
.........o...
......Xo.....
.............
.............
"""
# A: X(6,6) (6,5) | (5,3) (5,2) | (3,1) (2,1); B: (5,9) (6,9) | (8,9) (9,9) | (10,7) X(10,6).


def make(**options) -> Pathfinder:
    options.setdefault("eval_examples", 16)
    return build_task(ExperimentConfig(task=TaskConfig(name="pathfinder", options=options)))


def picture(image: np.ndarray) -> str:
    rows = ["".join(".oX"[int(v > 0) + int(v == MARKER_VALUE)] for v in row) for row in image]
    return "\n" + "\n".join(rows) + "\n"


def components(image: np.ndarray, reach: int) -> np.ndarray:
    """Label the lit pixels, joining two when they are at most `reach` apart (Chebyshev):
    a breadth-first flood fill that steps over gaps of up to reach - 1 dark pixels."""
    lit = image > 0
    label = np.zeros(image.shape, dtype=int)
    count = 0
    for start in zip(*np.nonzero(lit), strict=True):
        if label[start]:
            continue
        count += 1
        label[start] = count
        queue = deque([start])
        while queue:
            row, col = queue.popleft()
            for r in range(max(row - reach, 0), min(row + reach + 1, image.shape[0])):
                for c in range(max(col - reach, 0), min(col + reach + 1, image.shape[1])):
                    if lit[r, c] and not label[r, c]:
                        label[r, c] = count
                        queue.append((r, c))
    return label


def joined(image: np.ndarray, markers: list[tuple[int, int]], reach: int) -> bool:
    label = components(image, reach)
    return label[markers[0]] == label[markers[1]]


def test_the_flood_fill_bridges_gaps_up_to_its_reach_only():
    grid = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1]])
    assert joined(grid, [(0, 0), (0, 2)], reach=2)
    assert not joined(grid, [(0, 0), (0, 2)], reach=1)
    assert not joined(grid, [(0, 0), (1, 5)], reach=2)
    assert joined(grid, [(0, 0), (1, 5)], reach=3)


def test_hand_checked_connected_and_unconnected_tiny_images():
    geometry = make(**TINY_DRAWING).geometry
    connected = draw(geometry, np.random.default_rng(0))
    unconnected = draw(geometry, np.random.default_rng(1))
    assert picture(connected.image) == CONNECTED and connected.label == 1
    assert picture(unconnected.image) == UNCONNECTED and unconnected.label == 0
    assert connected.markers == [(6, 6), (1, 2)] and unconnected.markers == [(6, 6), (10, 6)]
    assert joined(connected.image, connected.markers, reach=2)
    assert not joined(unconnected.image, unconnected.markers, reach=2)


@pytest.mark.parametrize(
    "options",
    [
        {"size": 32, "difficulty": "hard"},
        {"size": 32, "difficulty": "easy", "gap": 0},
        {"size": 64, "difficulty": "intermediate"},
        {**TINY, "gap": 2, "seed_distance": 5, "size": 21},
    ],
    ids=["32-hard", "32-easy-solid", "64-intermediate", "tiny-gap2"],
)
def test_the_label_says_whether_a_path_joins_the_markers(options):
    task = make(**options)
    g = task.geometry
    labels = []
    for index in range(12):
        drawing = draw(g, np.random.default_rng(index))
        image = drawing.image
        for marker in drawing.markers:
            assert image[marker] == MARKER_VALUE
        # one component per path: paths are more than gap + 1 apart, dashes gap + 1
        assert components(image, g.gap + 1).max() == len(drawing.paths)
        assert joined(image, drawing.markers, g.gap + 1) == bool(drawing.label)
        if g.gap:
            assert components(image, g.gap).max() > len(drawing.paths)  # the gaps are real
        target = drawing.paths[0]
        assert len(target) >= g.contour_length * (g.dash_length + 1)
        labels.append(drawing.label)
    assert 0 < sum(labels) < len(labels)


def test_rows_are_pixels_answer_and_a_scored_label():
    task = make(size=32, difficulty="easy")
    assert task.seq_len == 32 * 32 + 2 and task.vocab_size == 2 + 2 + 256
    batch = task.batch("train", 0, 6, seed=0)
    assert batch.tokens.shape == (6, 1026)
    tokens, mask = batch.tokens.numpy(), batch.mask.numpy()
    assert (tokens[:, -2] == 1).all() and set(tokens[:, -1].tolist()) <= {2, 3}
    assert (mask[:, -1]).all() and mask.sum() == 6
    pixels = tokens[:, :-2] - 4
    assert set(np.unique(pixels).tolist()) == {0, 191, 255}
    quantised = make(size=32, difficulty="easy", levels=4).batch("train", 0, 6, seed=0)
    assert (quantised.tokens[:, :-2].numpy() == 4 + pixels * 4 // 256).all()


def test_batches_are_a_pure_function_of_seed_split_and_step():
    a, b = make(**TINY), make(**TINY)
    first = a.batch("train", 3, 8, seed=5)
    assert (first.tokens == b.batch("train", 3, 8, seed=5).tokens).all()
    assert not (first.tokens == a.batch("train", 4, 8, seed=5).tokens).all()
    assert not (first.tokens == a.batch("train", 3, 8, seed=6).tokens).all()
    half = b.batch("train", 3, 4, seed=5, rank=1, world_size=2)
    assert (half.tokens == first.tokens[4:]).all()
    assert (a.eval_set("validation").tokens == b.eval_set("validation").tokens).all()


def test_training_rows_never_repeat_evaluation_images():
    task = make(**TINY, eval_examples=64)
    train = {
        row.numpy().tobytes() for s in range(8) for row in task.batch("train", s, 16, seed=0).tokens
    }
    for split in ("validation", "test"):
        assert not train & {row.numpy().tobytes() for row in task.eval_set(split).tokens}


def test_labels_are_balanced():
    task = make(size=32, difficulty="easy")
    labels = np.concatenate(
        [task.batch("train", s, 50, seed=1).tokens[:, -1].numpy() for s in range(4)]
    )
    assert 0.4 < (labels == 3).mean() < 0.6


def test_the_training_pool_is_fixed_and_drawn_lazily():
    a, b = make(**TINY, train_examples=5), make(**TINY, train_examples=5)
    late = b.batch("train", 9, 4, seed=2)  # b fills its pool in another order
    rows = {
        row.numpy().tobytes() for s in range(10) for row in a.batch("train", s, 4, seed=2).tokens
    }
    assert len(rows) <= 5 and {row.numpy().tobytes() for row in late.tokens} <= rows
    assert len(a._pool) <= 5


def test_difficulties_follow_the_lra_contour_lengths():
    for difficulty, length, distractors in [
        ("easy", 6, 10),
        ("intermediate", 9, 6),
        ("hard", 14, 5),
    ]:
        g = make(size=32, difficulty=difficulty).geometry
        assert (g.contour_length, g.distractor_length, g.num_distractors) == (
            length,
            length // 3,
            distractors,
        )
        assert (g.dash_length, g.gap, g.continuity, g.seed_distance) == (2, 1, 1.0, 7)
    g = make(size=64).geometry
    assert (g.dash_length, g.continuity, g.marker_radius, g.seed_distance) == (5, 1.8, 2.5, 12)
    assert g.num_distractors == 22 // 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"difficulty": "medium"}, "difficulty must be one of easy, intermediate, hard"),
        ({"size": 4}, "size must be an integer >= 8"),
        ({"size": 20}, "size must exceed 4 \\* seed_distance"),
        ({"gap": -1}, "gap must be an integer >= 0"),
        ({**TINY, "seed_distance": 2}, "seed_distance must exceed gap \\+ 1 \\+ marker_radius"),
        ({"levels": 300}, "levels must be an integer in 2 .. 256"),
        ({"contour_length": 0}, "contour_length must be a positive integer"),
        ({"continuity": -1.0}, "continuity must be positive"),
        ({"train_examples": -1}, "train_examples must be an integer >= 0"),
        ({"colour": 1}, "unknown option"),
    ],
)
def test_bad_options_raise_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make(**options)
