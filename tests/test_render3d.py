"""The 3D rendering style of css-synthetic: deterministic, perspective, shading, shadows, occlusion; its protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compose_retrieval
from compose_retrieval import DatasetError, OptionError

from compose_retrieval_css_synthetic.render3d import render_3d
from compose_retrieval_css_synthetic.scenes import CELLS, COLORS, EMPTY, SHAPES, encode

from conftest import TINY_DATASET

RED = COLORS.index("red")
BLUE = COLORS.index("blue")


def scene(**cells: int) -> np.ndarray:
    """scene(c4=code) puts an object in cell 4 (the centre); the rest is empty."""
    s = np.full(CELLS, EMPTY, dtype=np.int64)
    for name, code in cells.items():
        s[int(name[1:])] = code
    return s


def covered(image: np.ndarray, colour_index: int) -> np.ndarray:
    """Pixels whose hue is the object's: its colour, however shaded (red and blue are far apart)."""
    r, g, b = image.astype(int)
    return (r > b + 60) & (r > g + 60) if colour_index == RED else (b > r + 60) & (b > g + 40)


def test_deterministic_and_distinct_from_the_2d_drawing():
    scenes = np.stack([scene(c0=encode(RED, 0, 1), c8=encode(BLUE, 1, 0)), scene(c4=encode(BLUE, 2, 1))])
    a, b = render_3d(scenes, 32), render_3d(scenes, 32)
    assert a.shape == (2, 3, 32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    empty = render_3d(scene()[None], 32)[0]
    assert (empty != 255).all()  # a ground, not the white canvas of the 2D drawings


def test_perspective_near_objects_look_bigger():
    cube = encode(RED, SHAPES.index("rectangle"), 1)
    far, near = render_3d(np.stack([scene(c1=cube), scene(c7=cube)]))
    assert covered(near, RED).sum() > 1.3 * covered(far, RED).sum()
    far_rows = np.nonzero(covered(far, RED).any(axis=1))[0]
    near_rows = np.nonzero(covered(near, RED).any(axis=1))[0]
    assert far_rows.mean() < near_rows.mean()  # the top row of the grid is the far one, higher on screen


def test_shading_and_shadows():
    sphere = encode(RED, SHAPES.index("circle"), 1)
    image = render_3d(scene(c4=sphere)[None])[0]
    pixels = image[:, covered(image, RED)].T
    assert len({tuple(p) for p in pixels}) > 20  # lit and shaded, not a flat disc
    empty = render_3d(scene()[None])[0]
    darker = (image.astype(int).sum(0) < empty.astype(int).sum(0) - 60) & ~covered(image, RED)
    assert darker.sum() > 20  # its shadow on the ground


def test_a_near_object_hides_a_far_one():
    far = encode(BLUE, SHAPES.index("rectangle"), 0)
    near = encode(RED, SHAPES.index("rectangle"), 1)
    alone, behind = render_3d(np.stack([scene(c4=far), scene(c4=far, c7=near)]))
    assert covered(behind, BLUE).sum() < covered(alone, BLUE).sum()


def test_css_synthetic_3d_style_has_the_css_protocols():
    dataset = compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET, style="3d")
    assert dataset.protocols() == ["3d", "2d-to-3d"]
    three, two = dataset.protocol("3d"), dataset.protocol("2d-to-3d")
    assert three.query_images is three.gallery
    assert torch.equal(two.gallery[0], three.gallery[0])
    flat = compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET).images("test")
    assert torch.equal(two.query_images[0], flat[0]) and not torch.equal(two.query_images[0], two.gallery[0])
    assert dataset.train_set()[0]["source"].shape == (3, TINY_DATASET["image_size"], TINY_DATASET["image_size"])
    # trained for 2d-to-3d: flat sources, rendered targets, the same pairs
    rendered, crossed = dataset.train_set(), dataset.train_set(protocol="2d-to-3d")
    flat_train = compose_retrieval.create("dataset", "css-synthetic", **TINY_DATASET).images("train")
    source, _, target = crossed.triplet(0)
    assert crossed.triplet(0) == rendered.triplet(0)
    assert torch.equal(crossed[0]["source"], flat_train[source]) and torch.equal(crossed[0]["target"], rendered[0]["target"])
    with pytest.raises(DatasetError, match=r"style 3d\) has no protocol '2d'"):
        dataset.protocol("2d")
    with pytest.raises(OptionError, match="option style='4d' is not one of '2d', '3d'"):
        compose_retrieval.create("dataset", "css-synthetic", style="4d")
