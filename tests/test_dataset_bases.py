"""The dataset bases: protocol names checked in one place, RetrievalProtocol.from_queries, FileDataset's checks and skipping."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from compose_retrieval import DatasetError, Dataset, FileDataset, RetrievalProtocol, TensorImages, label_ids
from compose_retrieval.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def _images(n: int, size: int = 8) -> TensorImages:
    pixels = torch.arange(n * 3 * size * size, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, size, size)
    return TensorImages(pixels, Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, resize="none"))


class TwoProtocols(Dataset):
    name = "two"
    protocol_names = ("val", "test-hard")

    def __init__(self):
        self.built = []

    def build_protocol(self, name):
        self.built.append(name)
        return RetrievalProtocol.from_queries(name, _images(3), ["a", "b", "a"], [(0, "x", "b")])


def test_protocol_picks_the_first_and_refuses_an_unknown_name_in_one_line():
    dataset = TwoProtocols()
    assert dataset.protocols() == ["val", "test-hard"]
    assert dataset.protocol().name == "val" and dataset.protocol("test-hard").name == "test-hard"
    with pytest.raises(DatasetError) as info:
        dataset.protocol("test_hard")
    message = str(info.value)
    assert message == "two has no protocol 'test_hard' (did you mean 'test-hard'?); its protocols: val, test-hard"
    with pytest.raises(DatasetError, match=r"^two has no protocol 'VAL' \(did you mean 'val'\?\)"):
        dataset.protocol("VAL")  # case is not a reason to miss the suggestion
    with pytest.raises(DatasetError) as info:
        dataset.protocol("zzz")
    assert "did you mean" not in str(info.value) and "\n" not in str(info.value)
    assert dataset.built == ["val", "test-hard"]  # build_protocol never met a bad name

    class NoProtocols(Dataset):
        pass

    with pytest.raises(DatasetError, match="declares no test protocol"):
        NoProtocols().protocol()


def test_from_queries_equals_a_protocol_built_by_hand():
    gallery, drawings = _images(5), _images(5, 8)
    labels = ["red", "blue", "red", 7, ("a", 1)]
    queries = [(0, "make it blue", 1), (3, "make it red", 2), (2, "like 4", 4), (2, "a new thing", 3)]
    built = RetrievalProtocol.from_queries("p", gallery, labels, queries, targets="index", query_images=drawings, ks=(1, 2))
    gallery_ids, vocabulary = label_ids(labels)
    sources = torch.tensor([0, 3, 2, 2])
    by_hand = RetrievalProtocol(
        name="p", gallery=gallery, query_images=drawings, query_sources=sources,
        query_texts=["make it blue", "make it red", "like 4", "a new thing"], query_exclude=sources.clone(),
        gallery_labels={"label": gallery_ids}, query_labels={"label": label_ids([labels[t] for _, _, t in queries], vocabulary)[0]},
        ks=(1, 2),
    )
    _assert_same(built, by_hand)
    by_label = RetrievalProtocol.from_queries("p", gallery, labels, [(s, x, labels[t]) for s, x, t in queries],
                                              query_images=drawings, ks=(1, 2))
    _assert_same(by_label, by_hand)
    unseen = RetrievalProtocol.from_queries("p", gallery, labels, [(0, "x", "green")])
    assert unseen.query_labels["label"].item() not in gallery_ids.tolist()  # a label no gallery image has never hits


def test_from_queries_with_views_and_query_images_outside_the_gallery():
    gallery, outside = _images(4), _images(2)
    views = {"label": ["red cube", "blue cube", "red ball", "blue ball"], "colour": ["red", "blue", "red", "blue"]}
    queries = [(0, "blue", {"label": "blue cube", "colour": "blue"}), (1, "red", {"label": "red ball", "colour": "red"})]
    built = RetrievalProtocol.from_queries("v", gallery, views, queries, query_images=outside, query_image_in_gallery=[2, -1])
    assert built.query_exclude.tolist() == [2, -1]  # query image 0 is gallery image 2; query image 1 is not in it
    assert built.gallery_labels["colour"].tolist() == [0, 1, 0, 1] and built.query_labels["colour"].tolist() == [1, 0]
    assert built.query_labels["label"].tolist() == [1, 2]
    with pytest.raises(DatasetError, match="must map every view"):
        RetrievalProtocol.from_queries("v", gallery, views, [(0, "blue", "blue cube")])
    with pytest.raises(DatasetError, match="no main view 'label'"):
        RetrievalProtocol.from_queries("v", gallery, {"colour": views["colour"]}, [(0, "x", {"colour": "red"})])
    with pytest.raises(DatasetError, match="3 labels for 4 gallery images"):
        RetrievalProtocol.from_queries("v", gallery, ["a", "b", "c"], [(0, "x", "a")])
    with pytest.raises(DatasetError, match="query 0's source 9 is not an index"):
        RetrievalProtocol.from_queries("v", gallery, views["colour"], [(9, "x", "red")])
    with pytest.raises(DatasetError, match="has no queries"):
        RetrievalProtocol.from_queries("v", gallery, views["colour"], [])


def _assert_same(a: RetrievalProtocol, b: RetrievalProtocol) -> None:
    assert (a.name, a.gallery, a.query_images, a.query_texts, a.ks) == (b.name, b.gallery, b.query_images, b.query_texts, b.ks)
    for field in ("query_sources", "query_exclude"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and torch.equal(x, y), field
    for field in ("gallery_labels", "query_labels"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), field


class Folder(FileDataset):
    """Every PNG under DATA_ROOT, each its own class."""

    name = "folder"
    layout = "DATA_ROOT/*.png"
    protocol_names = ("all",)

    def read(self):
        self.paths = self.keep_readable(sorted(self.root.glob("*.png")))


def _png(path: Path, value: int) -> None:
    Image.new("RGB", (12, 10), (value, 0, 0)).save(path)


def test_file_dataset_needs_an_existing_data_root(tmp_path):
    with pytest.raises(DatasetError) as info:
        Folder()
    assert str(info.value) == "folder reads files: give --data-root DIR laid out as DATA_ROOT/*.png"
    with pytest.raises(DatasetError, match=r"^folder: data root .*missing does not exist; expected DATA_ROOT/\*\.png$"):
        Folder(str(tmp_path / "missing"))


def test_file_dataset_preprocessing_follows_image_size(tmp_path):
    dataset = Folder(str(tmp_path))
    assert dataset.preprocessing == Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "resize_center_crop")
    assert Folder(str(tmp_path), image_size=16).preprocessing.image_size == 16
    assert dataset.skipped_images == 0 and dataset.paths == []


def test_unreadable_images_are_kept_unless_skipped_and_then_counted_once(tmp_path, monkeypatch):
    import compose_retrieval.datasets

    decoded = []
    read_image = compose_retrieval.datasets.read_image
    monkeypatch.setattr(compose_retrieval.datasets, "read_image", lambda path: decoded.append(path) or read_image(path))
    for i in range(3):
        _png(tmp_path / f"{i}.png", 50 * i)
    (tmp_path / "1.png").write_bytes(b"\x89PNG broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not skipping reads nothing and says nothing
        assert len(Folder(str(tmp_path)).paths) == 3
    assert decoded == []
    with pytest.warns(UserWarning) as caught:
        dataset = Folder(str(tmp_path), skip_unreadable=True)
    [warning] = caught
    assert str(warning.message).startswith("folder: skipped 1 unreadable image(s) and the 1 row(s) that use them (first: ")
    assert [p.name for p in dataset.paths] == ["0.png", "2.png"]
    assert dataset.skipped_images == 1 and dataset.unreadable == {tmp_path / "1.png"}
    # the same file met again (another split, a pair of rows) is one skipped image, decoded once
    rows = [(tmp_path / "0.png", tmp_path / "1.png"), (tmp_path / "2.png", tmp_path / "0.png")]
    with pytest.warns(UserWarning, match="pairs: skipped 1 unreadable image"):
        assert dataset.keep_readable(rows, lambda row: row, what="pairs") == rows[1:]
    assert dataset.skipped_images == 1 and sorted(p.name for p in decoded) == ["0.png", "1.png", "2.png"]
