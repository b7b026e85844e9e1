"""The third-party dataset example in examples/dataset-example, installed through its entry point, trains and evaluates."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import compose_retrieval
from compose_retrieval import DatasetError, registry
from compose_retrieval.evaluation import evaluate
from compose_retrieval.testing import check_dataset
from compose_retrieval.training import train

from conftest import REPO_ROOT, plugin_paths, tiny_config, write_dist_info

EXAMPLE_DATASET_DIR = REPO_ROOT / "examples" / "dataset-example"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
SHAPES = ("square", "circle")


@pytest.fixture
def example_dataset(tmp_path):
    """The example distribution 'installed' through a dist-info in tmp_path (no pip, no network)."""
    site = tmp_path / "site"
    write_dist_info(site, "compose-retrieval-example-dataset", "0.1.0",
                    "[compose_retrieval]\nexample_dataset = compose_retrieval_example_dataset\n")
    with plugin_paths(site, EXAMPLE_DATASET_DIR):
        yield


def make_layout(root: Path) -> Path:
    """Four classes (colour x shape) of two 16x16 PNGs each; a text changes the colour or the shape."""
    rows = {"train": [], "test": []}
    for colour in COLOURS:
        for shape in SHAPES:
            for shot in range(2):
                path = root / "images" / f"{colour}-{shape}" / f"{shot}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image = Image.new("RGB", (16, 16), (255, 255, 255) if shot else (230, 230, 200))
                draw = getattr(ImageDraw.Draw(image), "rectangle" if shape == "square" else "ellipse")
                draw((3 + shot, 3, 12 + shot, 12), fill=COLOURS[colour])
                image.save(path)
                other_colour = next(c for c in COLOURS if c != colour)
                other_shape = next(s for s in SHAPES if s != shape)
                split = "test" if shot == 1 and shape == "circle" else "train"
                source = f"{colour}-{shape}/{shot}.png"
                rows[split] += [(source, f"make it {other_colour}", f"{other_colour}-{shape}"),
                                (source, f"make it a {other_shape}", f"{colour}-{other_shape}")]
    for split, lines in rows.items():
        with (root / f"{split}.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("source", "text", "target"), *lines])
    return root


def test_example_dataset_is_found_through_its_entry_point(example_dataset):
    assert "example-folders" in compose_retrieval.list_datasets()
    [(name, description, plugin)] = registry.describe("dataset", "example-folders")
    assert (name, plugin) == ("example-folders", "example_dataset")
    assert description.startswith("Your images, a folder per class")


def test_example_dataset_keeps_the_contract(example_dataset, tmp_path):
    dataset = compose_retrieval.create("dataset", "example-folders", data_root=str(make_layout(tmp_path)), image_size=16)
    check_dataset(dataset)
    item = dataset.train_set()[0]
    assert item["source"].shape == item["target"].shape == (3, 16, 16) and item["text"] == "make it blue"
    protocol = dataset.protocol()
    assert (protocol.name, len(protocol.gallery), len(protocol.query_texts)) == ("test", 8, 4)
    first = protocol.query_exclude[0].item()  # the red circle's second shot, never ranked for its own query
    hits = (protocol.gallery_labels["label"] == protocol.query_labels["label"][0]).nonzero().flatten().tolist()
    assert [dataset.paths[i].parent.name for i in hits] == ["blue-circle", "blue-circle"]
    assert dataset.paths[first].as_posix().endswith("red-circle/1.png")
    with pytest.raises(DatasetError, match=r"example-folders has no protocol 'tset' \(did you mean 'test'\?\)"):
        dataset.protocol("tset")
    with pytest.raises(DatasetError, match="give --data-root DIR laid out as DATA_ROOT/images/<class>"):
        compose_retrieval.create("dataset", "example-folders")


def test_example_dataset_trains_and_evaluates_skipping_an_unreadable_image(example_dataset, tmp_path):
    root = make_layout(tmp_path / "data")
    (root / "images" / "blue-square" / "0.png").write_bytes(b"\x89PNG broken")
    config = tiny_config(dataset="example-folders", data_root=str(root), dataset_options={"image_size": 32, "skip_unreadable": True},
                         steps=4, log_every=2, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, progress=False)
    assert any("example-folders: skipped 1 unreadable image(s)" in str(w.message) for w in caught)
    assert result.metrics["step"] == 4 and result.metrics["queries"] == 4 and result.metrics["gallery"] == 7
    assert result.metrics["skipped_images"] == 1
    assert 0.0 <= result.metrics["recall@1"] <= result.metrics["recall@5"] <= 1.0
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        dataset = compose_retrieval.create("dataset", "example-folders", data_root=str(root), image_size=32, skip_unreadable=True)
    assert evaluate(result.model, dataset.protocol(), batch_size=4)["recall@1"] == pytest.approx(result.metrics["recall@1"])
