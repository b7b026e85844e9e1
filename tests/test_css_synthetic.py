"""css-synthetic: determinism, split hygiene, the 2D drawing and the meaning of the modification texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compose_retrieval
from compose_retrieval import DatasetError, OptionError
from compose_retrieval_css_synthetic.render import render_2d
from compose_retrieval_css_synthetic.scenes import CELLS, COLORS, EMPTY, SHAPES, SIZES, decode, encode, scene_key

from conftest import TINY_DATASET

ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
# google/tirg's CSS colours (datasets.py of google/tirg)
REFERENCE_RGB = {
    "gray": (87, 87, 87), "red": (244, 35, 35), "blue": (42, 75, 215), "green": (29, 205, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
WHITE = (255, 255, 255)


def make(seed: int = 0, **options):
    return compose_retrieval.create("dataset", "css-synthetic", seed=seed, **{**TINY_DATASET, **options})


def single_object_scene(cell: int, color: str, shape: str, size: str) -> np.ndarray:
    scene = np.full(CELLS, EMPTY, dtype=np.int64)
    scene[cell] = encode(COLORS.index(color), SHAPES.index(shape), SIZES.index(size))
    return scene


# --- determinism -------------------------------------------------------------------------

def test_same_seed_gives_identical_data(tiny_dataset):
    again = make(seed=0)
    for split in ("train", "test"):
        a, b = tiny_dataset.splits[split], again.splits[split]
        np.testing.assert_array_equal(a.scenes, b.scenes)
        assert a.texts == b.texts and a.sources == b.sources and a.targets == b.targets
        assert torch.equal(tiny_dataset.images(split).images, again.images(split).images)


def test_different_seed_differs(tiny_dataset):
    other = make(seed=1)
    a, b = tiny_dataset.splits["train"], other.splits["train"]
    assert a.scenes.shape == b.scenes.shape
    assert not np.array_equal(a.scenes, b.scenes)
    assert a.texts != b.texts
    assert not torch.equal(tiny_dataset.images("train").images, other.images("train").images)


def test_split_sizes(tiny_dataset):
    train, test = tiny_dataset.splits["train"], tiny_dataset.splits["test"]
    mods = TINY_DATASET["mods_per_scene"]
    assert len(train.texts) == TINY_DATASET["train_scenes"] * mods
    assert len(test.texts) == TINY_DATASET["test_scenes"] * mods
    assert len(train.scenes) == TINY_DATASET["train_scenes"] * (1 + mods)
    assert len(tiny_dataset.train_set()) == len(train.texts)
    assert tiny_dataset.train_texts() == train.texts


def test_no_test_scene_in_train_split(tiny_dataset):
    train_keys = {scene_key(s) for s in tiny_dataset.splits["train"].scenes}
    test_keys = {scene_key(s) for s in tiny_dataset.splits["test"].scenes}
    assert train_keys.isdisjoint(test_keys)
    assert set(tiny_dataset.splits["test"].labels) == test_keys


def test_bad_options_are_dataset_errors():
    with pytest.raises(OptionError, match="train_scenes=0 must be between 1"):
        make(train_scenes=0)
    with pytest.raises(OptionError, match="style='4d' is not one of '2d', '3d'"):
        make(style="4d")
    with pytest.raises(DatasetError, match="data-root"):
        compose_retrieval.create("dataset", "css-synthetic", data_root="/tmp")
    with pytest.raises(DatasetError, match="protocol"):
        make().protocol("3d")


# --- the 2D drawing ----------------------------------------------------------------------

def test_render_shape_and_dtype(tiny_dataset):
    scenes = tiny_dataset.splits["train"].scenes[:5]
    images = render_2d(scenes, 32)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.uint8
    assert render_2d(scenes).shape == (5, 3, 64, 64)
    item = tiny_dataset.train_set()[0]
    assert item["source"].shape == item["target"].shape == (3, 32, 32)
    assert item["source"].dtype == torch.float32 and isinstance(item["text"], str)


def test_render_reference_colours_and_sizes():
    centre = 4  # the middle-center cell
    large = render_2d(single_object_scene(centre, "red", "rectangle", "large")[None], 64)[0]
    assert tuple(large[:, 32, 32]) == REFERENCE_RGB["red"]
    for y, x in [(0, 0), (2, 61), (60, 3), (63, 63), (32, 2), (5, 32)]:
        assert tuple(large[:, y, x]) == WHITE

    # every colour of google/tirg's CSS at the centre of its object
    for color, rgb in REFERENCE_RGB.items():
        image = render_2d(single_object_scene(centre, color, "circle", "large")[None], 64)[0]
        assert tuple(image[:, 32, 32]) == rgb, color

    def covered(scene):
        return int((render_2d(scene[None], 64)[0] != 255).any(0).sum())

    small = single_object_scene(centre, "red", "rectangle", "small")
    # half-size 8 px (large) and 4 px (small): squares of 16 x 16 and 8 x 8 pixels
    assert covered(single_object_scene(centre, "red", "rectangle", "large")) == 16 * 16
    assert covered(small) == 8 * 8
    for shape in SHAPES:
        assert covered(single_object_scene(centre, "blue", shape, "small")) < covered(
            single_object_scene(centre, "blue", shape, "large")
        )


def test_render_places_objects_in_their_cell():
    for cell in range(CELLS):
        image = render_2d(single_object_scene(cell, "green", "rectangle", "small")[None], 64)[0]
        ys, xs = np.nonzero((image != 255).any(0))
        cy, cx = ys.mean(), xs.mean()
        assert round(cy / 64 * 2) == cell // 3 and round(cx / 64 * 2) == cell % 3


def test_empty_scene_is_white():
    assert (render_2d(np.full((1, CELLS), EMPTY), 32) == 255).all()


# --- the modification texts --------------------------------------------------------------

def _cell(position: str) -> int:
    row, col = position.split("-")
    return ROWS.index(row) * 3 + COLS.index(col)


def _resolve(scene: np.ndarray, words: list[str]) -> tuple[int, list[str]]:
    """'COLOR SHAPE [at POS]' at the start of ``words`` -> (cell, remaining words)."""
    color, shape = COLORS.index(words[0]), SHAPES.index(words[1])
    candidates = [c for c in range(CELLS) if scene[c] != EMPTY and decode(scene[c])[:2] == (color, shape)]
    if len(words) > 3 and words[2] == "at":
        cell = _cell(words[3])
        assert cell in candidates and len(candidates) > 1, "a position is given only when it is needed"
        return cell, words[4:]
    assert len(candidates) == 1, f"ambiguous reference {words[:2]}"
    return candidates[0], words[2:]


def apply_text(scene: np.ndarray, text: str) -> np.ndarray:
    """What the text says to do to ``scene``, written independently of the generator."""
    words = text.split()
    target = scene.copy()
    verb = words[0]
    if verb == "add":
        size, color, shape, to, position = words[1:]
        assert to == "to"
        cell = _cell(position)
        assert scene[cell] == EMPTY
        target[cell] = encode(COLORS.index(color), SHAPES.index(shape), SIZES.index(size))
        return target
    cell, rest = _resolve(scene, words[1:])
    color, shape, size = decode(scene[cell])
    if verb == "remove":
        assert rest == []
        target[cell] = EMPTY
    elif verb == "make":
        [value] = rest
        if value in COLORS:
            assert COLORS.index(value) != color
            target[cell] = encode(COLORS.index(value), shape, size)
        else:
            assert SIZES.index(value) != size
            target[cell] = encode(color, shape, SIZES.index(value))
    elif verb == "turn":
        into, a, new_shape = rest
        assert (into, a) == ("into", "a") and SHAPES.index(new_shape) != shape
        target[cell] = encode(color, SHAPES.index(new_shape), size)
    else:
        raise AssertionError(f"unknown verb in {text!r}")
    return target


@pytest.mark.parametrize("split", ["train", "test"])
def test_texts_start_with_a_known_verb(tiny_dataset, split):
    texts = tiny_dataset.splits[split].texts
    assert texts and all(t.split()[0] in {"add", "remove", "make", "turn"} for t in texts)
    assert len({t.split()[0] for t in tiny_dataset.splits["train"].texts}) >= 3  # not one kind only


@pytest.mark.parametrize("split", ["train", "test"])
def test_texts_describe_the_modification(tiny_dataset, split):
    s = tiny_dataset.splits[split]
    for source, text, target in zip(s.sources, s.texts, s.targets):
        before, after = s.scenes[source], s.scenes[target]
        assert int((before != after).sum()) == 1, text
        np.testing.assert_array_equal(apply_text(before, text), after, err_msg=text)


# --- the test protocol -------------------------------------------------------------------

def test_protocol(tiny_dataset):
    p = tiny_dataset.protocol()
    s = tiny_dataset.splits["test"]
    assert p.name == "2d" and tiny_dataset.protocols() == ["2d"]
    assert len(p.gallery) == len(s.scenes) and len(p.query_texts) == len(s.texts)
    assert p.query_texts == s.texts
    assert torch.equal(p.query_exclude, p.query_sources)
    assert p.query_sources.tolist() == s.sources

    gallery_labels, query_labels = p.gallery_labels["label"], p.query_labels["label"]
    for i, target in enumerate(s.targets):
        assert query_labels[i] == gallery_labels[target]
    # duplicates of a scene share a label, different scenes have different labels
    keys = [scene_key(x) for x in s.scenes]
    for i in range(len(keys)):
        for j in range(len(keys)):
            assert (gallery_labels[i] == gallery_labels[j]) == (keys[i] == keys[j])
    # the query image is the source scene's drawing
    assert torch.equal(p.query_images[s.sources[0]], p.gallery[s.sources[0]])
    expected = torch.from_numpy(render_2d(s.scenes[s.sources[0]][None], 32))[0]
    assert torch.equal(p.gallery.images[s.sources[0]], expected)


def test_duplicate_scenes_share_labels():
    """Across a bigger split some targets coincide with other scenes; their labels agree."""
    data = make(seed=3, train_scenes=8, test_scenes=200)
    s = data.splits["test"]
    p = data.protocol()
    keys = [scene_key(x) for x in s.scenes]
    by_key: dict[bytes, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    duplicates = [ids for ids in by_key.values() if len(ids) > 1]
    assert duplicates, "expected at least one duplicated scene in 600 test images"
    labels = p.gallery_labels["label"]
    for ids in duplicates:
        assert len({int(labels[i]) for i in ids}) == 1
    assert len(set(labels.tolist())) == len(by_key)


def test_every_source_has_its_one_edit_siblings_in_the_gallery():
    """Only the text tells apart the mods_per_scene one-edit neighbours of a source (as in CSS)."""
    data = make(seed=5, train_scenes=8, test_scenes=20, mods_per_scene=4)
    s = data.splits["test"]
    by_source: dict[int, list[int]] = {}
    for src, text, tgt in zip(s.sources, s.texts, s.targets):
        by_source.setdefault(src, []).append(tgt)
        assert int((s.scenes[src] != s.scenes[tgt]).sum()) == 1
    assert len(by_source) == 20 and all(len(t) == 4 for t in by_source.values())
    for src, targets in by_source.items():
        assert len({scene_key(s.scenes[t]) for t in targets}) == 4  # four different neighbours
        texts = [s.texts[i] for i, x in enumerate(s.sources) if x == src]
        assert len(set(texts)) == 4
