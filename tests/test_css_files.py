"""The css dataset on the original file layout, written by make-css: round trip, protocols, hit rule, errors."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

import compose_retrieval
from compose_retrieval import DatasetError

from conftest import TINY_CLI_MODEL, TINY_DATASET, assert_workers_give_valid_pairs, invoke
from compose_retrieval_css_synthetic.cssfiles import DATA_FILE, image_path, read_data_file, scene_objects, write_css, write_data_file

TINY = {k: v for k, v in TINY_DATASET.items()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    synthetic = compose_retrieval.create("dataset", "css-synthetic", **TINY)
    root = write_css(synthetic, tmp_path_factory.mktemp("css") / "CSS")
    return synthetic, root


def _load(root, **options):
    return compose_retrieval.create("dataset", "css", data_root=str(root), image_size=TINY["image_size"], **options)


def _triples(objects, pairs):
    return Counter((repr(objects[f]), text, repr(objects[t])) for f, text, t in pairs)


def test_round_trip_gives_back_scenes_texts_and_labels(written):
    synthetic, root = written
    css = _load(root)
    for name, split in synthetic.splits.items():
        loaded = css.splits[name]
        objects = [scene_objects(s) for s in split.scenes]
        assert loaded.objects == objects
        assert _triples(loaded.objects, loaded.pairs) == _triples(objects, zip(split.sources, split.texts, split.targets))
        # duplicates share a label exactly when css-synthetic's scenes are equal
        same = [[a == b for b in split.labels] for a in split.labels]
        assert [[a == b for b in loaded.labels] for a in loaded.labels] == same
    assert sorted(css.train_texts()) == sorted(synthetic.train_texts())


def test_protocols_3d_and_2d_to_3d(written):
    synthetic, root = written
    css = _load(root)
    assert css.protocols() == ["3d", "2d-to-3d"]
    reference = synthetic.protocol()
    three = css.protocol("3d")
    n = len(reference.gallery)
    assert len(three.gallery) == n and len(three.query_texts) == len(reference.query_texts)
    # the PNG renders are the drawings css-synthetic made, pixel for pixel
    assert all(torch.equal(three.gallery[i], reference.gallery[i]) for i in range(0, n, 7))
    # 2d-to-3d queries are drawn from the objects in the file: the same flat drawings
    two = css.protocol("2d-to-3d")
    assert two.query_images is not two.gallery
    assert all(torch.equal(two.query_images[i], reference.gallery[i]) for i in range(0, n, 7))
    assert torch.equal(three.query_exclude, three.query_sources)
    with pytest.raises(DatasetError, match="no protocol '3D'"):
        css.protocol("3D")


def _hand_made(root: Path, labels=True, more_mods=False) -> Path:
    """Four test images; images 2 and 3 are duplicates of one scene. One query: 0 -> 2.

    labels: True (a list), "dict" (image id -> label), False (none). more_mods: a
    second modification with three pairs (1 -> 2, 1 -> 3, 0 -> 1).
    """
    obj = lambda c: {"pos": (0.5, 0.5), "color": c, "shape": "circle", "size": "large"}  # noqa: E731
    record = {
        "objects_img": [[obj("red")], [obj("blue")], [obj("green")], [obj("green")]],
        "mods": [{"from": [0], "to": [2], "to_str": "make red circle green"}],
    }
    if more_mods:
        record["mods"].append({"from": [1, 1, 0], "to": [2, 3, 1], "to_str": "make it blue or green"})
    if labels:
        record["labels"] = [0, 1, 2, 2] if labels is True else {0: 0, 1: 1, 2: 2, 3: 2}
    data = {"train": record, "test": record}
    root.mkdir(parents=True)
    write_data_file(root, data)
    from PIL import Image
    (root / "images").mkdir()
    for split in ("train", "test"):
        for i, colour in enumerate([(220, 30, 30), (30, 60, 220), (30, 190, 40), (30, 190, 40)]):
            Image.new("RGB", (32, 32), colour).save(image_path(root, split, i))
    return root


def test_duplicates_of_a_scene_are_all_hits(tmp_path):
    protocol = _load(_hand_made(tmp_path / "a")).protocol("3d")
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert hits == [2, 3] and protocol.query_exclude.tolist() == [0]
    protocol = _load(_hand_made(tmp_path / "d", labels="dict")).protocol("3d")  # labels as image id -> label
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert hits == [2, 3]
    protocol = _load(_hand_made(tmp_path / "b", labels=False)).protocol("3d")  # no labels: every image its own
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert hits == [2]


def test_two_workers_give_valid_pairs(written):
    train = _load(written[1]).train_set()
    train.length = 300  # a few hundred draws keep the test short
    assert_workers_give_valid_pairs(train)


def test_make_css_then_train_through_the_cli(tmp_path):
    root = tmp_path / "CSS"
    result = invoke("data", "make-css", "--out", root, "--train-scenes", 48, "--test-scenes", 16, "--mods-per-scene", 2, "--image-size", 32)
    assert result.exit_code == 0, result.output
    assert (root / DATA_FILE).is_file() and image_path(root, "test", 0).is_file()
    result = invoke("train", *TINY_CLI_MODEL, "--dataset", "css", "--data-root", root, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "protocol: 3d" in result.output and (tmp_path / "run" / "model.safetensors").exists()
    model, _ = compose_retrieval.load_pretrained(str(tmp_path / "run" / "model.safetensors"))
    assert model.preprocessing.to_dict()["resize"] == "none" and model.preprocessing.image_size == 32  # recorded
    # make-css never writes into a folder that holds something
    result = invoke("data", "make-css", "--out", root)
    assert result.exit_code == 1 and "exists and is not an empty folder" in result.stderr
    result = invoke("data", "make-css", "--out", root / DATA_FILE)  # nor over a file
    assert result.exit_code == 1 and "exists and is not an empty folder" in result.stderr


def _error(root, *fragments, **options):
    with pytest.raises(DatasetError) as info:
        _load(root, **options)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_errors_name_the_file_and_the_layout(tmp_path):
    _error(tmp_path / "nowhere", "nowhere", "does not exist", DATA_FILE, "make-css")
    (tmp_path / "empty").mkdir()
    _error(tmp_path / "empty", "not found", DATA_FILE, "images/css_<split>")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DATA_FILE).write_bytes(b"\x93NUMPY not really")
    _error(garbage, "cannot read", DATA_FILE)
    root = _hand_made(tmp_path / "nosplit")
    write_data_file(root, {"train": read_data_file(root)["train"]})
    _error(root, "has no split 'test'", "it has train")
    root = _hand_made(tmp_path / "emptymods")
    data = read_data_file(root)
    data["train"] = {**data["train"], "mods": [{"from": [], "to": [], "to_str": "make nothing"}]}
    write_data_file(root, data)
    _error(root, "split 'train' has 4 images and 0 modifications with pairs")
    root = _hand_made(tmp_path / "noimage")
    image_path(root, "test", 3).unlink()
    _error(root, "image not found", "css_test_000003.png")
    with pytest.raises(DatasetError, match="give --data-root"):
        compose_retrieval.create("dataset", "css")


def test_a_corrupt_render_is_named_or_skipped(tmp_path):
    root = _hand_made(tmp_path / "data")
    image_path(root, "train", 2).write_bytes(b"\x89PNG broken")
    train = _load(root).train_set()
    with pytest.raises(DatasetError, match=r"cannot decode image .*css_train_000002\.png"):
        train[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DatasetError, match="no pairs left after skipping 1 unreadable image"):
            _load(root, skip_unreadable=True)
    assert any("skipped 1 unreadable image(s) and the 1 row(s)" in str(w.message) for w in caught)


def test_training_draws_a_modification_then_one_of_its_pairs(tmp_path):
    css = _load(_hand_made(tmp_path / "data", more_mods=True))
    train = css.train_set(seed=3)
    assert len(train) == 4 * 64  # 64 of google/tirg's epochs (a draw per image) in one
    draws = [train.triplet(i) for i in range(len(train))]
    assert set(draws) <= set(css.splits["train"].pairs)
    share = sum(text == "make red circle green" for _, text, _ in draws) / len(draws)
    assert 0.4 < share < 0.6  # each modification half the time, though it has 1 of the 4 pairs
    assert len(set(draws)) == 4  # and every pair is drawn
    assert draws[:50] == [css.train_set(seed=3).triplet(i) for i in range(50)]  # the run's seed repeats them
    assert draws[:50] != [css.train_set(seed=4).triplet(i) for i in range(50)]


def test_images_are_fed_as_they_are_unless_a_size_is_asked(tmp_path):
    root = _hand_made(tmp_path / "data")
    css = compose_retrieval.create("dataset", "css", data_root=str(root))
    assert (css.preprocessing.image_size, css.preprocessing.resize) == (32, "none")
    assert css.protocol("3d").gallery[0].shape == (3, 32, 32)
    resized = compose_retrieval.create("dataset", "css", data_root=str(root), image_size=16)
    assert (resized.preprocessing.resize, resized.protocol("3d").gallery[0].shape) == ("resize_center_crop", (3, 16, 16))
    from PIL import Image
    Image.new("RGB", (40, 32)).save(image_path(root, "test", 1))
    with pytest.raises(DatasetError, match=r"css_test_000001\.png is 40x32 but this preprocessing takes 32x32 images"):
        css.protocol("3d").gallery[1]


def test_skipping_an_unreadable_image_keeps_the_other_pairs_right(tmp_path):
    root = _hand_made(tmp_path / "data", more_mods=True)
    for split in ("train", "test"):
        image_path(root, split, 1).write_bytes(b"\x89PNG broken")  # the blue circle
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        css = _load(root, skip_unreadable=True)
    assert any("skipped 1 unreadable image(s) and the 3 row(s)" in str(w.message) for w in caught)
    # images 0, 2, 3 remain as 0, 1, 2; the first modification survives, renumbered
    assert css.splits["test"].pairs == [(0, "make red circle green", 1)]
    protocol = css.protocol("3d")
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert hits == [1, 2] and protocol.query_exclude.tolist() == [0]
    assert torch.equal(protocol.gallery[1], protocol.gallery[2])  # the two green duplicates


def test_a_run_for_2d_to_3d_trains_from_drawings_to_renders(tmp_path):
    root = _hand_made(tmp_path / "data")  # renders are flat colour squares, unlike the drawings
    css = _load(root)
    crossed, rendered = css.train_set(seed=1, protocol="2d-to-3d"), css.train_set(seed=1, protocol="3d")
    drawings = css.drawings(css.splits["train"])
    for i in range(8):
        source, _, target = crossed.triplet(i)
        assert crossed.triplet(i) == rendered.triplet(i)
        assert torch.equal(crossed[i]["source"], drawings[source]) and not torch.equal(crossed[i]["source"], rendered[i]["source"])
        assert torch.equal(crossed[i]["target"], rendered[i]["target"])
    crossed.length = 40
    assert_workers_give_valid_pairs(crossed)
